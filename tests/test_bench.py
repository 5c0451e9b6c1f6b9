"""The benchmark as a library and a command, on the tiny model: one row per (size, B, K), figures
that agree with their raw samples, targets judged at the issue's limits, JSON that round-trips.
No timing is asserted."""
from __future__ import annotations

import json
import statistics

import pytest
from click.testing import CliRunner

from zsfinercam.bench import BenchConfig, run_benchmark
from zsfinercam.bench_report import evaluate_targets, format_table, write_json
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


def test_figures_are_medians_of_their_samples_and_ratios_agree(report):
    for row in report["rows"]:
        samples = row["samples"]
        for key in ("floor", "ours", "jacobian", "cached", "cached_text", "cached_text1"):
            assert len(samples[key]) == 2
        assert row["ours_s"] == statistics.median(samples["ours"])
        assert row["floor_s"] == statistics.median(samples["floor"])
        assert row["ours_over_floor"] == pytest.approx(row["ours_s"] / row["floor_s"])
        assert row["cached_text1_over_floor"] == pytest.approx(row["cached_text1_s"] / row["floor_s"])
        assert row["gradcam_extrapolated"] is True and samples["gradcam"] == []
        assert row["gradcam_s"] == pytest.approx(statistics.median(samples["gradcam1"]) * row["k"])
        assert row["speedup_vs_gradcam"] == pytest.approx(row["gradcam_s"] / row["ours_s"])
        assert row["mem_ours_mb"] is None and row["mem_ours_over_floor"] is None


def test_one_floor_per_size_and_batch(report):
    rows = report["rows"]
    for a, b in zip(rows[::2], rows[1::2]):
        assert (a["size"], a["batch"]) == (b["size"], b["batch"]) and a["floor_s"] == b["floor_s"]


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


def test_targets_use_the_issue_limits_at_k16_b1():
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
    assert row["mem_ours_over_floor"] == pytest.approx(row["mem_ours_mb"] / row["mem_floor_mb"])


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
            "--threads", "1", "--quiet", "--json", str(path)]
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].split()[:3] == ["size", "B", "K"]
    rows = json.loads(path.read_text())["rows"]
    assert [(r["k"], r["gradcam_s"], r["mem_floor_mb"]) for r in rows] == [(1, None, None), (3, None, None)]


@pytest.mark.parametrize("value", ["0", "a,b", ","])
def test_command_rejects_bad_lists(value):
    result = CliRunner().invoke(bench, ["--sizes", value])
    assert result.exit_code == 2 and "positive integers" in result.output
