"""The default model (flag > environment > config file > toy) and the toy's notice about its vocabulary."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_CFG
from zsfinercam.cli import main
from zsfinercam.cli.defaults import ModelChoice, choose_model, config_path
from zsfinercam.errors import UsageError

BIRD = Path(__file__).resolve().parents[1] / "examples" / "bird.png"
HAWK = "red-tailed hawk"


def write_config(text: str) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def in_file():
    return write_config('model = "ViT-B-32"\npretrained = "laion2b_s34b_b79k"\n')


def test_the_config_file_honours_xdg_config_home(tmp_path):
    assert config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "zsfinercam" / "config.toml"
    assert config_path({}) == Path.home() / ".config" / "zsfinercam" / "config.toml"


def test_nothing_set_gives_the_toy():
    assert choose_model(None, None, None) == ModelChoice("toy", None, "open_clip", "default")


def test_the_file_comes_before_the_toy(in_file):
    assert choose_model(None, None, None) == ModelChoice("ViT-B-32", "laion2b_s34b_b79k", "open_clip", str(in_file))


def test_the_environment_comes_before_the_file(in_file, monkeypatch):
    monkeypatch.setenv("ZSFINERCAM_MODEL", "ViT-B-16")
    monkeypatch.setenv("ZSFINERCAM_PRETRAINED", "openai")
    assert choose_model(None, None, None) == ModelChoice("ViT-B-16", "openai", "open_clip", "$ZSFINERCAM_MODEL")
    monkeypatch.delenv("ZSFINERCAM_PRETRAINED")  # the weights come with the model, never from the file
    assert choose_model(None, None, None).pretrained is None


def test_the_flag_comes_before_the_environment_and_brings_its_own_weights(in_file, monkeypatch):
    monkeypatch.setenv("ZSFINERCAM_MODEL", "ViT-B-16")
    monkeypatch.setenv("ZSFINERCAM_PRETRAINED", "openai")
    monkeypatch.setenv("ZSFINERCAM_BACKEND", "hf")
    assert choose_model("toy", None, None) == ModelChoice("toy", None, "open_clip", "--model")


def test_pretrained_and_backend_flags_apply_to_the_default_model(monkeypatch):
    write_config('model = "openai/clip-vit-base-patch16"\nbackend = "hf"\n')
    assert choose_model(None, None, None).backend == "hf"
    assert choose_model(None, None, "open_clip").backend == "open_clip"
    monkeypatch.setenv("ZSFINERCAM_MODEL", "ViT-B-16")
    assert choose_model(None, "/w.safetensors", None) == ModelChoice("ViT-B-16", "/w.safetensors", "open_clip",
                                                                    "$ZSFINERCAM_MODEL")


@pytest.mark.parametrize("text, message", [
    ("model = ViT-B-16\n", "is not valid TOML"),
    ('model = "ViT-B-16"\nweights = "openai"\n', "unknown key(s) weights; it may set model, pretrained, backend"),
    ("model = 16\n", "model must be a non-empty string"),
    ('pretrained = "openai"\n', "sets pretrained but no model"),
])
def test_a_malformed_file_is_one_line_naming_the_file_and_the_fix(text, message, capsys):
    path = write_config(text)
    with pytest.raises(UsageError, match="^" + str(path)) as err:
        choose_model(None, None, None)
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SystemExit) as done:
        main(["locate", str(BIRD), "bird"])
    assert done.value.code == 2
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and str(path) in line and ('e.g. model = "ViT-B-16"' in line)


def test_weights_without_a_model_in_the_environment_are_refused(monkeypatch):
    monkeypatch.setenv("ZSFINERCAM_PRETRAINED", "openai")
    with pytest.raises(UsageError, match="sets pretrained but no model"):
        choose_model(None, None, None)


def test_an_unknown_backend_in_the_environment_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setenv("ZSFINERCAM_MODEL", "ViT-B-16")
    monkeypatch.setenv("ZSFINERCAM_BACKEND", "jax")
    with pytest.raises(SystemExit) as done:
        main(["locate", str(BIRD), "bird"])
    assert done.value.code == 2
    assert "unknown backend 'jax' in $ZSFINERCAM_MODEL; choose one of: hf, open_clip" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """The tiny CLIP as a local-dir folder, a model the environment and the file can name on their own."""
    from conftest import save_tiny

    folder = tmp_path_factory.mktemp("tinydir")
    _, weights = save_tiny(folder / "src")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    (folder / "open_clip_model.safetensors").write_bytes(weights.read_bytes())
    return folder


def run_locate(tmp_path, *flags, concept=HAWK):
    """`zsfinercam locate bird.png CONCEPT` in a subprocess: (exit status, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-m", "zsfinercam", "locate", str(BIRD), concept, "--device", "cpu",
                           "--out", str(tmp_path / "out"), "--json", *flags], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)
    return done.returncode, done.stdout, done.stderr


