"""`neighbors` and `prompts`: text-embedding neighbours on a model with known geometry, and the CLI."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from zsfinercam.errors import UsageError


def test_neighbors_rank_by_cosine_similarity(tiny):
    vocab = ["cat", "dog", "bird", "red fox", "grey wolf"]
    got = tiny.neighbors("cat", vocab, k=3)
    text = tiny.encode_text(vocab)
    sims = (text[1:] @ text[0]).tolist()
    want = sorted(zip(vocab[1:], sims), key=lambda p: -p[1])[:3]
    assert [n for n, _ in got] == [n for n, _ in want]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-6)
    assert "cat" not in [n for n, _ in tiny.neighbors("cat", vocab, k=10)]


@pytest.mark.parametrize("kwargs, message", [({"k": 0}, "positive integer"), ({"vocab": ["cat"]}, "no entry")])
def test_neighbors_bad_input(tiny, kwargs, message):
    with pytest.raises(UsageError, match=message):
        tiny.neighbors("cat", **{"vocab": ["cat", "dog"], **kwargs})


def run(*args):
    return subprocess.run([sys.executable, "-m", "zsfinercam", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)


def test_neighbors_and_prompts_through_the_cli(tiny_files):
    cfg, weights = tiny_files
    proc = run("neighbors", "Red tailed Hawk", "--vocab", "cub200", "-k", 4, "--model", "t", "--model-config", cfg,
               "--pretrained", weights, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    lines = [ln.split("\t") for ln in proc.stdout.splitlines()]
    assert len(lines) == 4 and all(len(cols) == 2 for cols in lines)
    scores = [float(s) for s, _ in lines]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    listing = run("prompts")
    assert listing.returncode == 0
    names = {ln.split()[0]: ln.split()[2] for ln in listing.stdout.splitlines()}
    assert names["cub200"] == "200" and names["imagenet1k"] == "1000" and "openai_imagenet" in names
