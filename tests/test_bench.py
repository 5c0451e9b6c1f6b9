"""The benchmark as a library and a command, on the tiny model: one row per (size, B, K), figures
that agree with their raw samples, targets judged at their limits, JSON that round-trips.
No timing is asserted."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from zsfinercam.bench.run import BenchConfig, run_benchmark
from zsfinercam.bench.report import evaluate_targets, format_table, write_json
from zsfinercam.cli.bench import bench

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # the tiny text context truncates long names


def tiny_config(tiny_files, **kwargs) -> BenchConfig:
    cfg, weights = tiny_files
    base = dict(model="tiny", pretrained=str(weights), model_config=str(cfg), device="cpu", memory=False,
                threads=1)  # one thread: no waiting on a busy second core
    return BenchConfig(**{**base, **kwargs})


@pytest.fixture(scope="module")
def report(tiny_files):
    return run_benchmark(tiny_config(tiny_files, sizes=(32, 48), ks=(1, 16), batches=(1, 2), rounds=2))


def test_rows_cover_the_grid_in_order(report):
    keys = [(r["size"], r["batch"], r["k"]) for r in report["rows"]]
    assert keys == [(s, b, k) for s in (32, 48) for b in (1, 2) for k in (1, 16)]
    assert report["meta"]["config"]["rounds"] == 2 and report["meta"]["default_templates"] == 7


def test_figures_come_from_every_timed_round(report):
    for row in report["rows"]:
        samples = row["samples"]
        for key in ("floor", "ours", "jacobian", "cached", "cached_text", "cached_text1"):
            assert len(samples[key]) == 2 and all(t > 0 for t in samples[key])
            assert min(samples[key]) <= row[f"{key}_s"] <= max(samples[key])
        for key in ("ours", "cached", "cached_text", "cached_text1"):
            assert row[f"{key}_over_floor"] > 0
        assert row["gradcam_extrapolated"] is True and samples["gradcam"] == []
        assert min(samples["gradcam1"]) <= row["gradcam_per_concept_s"] <= max(samples["gradcam1"])
        assert row["speedup_vs_gradcam"] > 0
        assert row["mem_ours_mb"] is None and row["mem_ours_over_floor"] is None


def test_a_row_from_hand_set_samples():
    """Medians, the K-fold extrapolation of pytorch-grad-cam and the ratios, on numbers chosen by hand."""
    from zsfinercam.bench.run import _row

    samples = {(32, 1, 0, "floor"): [1.0, 3.0, 2.0], (32, 1, 4, "ours"): [6.0, 4.0, 5.0],
               (32, 1, 0, "gradcam1"): [0.5, 1.5], (32, 1, 0, "jacobian"): [7.0],
               (32, 1, 4, "cached"): [0.5], (32, 1, 4, "cached_text"): [1.0, 2.0]}
    memory = {(32, 1, 0, "floor"): (10.0, 12.0), (32, 1, 4, "ours"): (15.0, None)}
    row = _row(BenchConfig(), 32, 1, 4, samples, memory)
    assert (row["floor_s"], row["ours_s"], row["ours_over_floor"]) == (2.0, 5.0, 2.5)
    assert (row["gradcam_per_concept_s"], row["gradcam_s"], row["speedup_vs_gradcam"]) == (1.0, 4.0, 0.8)
    assert (row["jacobian_s"], row["cached_s"], row["cached_over_floor"]) == (7.0, 0.5, 0.25)
    assert (row["cached_text_s"], row["cached_text_over_floor"]) == (1.5, 0.75)
    assert row["cached_text1_s"] is None and row["cached_text1_over_floor"] is None
    assert (row["mem_floor_mb"], row["mem_floor_cold_mb"], row["mem_ours_mb"], row["mem_ours_over_floor"]) == \
        (10.0, 12.0, 15.0, 1.5)
    assert row["mem_gradcam_mb"] is None and row["gradcam_extrapolated"] is True
    full = _row(BenchConfig(gradcam_full=True), 32, 1, 4, {**samples, (32, 1, 4, "gradcam"): [3.0, 1.0, 2.0]}, {})
    assert (full["gradcam_s"], full["gradcam_per_concept_s"], full["gradcam_extrapolated"]) == (2.0, None, False)


def test_one_floor_per_size_and_batch(report):
    rows = report["rows"]
    for a, b in zip(rows[::2], rows[1::2]):
        assert (a["size"], a["batch"]) == (b["size"], b["batch"]) and a["floor_s"] == b["floor_s"]
        assert b["gradcam_s"] > a["gradcam_s"]  # extrapolated to 16 concepts from the same calls as 1


def test_json_round_trips(report, tmp_path):
    path = tmp_path / "bench.json"
    write_json(report, path)
    loaded = json.loads(path.read_text())
    assert loaded == json.loads(json.dumps(report))
    assert format_table(loaded) == format_table(report)


def test_table_has_a_line_per_row_and_per_target(report):
    lines = format_table(report).splitlines()
    assert lines[0].split()[:6] == ["size", "B", "K", "floor", "s", "ours"]
    body = lines[1:9]
    assert [tuple(int(v) for v in line.split()[:3]) for line in body] == \
        [(r["size"], r["batch"], r["k"]) for r in report["rows"]]
    assert all(line.split()[6].endswith("*") for line in body)  # gradcam column, extrapolated
    verdicts = [line for line in lines if line.startswith("[")]
    assert len(verdicts) == len(report["targets"]) == 2 * 6


def _row(size, k, **figures):
    base = {"size": size, "batch": 1, "k": k, "gradcam_extrapolated": True}
    return {**base, **figures}


def test_targets_use_their_limits_at_k16_b1():
    rows = [_row(224, 16, ours_over_floor=1.0, speedup_vs_gradcam=39.9, mem_ours_over_floor=None,
                 cached_over_floor=0.05, cached_text_over_floor=0.3, cached_text1_over_floor=0.1),
            _row(224, 1, ours_over_floor=5.0), _row(448, 1, ours_over_floor=0.1)]
    got = {(t["size"], t["target"]): t["met"] for t in evaluate_targets(rows, default_templates=7)}
    assert got[(224, "ours_over_floor")] is True
    assert got[(224, "speedup_vs_gradcam")] is False
    assert got[(224, "mem_ours_over_floor")] is None
    assert got[(224, "cached_over_floor")] is True
    assert got[(224, "cached_text_over_floor")] is None  # reported, no limit
    assert {v for (size, _), v in got.items() if size == 448} == {None}  # no K=16 row at 448
    texts = [t["text"] for t in evaluate_targets(rows, 7)]
    assert texts[0] == "16 concepts, one image: ours at 224: 1.000x a plain forward (target <= 1.0x)"
    assert texts[4] == ("16 new prompts on a cached image with their text (7 templates) at 224: "
                        "0.300x a plain forward (reported, no limit)")
    assert "(pytorch-grad-cam extrapolated)" in texts[1]


def test_full_gradcam_is_measured_not_extrapolated(tiny_files):
    out = run_benchmark(tiny_config(tiny_files, sizes=(32,), ks=(1, 2), batches=(1,), rounds=1, gradcam_full=True))
    for row in out["rows"]:
        assert row["gradcam_extrapolated"] is False and row["gradcam_per_concept_s"] is None
        assert row["gradcam_s"] == out["rows"][row["k"] - 1]["samples"]["gradcam"][0]


def test_memory_is_measured_in_child_processes(tiny_files):
    out = run_benchmark(tiny_config(tiny_files, sizes=(32,), ks=(2,), batches=(1,), rounds=1, memory=True,
                                    gradcam=True))
    row = out["rows"][0]
    for key in ("mem_floor_mb", "mem_ours_mb", "mem_gradcam_mb"):
        assert row[key] is not None and row[key] > 0
    assert row["mem_ours_over_floor"] > 0


def test_thread_count_is_restored(tiny_files):
    import torch

    before = torch.get_num_threads()
    out = run_benchmark(tiny_config(tiny_files, sizes=(32,), ks=(1,), batches=(1,), rounds=1, gradcam=False,
                                    threads=before + 1))
    assert out["meta"]["threads"] == before + 1 and torch.get_num_threads() == before


def test_bad_config_names_the_problem():
    with pytest.raises(ValueError, match="ks"):
        BenchConfig(ks=())
    with pytest.raises(ValueError, match="threads"):
        BenchConfig(threads=0)
    with pytest.raises(ValueError, match="device"):
        BenchConfig(device="tpu")


def test_command_prints_the_table_and_writes_json(tiny_files, tmp_path):
    cfg, weights = tiny_files
    path = tmp_path / "out.json"
    args = ["--model", "tiny", "--pretrained", str(weights), "--model-config", str(cfg), "--sizes", "32",
            "--ks", "1,3", "--batches", "1", "--rounds", "1", "--device", "cpu", "--no-memory", "--no-gradcam",
            "--threads", "1", "--quiet", "--report", str(path)]
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].split()[:3] == ["size", "B", "K"]
    rows = json.loads(path.read_text())["rows"]
    assert [(r["k"], r["gradcam_s"], r["mem_floor_mb"]) for r in rows] == [(1, None, None), (3, None, None)]


@pytest.mark.parametrize("value", ["0", "a,b", ","])
def test_command_rejects_bad_lists(value):
    result = CliRunner().invoke(bench, ["--sizes", value])
    assert result.exit_code == 2 and "positive integers" in result.output


def test_command_runs_on_the_hf_backend(tmp_path):
    """Not only open_clip's own ViTs: a transformers SigLIP (attention-pooled, no CLS), floor and
    pytorch-grad-cam included."""
    from tiny_models import save_tiny_hf

    folder = save_tiny_hf(tmp_path / "siglip", "siglip")
    path = tmp_path / "out.json"
    args = ["--model", str(folder), "--backend", "hf", "--sizes", "32", "--ks", "1", "--batches", "1",
            "--rounds", "1", "--device", "cpu", "--no-memory", "--threads", "1", "--quiet", "--report", str(path)]
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(path.read_text())["rows"]
    assert row["floor_s"] > 0 and row["ours_s"] > 0 and row["gradcam_s"] > 0
