"""Which faithfulness formula predicts a map's correctness: AUROC of variants on the synthetic benchmark.

    python benchmarks/faithfulness_variants.py [--n 150] [--seed 777] [--threads 2]

On the toy model's synthetic set (one-part references, part masks), for each CAM base and method
(Finer-CAM, the base alone) this records every objective value `core.removal` computes, with
deletion at 5, 10 and 20 % as well as insertion, for each map and for the same map with its tokens
shuffled (the control). It then scores formulas from the same values: the AUROC of each for "the
map's peak lies on the differing part" (pointing), and the mean of each over the shuffled maps,
which should be near 0. Terms are against each draw (`faithfulness.against_draws`), or, in the
"mean-draw" rows, against the draws' mean (the first reading of docs/design.md's formula).

Variants: both3 = mean over k in {5, 10, 20} of (d_k + i_k) / 2; ins = insertion alone; del3 =
deletion alone at three levels; ins+d20 = (mean insertion + d_20) / 2 (the default); d20 = deletion
at 20 % alone (the "deletion" mode).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

VARIANTS = {"both3": lambda i, d: np.mean((i + d) / 2), "ins": lambda i, d: i.mean(), "del3": lambda i, d: d.mean(),
            "ins+d20": lambda i, d: (i.mean() + d[2]) / 2, "d20": lambda i, d: d[2]}


def main(argv: list[str] | None = None) -> None:
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # run from a checkout without installing
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=150)
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    rows = record(args.n, args.seed)
    for per_draw in (True, False):
        print(table(rows, per_draw))


def record(n: int, seed: int) -> list[dict]:
    """Per item, base and method: pointing, and the raw `faithfulness.score` inputs of the map and its control."""
    from zsfinercam.core import faithfulness as faith
    from zsfinercam.core import removal
    from zsfinercam.evaluation import evaluate as ev
    from zsfinercam.localizer import Localizer

    captured, score = [], faith.score
    spy = lambda *args, **kwargs: captured.append(args) or score(*args, **kwargs)  # noqa: E731
    loc = Localizer.from_pretrained("toy", device="cpu", cache_dir=None)
    rows = []
    saved = removal.LEVELS["deletion"], faith.score
    removal.LEVELS["deletion"], faith.score = (0.05, 0.10, 0.20), spy
    try:
        for k, item in enumerate(ev.synthetic_items(n, seed, size=loc.config.image_size[0])):
            feats = loc.encode_image(item.image)
            for base in ("gradcam", "hirescam", "layercam"):
                for method in ("finer", "gradcam"):
                    heat, res = ev._heatmap(loc, feats, item, method, base, k)
                    captured.clear()
                    ev.faithfulness_metrics(loc, feats, res, True, seed=k)
                    if len(captured) == 2:  # neither map empty
                        rows.append({"base": base, "method": method, "hit": ev._mask_metrics(heat, item)["pointing"],
                                     "real": captured[0], "shuffled": captured[1]})
    finally:
        removal.LEVELS["deletion"], faith.score = saved
    return rows


def curves(raw, per_draw: bool) -> tuple[np.ndarray, np.ndarray]:
    """(i_k, d_k) at 5, 10, 20 % from `faithfulness.score`'s positional inputs."""
    from zsfinercam.core.faithfulness import against_draws, contrast

    full, del_top, del_random, ins_top, ins_random = raw
    term = against_draws if per_draw else (lambda t, r: contrast(t, float(np.mean(r))))
    ins = [term(t, r) for t, r in zip(ins_top, ins_random)]
    dels = [term(full - t, [full - v for v in r]) for t, r in zip(del_top, del_random)]
    return np.array(ins), np.array(dels)


def table(rows: list[dict], per_draw: bool) -> str:
    from zsfinercam.evaluation.metrics import auroc

    title = "against each draw" if per_draw else "mean-draw (against the draws' mean)"
    head = f"{'base/method':18}{'n':>5}{'hit':>6}" + "".join(f"{v:>9}" for v in VARIANTS)
    lines = [title, head + "   | shuffled:" + "".join(f"{v:>9}" for v in VARIANTS)]
    for base in ("gradcam", "hirescam", "layercam"):
        for method in ("finer", "gradcam"):
            mine = [r for r in rows if (r["base"], r["method"]) == (base, method)]
            hits = [r["hit"] > 0 for r in mine]
            real = [curves(r["real"], per_draw) for r in mine]
            shuffled = [curves(r["shuffled"], per_draw) for r in mine]
            au = "".join(f"{auroc([f(*c) for c in real], hits):9.3f}" for f in VARIANTS.values())
            control = "".join(f"{np.mean([f(*c) for c in shuffled]):+9.3f}" for f in VARIANTS.values())
            lines.append(f"{base + '/' + method:18}{len(mine):5d}{np.mean(hits):6.2f}{au}   |          {control}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
