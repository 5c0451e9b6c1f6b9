"""`zsfinercam batch --engine ray`: the same outputs as the local engine, on a Ray cluster that
only ever sees loopback.

The Ray cases are the `case_*` functions. `test_ray_cases_on_loopback_only` runs them in a
second pytest inside a fresh network namespace holding nothing but `lo` (`unshare --net`),
with one cluster for the whole module (module fixture `cluster`), so Ray can neither listen
on nor reach any other address.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import random_image
from test_batch import CONCEPTS, model_args, python, records
from test_inputs import cli
from zsfinercam.batch.run import MANIFEST_NAME, SETTINGS_NAME
from zsfinercam.io.files import TMP_PREFIX

HERE = Path(__file__).resolve()
IN_NAMESPACE = "ZSFINERCAM_RAY_NETNS"  # set in the inner pytest, which runs inside the namespace

# Brings `lo` up (SIOCGIFFLAGS / SIOCSIFFLAGS, IFF_UP) without iproute2, then becomes the command.
LO_UP = """
import fcntl, os, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0)))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""

# Runs the CLI and SIGKILLs itself (the driver) once it has appended N manifest records.
DRIVER_KILLER = """
import os, signal, sys
from zsfinercam.batch import run as batch
limit, real = int(os.environ["KILL_AFTER_RECORDS"]), batch._Manifest.append
def append(self, record):
    real(self, record)
    self.count = getattr(self, "count", 0) + 1
    if self.count == limit:
        os.kill(os.getpid(), signal.SIGKILL)
batch._Manifest.append = append
from zsfinercam.cli import main
main(sys.argv[1:])
"""


def test_the_missing_extra_is_one_line_and_exit_2(tiny_files, tmp_path):
    (tmp_path / "in").mkdir()
    Image.fromarray(random_image(1, 30, 40)).save(tmp_path / "in" / "a.png")
    hide_ray = "import sys; sys.modules['ray'] = None; from zsfinercam.cli import main; main(sys.argv[1:])"
    proc = python("-c", hide_ray, "batch", tmp_path / "in", *CONCEPTS, "--out", tmp_path / "out", "--engine", "ray",
                  *model_args(tiny_files))
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    assert proc.stderr.splitlines() == ['zsfinercam: error: --engine ray needs Ray Data, which is not installed; '
                                        'pip install "zsfinercam[ray]"'], proc.stderr


def test_ray_options_need_the_ray_engine(tiny_files, tmp_path):
    run = cli(["batch", tmp_path, *CONCEPTS, "--out", tmp_path / "out", "--workers", 2, *model_args(tiny_files)])
    assert run.code == 2 and run.err == ["zsfinercam: error: --workers applies to --engine ray only; "
                                         "add --engine ray or drop it"]


def test_bad_engine_requests_are_refused_before_anything_is_written(tiny, tmp_path):
    from zsfinercam import Localizer, UsageError
    from zsfinercam.batch.run import run_batch
    from zsfinercam.batch.ray_engine import RayOptions

    image, out = tmp_path / "a.png", tmp_path / "out"
    Image.fromarray(random_image(1, 30, 40)).save(image)
    for kwargs, fragment in [({"engine": "spark"}, "engine must be one of local, ray, got 'spark'"),
                             ({"ray": RayOptions()}, "apply to engine='ray' only")]:
        with pytest.raises(UsageError, match=re.escape(fragment)):
            run_batch(tiny, [image], out, ["owl"], **kwargs)
    for bad in ({"workers": 0}, {"workers": 1.5}, {"gpus_per_worker": -1}, {"cpus_per_worker": True}):
        with pytest.raises(UsageError, match="must be"):
            RayOptions(**bad)
    pytest.importorskip("ray", reason='needs the extra: pip install "zsfinercam[ray]"')
    with pytest.raises(UsageError, match="Localizer.from_pretrained"):  # no load arguments for the workers
        run_batch(Localizer(tiny.backend), [image], out, ["owl"], engine="ray")
    assert not out.exists()
    assert tiny.load_args["model_config"] and tiny.load_args["device"] == "cpu"


def test_ray_cases_on_loopback_only(tmp_path):
    """The case_* functions, in a network namespace that has only `lo`."""
    pytest.importorskip("ray", reason='needs the extra: pip install "zsfinercam[ray]"')
    unshare = _unshare_command()
    env = {**os.environ, IN_NAMESPACE: "1", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(HERE.parents[1])}
    cmd = [*unshare, sys.executable, "-c", LO_UP, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:logging",
           "-o", "python_functions=case_*", "--basetemp", str(tmp_path / "inner"), str(HERE)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=HERE.parents[1])
    failures = proc.stdout[proc.stdout.find("= FAILURES ="):]
    assert proc.returncode == 0, failures[:6000] + proc.stderr[-3000:]
    assert re.search(r"^4 passed in ", proc.stdout, re.M), proc.stdout[-3000:]  # none skipped


def _unshare_command() -> list[str]:
    """`unshare --net` as root, else with a user namespace (`--map-root-user`) where the kernel allows it."""
    for cmd in (["unshare", "--net"], ["unshare", "--net", "--map-root-user"]):
        try:
            if subprocess.run([*cmd, "true"], capture_output=True, timeout=30).returncode == 0:
                return cmd
        except FileNotFoundError:
            break
    pytest.skip("cannot make a network namespace (unshare from util-linux, as root or with user namespaces)")