def test_locate_uses_the_model_the_environment_names(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ZSFINERCAM_MODEL", f"local-dir:{tiny_dir}")
    code, out, err = run_locate(tmp_path, "--vs", "barn owl")
    assert code == 0, err
    assert f"loading local-dir:{tiny_dir} (weights of the repo or folder, named by $ZSFINERCAM_MODEL)" in err
    assert json.loads(out)["concept"] == HAWK and "knows only synthetic birds" not in err


def test_locate_uses_the_model_the_file_names(tiny_dir, tmp_path):
    path = write_config(f'model = "local-dir:{tiny_dir}"\n')
    code, _, err = run_locate(tmp_path, "--vs", "barn owl")
    assert code == 0, err
    assert f"named by {path})" in err


def test_the_model_flag_overrides_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ZSFINERCAM_MODEL", "no-such-model")
    code, _, err = run_locate(tmp_path, "--model", "toy", "--quiet")
    assert code == 0, err
    assert "no-such-model" not in err


def test_the_toy_says_once_on_stderr_that_it_knows_only_synthetic_birds(tmp_path):
    code, out, err = run_locate(tmp_path, "--vs", "red-shouldered hawk", "--vs", "striped wings", "--quiet")
    assert code == 0, err
    (line,) = err.splitlines()
    assert line.startswith("zsfinercam: warning: the toy model knows only synthetic birds")
    assert "'hawk' in 'red-tailed hawk'" in line and "'shouldered', 'hawk' in 'red-shouldered hawk'" in line
    assert "striped wings" not in line and "--model ViT-B-16 --pretrained openai" in line
    assert json.loads(out)["references"] == ["red-shouldered hawk", "striped wings"]


@pytest.mark.parametrize("verb", [["compare"], ["batch", "--concepts"]])
def test_the_toy_notice_on_the_other_verbs_that_map(verb, tmp_path):
    args = [*verb[:1], str(BIRD), *verb[1:], HAWK, "--out", str(tmp_path / "out"), "--device", "cpu"]
    done = subprocess.run([sys.executable, "-m", "zsfinercam", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("knows only synthetic birds") == 1


def test_the_toy_notice_in_an_interactive_session_comes_once_per_concept(tmp_path):
    done = subprocess.run([sys.executable, "-m", "zsfinercam", "locate", str(BIRD), "-i", "-q", "--out",
                           str(tmp_path)], input=f"{HAWK}\nstriped wings\n{HAWK}\n", capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 3 and done.stderr.count("knows only synthetic birds") == 1


def test_the_toy_reads_its_own_words_without_a_notice(tmp_path):
    code, _, err = run_locate(tmp_path, "--quiet", "--vs", "red-headed blue-tailed plain-winged bird",
                              concept="a bird with striped wings")
    assert code == 0 and err == ""
    from zsfinercam.concepts.text import unknown_words

    assert unknown_words(None, [HAWK]) == {}  # an open vocabulary knows every word
    assert unknown_words(["red", "tail"], ["Red TAIL", "red hawk"]) == {"red hawk": ["hawk"]}


def test_the_toys_words_are_its_training_captions():
    from zsfinercam.backends.open_clip_weights import TOY_DIR
    from zsfinercam.synthetic.captions import caption_words

    words = json.loads((TOY_DIR / "config.json").read_text())["zsfinercam"]["words"]
    assert words == caption_words() and {"bird", "striped", "tailed", "wings", "with"} <= set(words)
