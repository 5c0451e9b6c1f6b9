"""Linear-probe mode: a trained nn.Linear over DINOv2-style (timm) and open_clip towers, against
pytorch-grad-cam's FinerCAM on the same model and classifier."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import zsfinercam as zf
from zsfinercam.core import engine
from conftest import random_image, save_tiny
from tiny_timm import PROBE_CLASSES, TINY_DINO, load_tiny_probe, save_tiny_probe, tiny_dino
from zsfinercam.backends.probe import load_timm_weights
from zsfinercam.concepts.contrast import nearest_by_logit
from zsfinercam.testing.reference import finer_cam
from zsfinercam.io.render import minmax


@pytest.fixture(scope="module")
def probe_files(tmp_path_factory):
    return save_tiny_probe(tmp_path_factory.mktemp("probe"))


@pytest.fixture(scope="module")
def probe(probe_files):
    return load_tiny_probe(probe_files)


class MeanPatchProbe(torch.nn.Module):
    """The official Finer-CAM classifier: Linear(mean of the final-normed patch tokens)."""

    def __init__(self, vit, linear):
        super().__init__()
        self.vit, self.linear = vit, linear

    def forward(self, x):
        tokens = self.vit.forward_features(x)
        return self.linear(tokens[:, self.vit.num_prefix_tokens:].mean(dim=1))


class PooledProbe(torch.nn.Module):
    """Linear(open_clip encode_image(x))."""

    def __init__(self, clip, linear):
        super().__init__()
        self.clip, self.linear = clip, linear

    def forward(self, x):
        return self.linear(self.clip.encode_image(x))


def grad_cam(model, layer, loc, images, pairs, alpha=1.0):
    pixels = loc.pixels(images)
    maps = finer_cam(model, layer, pixels, pairs, grid=loc.config.grid_size, prefix=loc.config.num_prefix_tokens,
                     alpha=alpha)
    return maps, model(pixels).detach()


def linear(path, dim, classes):
    head = torch.nn.Linear(dim, classes)
    head.load_state_dict(torch.load(path, weights_only=True))
    return head


def check_against_grad_cam(loc, model, layer, classes, concepts, **kwargs):
    images = [random_image(1), random_image(2, 33, 29)]
    ours = loc.locate_many(images, concepts, base="gradcam", **kwargs)
    worst = 0.0
    for m, name in enumerate(concepts):
        t = classes.index(name)
        pairs = [(t, [classes.index(r) for r in ours[b][m].references]) for b in range(2)]
        ref, logits = grad_cam(model, layer, loc, images, pairs)
        for b in range(2):
            got = minmax(ours[b][m].token_map)
            assert np.ptp(ref[b]) > 0.5  # a real map, not a flat one
            np.testing.assert_allclose(got, ref[b], atol=1e-4)
            np.testing.assert_allclose(ours[b][m].scores[name], logits[b, t], atol=1e-4)
            worst = max(worst, float(np.abs(got - ref[b]).max()))
    return worst


def test_dinov2_probe_equals_pytorch_grad_cam(probe, probe_files):
    vit = tiny_dino()
    load_timm_weights(vit, str(probe_files["weights"]), "reference")
    model = MeanPatchProbe(vit.eval(), linear(probe_files["classifier"], 32, len(PROBE_CLASSES)))
    assert probe.config.num_prefix_tokens == 5 and probe.config.grid_size == (4, 4)
    worst = check_against_grad_cam(probe, model, vit.blocks[-1].norm1, PROBE_CLASSES, PROBE_CLASSES[:3])
    print(f"dinov2 probe: max |ours - grad-cam| = {worst:.2e}")


def test_probe_over_open_clip_tower_equals_pytorch_grad_cam(tmp_path):
    cfg, weights = save_tiny(tmp_path, seed=2)
    torch.manual_seed(5)
    head = torch.nn.Linear(16, 4)
    classes = ["a", "b", "c", "d"]
    save_file({f"module.linear.{k}": v for k, v in head.state_dict().items()}, str(tmp_path / "clf.safetensors"))
    (tmp_path / "classes.json").write_text(json.dumps(classes))
    loc = zf.Localizer.from_classifier("tiny", tmp_path / "clf.safetensors", tmp_path / "classes.json",
                                       pretrained=str(weights), model_config=str(cfg), device="cpu")
    clip = loc.backend.tower.model
    worst = check_against_grad_cam(loc, PooledProbe(clip, head), clip.visual.transformer.resblocks[-1].ln_1,
                                   classes, ["a", "c"])
    print(f"open_clip probe: max |ours - grad-cam| = {worst:.2e}")


def test_references_are_the_nearest_classes_by_logit(probe):
    image = random_image(3)
    z = probe.scores(image, PROBE_CLASSES)[0]
    res = probe.locate(image, "robin")
    t = PROBE_CLASSES.index("robin")
    want = nearest_by_logit(torch.tensor([z[c] for c in PROBE_CLASSES]), t, range(len(PROBE_CLASSES)), 3)
    assert list(res.references) == [PROBE_CLASSES[i] for i in want]
    explicit = probe.locate(image, "robin", vs=["wren"])
    assert explicit.references == ("wren",)
    assert not np.allclose(minmax(explicit.token_map), minmax(res.token_map))


def test_jacobian_path_equals_direct_path(probe):
    image = random_image(4)
    feats = probe.encode_image(image)
    direct = probe.locate_many(image, PROBE_CLASSES[:3], base="gradcam")  # the base whose Jacobian this is
    assert probe.locate_many(feats, PROBE_CLASSES[:3], base="gradcam")
    assert feats.jacobian is None  # costly here: not built unasked
    engine.jacobian(probe.backend, feats)  # built on request, then used by every later call
    cached = probe.locate_many(feats, PROBE_CLASSES[:3], base="gradcam")
    assert feats.jacobian is not None and feats.jacobian.shape[1] == 33  # E + the bias's constant 1
    for d, c in zip(direct, cached):
        np.testing.assert_allclose(minmax(c.token_map), minmax(d.token_map), atol=1e-4)


def test_text_only_features_are_refused(probe):
    image = random_image(5)
    with pytest.raises(zf.UsageError, match="linear-probe model over 6 fixed classes"):
        probe.neighbors("robin")
    with pytest.raises(zf.UsageError, match="linear-probe model"):
        probe.locate(image, "robin", templates=["a photo of a {}."])
    with pytest.raises(zf.UsageError, match="'robn' is not a class of this classifier; did you mean 'robin'"):
        probe.locate(image, "robn")


def _write(folder, name, state):
    path = folder / name
    if name.endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


W, B = torch.randn(6, 32), torch.randn(6)


@pytest.mark.parametrize("name, state, classes, message", [
    ("count.pth", {"weight": W, "bias": B}, PROBE_CLASSES[:5],
     r"classifier has 6 classes \(weight rows\) but .* names 5"),
    ("nokey.pth", {"bias": B}, PROBE_CLASSES, r"has no 2-D weight tensor .*expected a torch.nn.Linear state dict"),
    ("dim.pth", {"weight": torch.randn(6, 31), "bias": B}, PROBE_CLASSES,
     r"takes features of size 31 but timm:vit_base_patch14_reg4_dinov2 gives 32"),
    ("bias.safetensors", {"weight": W, "bias": torch.randn(5)}, PROBE_CLASSES,
     r"bias has shape \(5,\), expected \(6,\)"),
    ("two.pth", {"a.weight": W, "b.weight": W}, PROBE_CLASSES, r"several linear layers \(a.weight, b.weight\)"),
    ("dup.pth", {"weight": W}, PROBE_CLASSES[:5] + ["sparrow"], r"names 'sparrow' twice \(lines 1 and 6\)"),
    ("blank.pth", {"weight": W}, ["a", "", "b", "c", "d", "e"], r"blank entry at line 2"),
])
def test_bad_files_give_one_clear_error(probe_files, tmp_path, name, state, classes, message):
    clf = _write(tmp_path, name, state)
    names = tmp_path / "names.txt"
    names.write_text("\n".join(classes) + "\n\n", encoding="utf-8")
    with pytest.raises(zf.UsageError, match=message) as err:
        zf.Localizer.from_classifier(f"timm:{TINY_DINO}", clf, names, pretrained=str(probe_files["weights"]),
                                     model_config=str(probe_files["config"]), device="cpu")
    assert "\n" not in str(err.value)


def test_nested_and_prefixed_checkpoints_load(probe_files, tmp_path):
    state = torch.load(probe_files["classifier"], weights_only=True)
    wrapped = _write(tmp_path, "wrapped.pth", {"state_dict": {f"module.{k}": v for k, v in state.items()}})
    loc = zf.Localizer.from_classifier(f"timm:{TINY_DINO}", wrapped, probe_files["classes"],
                                       pretrained=str(probe_files["weights"]),
                                       model_config=str(probe_files["config"]), device="cpu")
    torch.testing.assert_close(loc.backend.table[:, :-1], state["weight"])
    torch.testing.assert_close(loc.backend.table[:, -1], state["bias"])


def test_timm_hub_weights_fail_offline_with_one_line(probe_files):
    with pytest.raises(zf.WeightsUnavailableError) as err:
        zf.Localizer.from_classifier(f"timm:{TINY_DINO}", probe_files["classifier"], probe_files["classes"],
                                     model_config=str(probe_files["config"]), device="cpu")
    message = str(err.value)
    assert "\n" not in message and "timm/vit_base_patch14_reg4_dinov2" in message and "pretrained=" in message


def test_unknown_backbones_are_clear(probe_files):
    with pytest.raises(zf.UsageError, match="unknown timm model 'vit_base_patch14_dinov3'; did you mean"):
        zf.Localizer.from_classifier("timm:vit_base_patch14_dinov3", probe_files["classifier"],
                                     probe_files["classes"], device="cpu")
    with pytest.raises(zf.UsageError, match="unknown model 'ViT-Q-99'"):
        zf.Localizer.from_classifier("ViT-Q-99", probe_files["classifier"], probe_files["classes"], device="cpu")
    with pytest.raises(zf.UsageError, match="Localizer.from_classifier"):
        zf.backends.probe.ProbeBackend.from_pretrained("x", pretrained=None, model_config=None, device=None,
                                                       image_size=None)


def test_original_dinov2_checkpoint_layout_loads(probe, probe_files, tmp_path):
    """facebookresearch/dinov2 .pth keys (register_tokens, mask_token, CLS position in pos_embed)."""
    from safetensors.torch import load_file

    state = load_file(str(probe_files["weights"]))
    pos0 = torch.randn(1, 1, state["pos_embed"].shape[-1])
    original = {k: v for k, v in state.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    original.update(register_tokens=state["reg_token"], cls_token=state["cls_token"] - pos0,
                    pos_embed=torch.cat([pos0, state["pos_embed"]], dim=1), mask_token=torch.zeros(1, 32))
    torch.save(original, tmp_path / "dinov2_vits_pretrain.pth")
    loc = zf.Localizer.from_classifier(f"timm:{TINY_DINO}", probe_files["classifier"], probe_files["classes"],
                                       pretrained=str(tmp_path / "dinov2_vits_pretrain.pth"),
                                       model_config=str(probe_files["config"]), device="cpu")
    image = random_image(6)
    torch.testing.assert_close(loc.encode_image(image).embedding, probe.encode_image(image).embedding)


def test_batch_runs_a_probe_and_resumes_only_with_the_same_classifier(probe, probe_files, tmp_path):
    from PIL import Image

    from zsfinercam.batch.run import run_batch

    for i in range(2):
        Image.fromarray(random_image(20 + i)).save(tmp_path / f"{i}.png")
    images, out = [tmp_path / "0.png", tmp_path / "1.png"], tmp_path / "out"
    first = run_batch(probe, images[:1], out, ["robin", "wren"], progress=False)
    assert (first.ok, first.failed) == (1, 0)
    again = run_batch(load_tiny_probe(probe_files), images, out, ["robin", "wren"], resume=True, progress=False)
    assert (again.ok, again.skipped) == (1, 1)
    state = torch.load(probe_files["classifier"], weights_only=True)
    other = _write(tmp_path, "other.pth", {"weight": state["weight"] + 0.01, "bias": state["bias"]})
    retrained = zf.Localizer.from_classifier(f"timm:{TINY_DINO}", other, probe_files["classes"],
                                             pretrained=str(probe_files["weights"]),
                                             model_config=str(probe_files["config"]), device="cpu")
    with pytest.raises(zf.UsageError, match="other model"):
        run_batch(retrained, images, out, ["robin", "wren"], resume=True, progress=False)


def test_an_open_clip_tower_without_weights_is_refused(probe_files, tmp_path):
    cfg, weights = save_tiny(tmp_path, seed=2)
    save_file({"weight": torch.randn(6, 16)}, str(tmp_path / "clf.safetensors"))
    for name, kwargs in [("ViT-B-16", {}), ("tiny", {"model_config": str(cfg)})]:
        with pytest.raises(zf.UsageError, match=r"random.*pass pretrained=") as err:
            zf.Localizer.from_classifier(name, tmp_path / "clf.safetensors", probe_files["classes"], device="cpu",
                                         **kwargs)
        assert "\n" not in str(err.value)
    loc = zf.Localizer.from_classifier("tiny", tmp_path / "clf.safetensors", probe_files["classes"],
                                       pretrained=str(weights), model_config=str(cfg), device="cpu")
    assert loc.config.pretrained == str(weights)