# --- the Ray cases: only in the namespace ---------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module, after checking that only loopback exists."""
    assert os.environ.get(IN_NAMESPACE) == "1", "the Ray cases run only inside the loopback-only namespace"
    assert [name for _, name in socket.if_nameindex()] == ["lo"]
    import ray

    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=150 * 2**20, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def folder(tmp_path) -> Path:
    """Six good images of different sizes, one corrupt file, one truncated PNG."""
    root = tmp_path / "in"
    root.mkdir()
    for i in range(6):
        Image.fromarray(random_image(30 + i, 24 + 3 * i, 33)).save(root / f"img{i}.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    whole = (root / "img5.png").read_bytes()
    (root / "truncated.png").write_bytes(whole[:len(whole) // 2])
    return root


def outputs(out: Path) -> dict:
    """Every file a run wrote but run.json, by relative path -> digest (the saved JSON names its files
    relative to itself, so folders compare byte for byte); the manifest's latest record per input
    (later records supersede earlier ones), sorted by input."""
    files = {p.relative_to(out).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
             for p in out.rglob("*") if p.is_file() and p.name not in (MANIFEST_NAME, SETTINGS_NAME, ".lock")}
    latest = {json.loads(line)["input"]: line for line in (out / MANIFEST_NAME).read_bytes().splitlines()}
    return {"files": files, "manifest": [latest[k] for k in sorted(latest)]}


def case_ray_equals_local_and_records_bad_files(cluster, tiny_files, folder, tmp_path):
    args = ["batch", folder, *CONCEPTS, "--batch-size", 3, *model_args(tiny_files)]
    local = cli([*args, "--out", tmp_path / "local"])
    ray = cli([*args, "--out", tmp_path / "ray", "--engine", "ray", "--workers", 2])
    for run in (local, ray):
        assert run.code == 1 and run.out.startswith("batch: 6 ok, 2 failed, 0 skipped"), run.err
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")
    failed = {r["input"]: r["error"] for r in records(tmp_path / "ray") if r["status"] == "error"}
    assert sorted(Path(p).name for p in failed) == ["corrupt.png", "truncated.png"]
    assert "truncated" in failed[str(folder / "truncated.png")]
    settings = [json.loads((tmp_path / d / SETTINGS_NAME).read_bytes()) for d in ("local", "ray")]
    assert [s.pop("engine") for s in settings] == ["local", "ray"] and settings[0] == settings[1]
    assert not list((tmp_path / "ray").rglob(f"{TMP_PREFIX}*"))


def case_a_killed_worker_is_restarted_and_its_images_redone(cluster, tiny_files, folder, tmp_path, monkeypatch):
    marker = tmp_path / "worker-exited"
    monkeypatch.setenv("ZSFINERCAM_TEST_WORKER_EXIT", f"3:{marker}")  # test-only: exit after image 3, once
    args = ["batch", folder, *CONCEPTS, "--batch-size", 2, *model_args(tiny_files)]
    ray = cli([*args, "--out", tmp_path / "ray", "--engine", "ray"])
    assert marker.exists(), "the worker never exited: the switch did not reach it"
    assert ray.code == 1 and ray.out.startswith("batch: 6 ok, 2 failed, 0 skipped"), ray.err
    inputs = [r["input"] for r in records(tmp_path / "ray")]
    assert sorted(inputs) == sorted(set(inputs)) and len(inputs) == 8  # every image once
    monkeypatch.delenv("ZSFINERCAM_TEST_WORKER_EXIT")
    assert cli([*args, "--out", tmp_path / "local"]).code == 1
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")


def case_resume_after_a_killed_driver_gives_the_same_bytes(cluster, tiny_files, folder, tmp_path):
    args = ["batch", folder, *CONCEPTS, "--batch-size", 2, *model_args(tiny_files)]
    killed = tmp_path / "killed"
    proc = python("-c", DRIVER_KILLER, *args, "--out", killed, "--engine", "ray", "--ray-address", cluster,
                  env={"KILL_AFTER_RECORDS": "4"})  # corrupt.png, img0-2 of 8
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert len(records(killed)) == 4
    resumed = cli([*args, "--out", killed, "--resume", "--engine", "ray"])
    assert resumed.code == 1 and resumed.out.startswith("batch: 3 ok, 2 failed, 3 skipped"), resumed.err
    full = cli([*args, "--out", tmp_path / "local"])
    assert full.code == 1, full.err
    assert outputs(killed) == outputs(tmp_path / "local")
    assert not list(killed.rglob(f"{TMP_PREFIX}*"))


def case_a_worker_that_cannot_load_the_model_stops_the_run_in_one_line(cluster, tiny, tmp_path):
    from zsfinercam import WorkError
    from zsfinercam.batch.run import run_batch

    image, out = tmp_path / "a.png", tmp_path / "out"
    Image.fromarray(random_image(1, 30, 40)).save(image)
    loc = copy.copy(tiny)
    loc.load_args = {**tiny.load_args, "pretrained": str(tmp_path / "gone.safetensors")}  # the driver's loads
    with pytest.raises(WorkError, match=r"^the Ray job stopped \(.*rerun with --resume$") as caught:
        run_batch(loc, [image], out, ["owl", "hawk"], engine="ray", progress=False)
    assert "\n" not in str(caught.value) and (out / MANIFEST_NAME).read_bytes() == b""
