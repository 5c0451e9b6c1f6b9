"""`zsfinercam batch --engine ray`: the same outputs as the local engine, on Ray clusters that
listen on loopback only, and runs that end whatever their workers do.

Both Ray tests run in a network namespace that they make (`unshare --net`: as root, else in a user
namespace where the kernel allows it), so that no test binds or reaches a real network:
- `test_a_cluster_the_run_starts_listens_on_loopback_only` gives its namespace a second interface
  holding a documentation address and the default route (the address Ray takes for a node it
  starts, unless told otherwise), runs a batch that starts its own cluster and lists every socket
  listening in the namespace while the run is alive.
- `test_ray_cases_on_loopback_only` runs the `case_*` functions in a second pytest inside a
  namespace holding nothing but `lo`, with one cluster for the whole module (fixture `cluster`).
"""
from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import os
import re
import shutil
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
from zsfinercam.batch.ray_engine import TEST_EXIT_ENV
from zsfinercam.batch.run import MANIFEST_NAME, SETTINGS_NAME
from zsfinercam.io.files import TMP_PREFIX, image_stem

HERE = Path(__file__).resolve()
LOOPBACK = "127.0.0.1"
IN_NAMESPACE = "ZSFINERCAM_RAY_NETNS"  # set in the inner pytest, which runs inside the namespace

# Brings `lo` up (SIOCGIFFLAGS / SIOCSIFFLAGS, IFF_UP) without iproute2, then becomes the command.
LO_UP = """
import fcntl, os, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0)))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""

# A second interface with a documentation address (RFC 5737) and the default route, both ends of the
# veth pair inside the namespace: without being told otherwise, Ray would take 192.0.2.1 as the node address.
TEST_ADDRESS = "192.0.2.1"
VETH_UP = ("ip link set lo up && ip link add veth0 type veth peer name veth1 && ip link set veth0 up && "
           f"ip link set veth1 up && ip addr add {TEST_ADDRESS}/24 dev veth0 && "
           'ip route add default via 192.0.2.2 dev veth0 && exec "$@"')

# Runs `zsfinercam ARGS` and, while it is alive, lists every TCP socket listening and UDP socket bound in
# this (fresh) namespace, which only the run's processes use; prints the exit status and the sockets seen.
WATCH = """
import json, re, subprocess, sys, threading, time
run = subprocess.Popen([sys.executable, "-m", "zsfinercam", *sys.argv[1:]], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
seen = set()
def watch():
    while run.poll() is None:
        for line in subprocess.run(["ss", "-Hltunp"], capture_output=True, text=True).stdout.splitlines():
            netid, local = line.split()[0], line.split()[4]
            seen.update((netid, local, name) for name in re.findall(r'[(]"([^"]+)",pid=', line) or ["?"])
        time.sleep(0.1)
watcher = threading.Thread(target=watch)
watcher.start()
out, err = run.communicate()
watcher.join()
print(json.dumps({"code": run.returncode, "out": out, "err": err[-3000:], "sockets": sorted(seen)}))
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
    assert proc.stderr.splitlines() == ['zsfinercam: error: --engine ray needs Ray, which is not installed; '
                                        'pip install "zsfinercam[ray]"'], proc.stderr


@pytest.mark.parametrize("flag", ["--workers", "--max-retries"])
def test_ray_options_need_the_ray_engine(tiny_files, tmp_path, flag):
    run = cli(["batch", tmp_path, *CONCEPTS, "--out", tmp_path / "out", flag, 2, *model_args(tiny_files)])
    assert run.code == 2 and run.err == [f"zsfinercam: error: {flag} applies to --engine ray only; "
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
    for bad in ({"workers": 0}, {"workers": 1.5}, {"gpus_per_worker": -1}, {"cpus_per_worker": True},
                {"max_retries": -1}, {"max_retries": None}, {"threads": 0}):
        with pytest.raises(UsageError, match="must be"):
            RayOptions(**bad)
    pytest.importorskip("ray", reason='needs the extra: pip install "zsfinercam[ray]"')
    with pytest.raises(UsageError, match="Localizer.from_pretrained"):  # no load arguments for the workers
        run_batch(Localizer(tiny.backend), [image], out, ["owl"], engine="ray")
    assert not out.exists()
    assert tiny.load_args["model_config"] and tiny.load_args["device"] == "cpu"


def test_a_cluster_is_not_started_where_ray_would_take_a_routable_address(monkeypatch):
    """Ray imported before the engine could ask for loopback: refused, no cluster started."""
    from types import SimpleNamespace

    from zsfinercam import UsageError
    from zsfinercam.batch import ray_engine

    started = []
    ray = SimpleNamespace(is_initialized=lambda: False, init=lambda **kw: started.append(kw),
                          util=SimpleNamespace(get_node_ip_address=lambda: TEST_ADDRESS))
    with pytest.raises(UsageError, match=r"listens on 127\.0\.0\.1 only, but ray was imported before .* "
                                         r"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"):
        ray_engine._connect(ray, None)
    assert not started
    ray.util.get_node_ip_address = lambda: LOOPBACK
    monkeypatch.delenv("RAY_USAGE_STATS_ENABLED", raising=False)
    assert ray_engine._connect(ray, None) and ray_engine._connect(ray, "auto")
    assert started == [{"address": "local", "include_dashboard": False, "log_to_driver": False,
                        "configure_logging": False},
                       {"address": "auto", "include_dashboard": False, "log_to_driver": False,
                        "configure_logging": False}]


def test_a_pool_larger_than_the_cluster_started_for_it_is_refused():
    from zsfinercam import UsageError
    from zsfinercam.batch.ray_engine import RayOptions, _check_fits

    machine = {"CPU": 2.0, "memory": 1e9}
    _check_fits(machine, RayOptions(workers=2))
    _check_fits({**machine, "GPU": 1.0}, RayOptions(workers=2, gpus_per_worker=0.5, cpus_per_worker=0.5))
    for options, message in [(RayOptions(workers=3), "--workers 3 with 1 CPU each needs 3 CPUs, and this machine "
                                                     "has 2; lower --workers or --cpus-per-worker"),
                             (RayOptions(gpus_per_worker=1), "--workers 1 with 1 GPU each needs 1 GPUs, and this "
                                                             "machine has 0; lower --workers or --gpus-per-worker")]:
        with pytest.raises(UsageError, match=f"^{re.escape(message)}$"):
            _check_fits(machine, options)


def test_a_cluster_the_run_starts_listens_on_loopback_only(tiny_files, tmp_path):
    """Every socket that a run's own cluster listens on (GCS, raylet and object manager, runtime-env
    agent, the driver's and workers' servers) is on 127.0.0.1 (IPv4-mapped in IPv6 sockets), though
    the namespace offers a routable address and a default route."""
    pytest.importorskip("ray", reason='needs the extra: pip install "zsfinercam[ray]"')
    if not (shutil.which("ip") and shutil.which("ss")):
        pytest.skip("needs iproute2 (ip, ss) to give the namespace an interface and list its sockets")
    (tmp_path / "in").mkdir()
    for i in range(3):
        Image.fromarray(random_image(i, 30, 40)).save(tmp_path / "in" / f"{i}.png")
    args = ["batch", tmp_path / "in", *CONCEPTS, "--out", tmp_path / "out", "--engine", "ray", "--batch-size", 2,
            *model_args(tiny_files)]
    cmd = [*_unshare_command(), "sh", "-c", VETH_UP, "sh", sys.executable, "-c", WATCH, *map(str, args)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(HERE.parents[1])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert seen["code"] == 0 and seen["out"].startswith("batch: 3 ok, 0 failed"), seen["err"]
    names = {name for _, _, name in seen["sockets"]}
    assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::") for n in names), seen["sockets"]
    exposed = [s for s in seen["sockets"] if _host(s[1]) != LOOPBACK]
    assert not exposed, f"listening beyond loopback: {exposed}"


def _host(local: str) -> str:
    """The address of an `ss` local address ("127.0.0.1:80", "[::ffff:127.0.0.1]:80", "*:80", "[::]:80"),
    IPv4-mapped IPv6 addresses as IPv4."""
    host = local.rsplit(":", 1)[0].strip("[]").split("%")[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # "*": every address
    return str(getattr(address, "ipv4_mapped", None) or address)


def test_ray_cases_on_loopback_only(tmp_path):
    """The case_* functions, in a network namespace that has only `lo`."""
    pytest.importorskip("ray", reason='needs the extra: pip install "zsfinercam[ray]"')
    unshare = _unshare_command()
    env = {**os.environ, IN_NAMESPACE: "1", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(HERE.parents[1])}
    cmd = [*unshare, sys.executable, "-c", LO_UP, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
           "-p", "no:logging", "-o", "python_functions=case_*", "--basetemp", str(tmp_path / "inner"), str(HERE)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=HERE.parents[1])
    failures = proc.stdout[proc.stdout.find("= FAILURES ="):]
    assert proc.returncode == 0, failures[:6000] + proc.stderr[-3000:]
    assert re.search(r"^6 passed in ", proc.stdout, re.M), proc.stdout[-3000:]  # none skipped


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


def summary(run) -> str:
    """The summary line of a run's stdout, its only line but for Ray's reports of dead workers, which
    reach stdout from a thread of the module's cluster when they come after the run."""
    lines = [ln for ln in run.out.splitlines() if "(raylet)" not in ln]
    assert len(lines) == 1, run.out
    return lines[0]


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
    monkeypatch.setenv(TEST_EXIT_ENV, f"3:{marker}")  # test-only: exit after image 3, once
    args = ["batch", folder, *CONCEPTS, "--batch-size", 2, *model_args(tiny_files)]
    ray = cli([*args, "--out", tmp_path / "ray", "--engine", "ray"])
    assert marker.exists(), "the worker never exited: the switch did not reach it"
    assert ray.code == 1 and summary(ray).startswith("batch: 6 ok, 2 failed, 0 skipped"), ray.err
    inputs = [r["input"] for r in records(tmp_path / "ray")]
    assert sorted(inputs) == sorted(set(inputs)) and len(inputs) == 8  # every image once
    monkeypatch.delenv(TEST_EXIT_ENV)
    assert cli([*args, "--out", tmp_path / "local"]).code == 1
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")


def case_a_poisonous_image_fails_alone_and_resume_retries_it(cluster, tiny_files, folder, tmp_path, monkeypatch):
    from zsfinercam.batch.ray_engine import TEST_POISON_ENV

    # chunks [corrupt, img0] [img1, img2] [img3, img4] [img5, truncated]; img2 kills every worker that maps it:
    # its chunk twice (--max-retries 1), then img1 alone maps and img2 alone kills two more
    monkeypatch.setenv(TEST_POISON_ENV, "img2.png")
    args = ["batch", folder, *CONCEPTS, "--batch-size", 2, *model_args(tiny_files)]
    out = tmp_path / "ray"
    ray = cli([*args, "--out", out, "--engine", "ray", "--max-retries", 1])
    assert ray.code == 1 and summary(ray).startswith("batch: 5 ok, 3 failed, 0 skipped"), ray.err
    inputs = [r["input"] for r in records(out)]
    assert sorted(inputs) == sorted(map(str, folder.iterdir()))  # every image once
    poison = str(folder / "img2.png")
    failed = {r["input"]: r["error"] for r in records(out) if r["status"] == "error"}
    assert failed[poison] == (f"{poison}: worker died 2 times on this image (a crash or out of memory while "
                              f"decoding or mapping it); check the file, then rerun with --resume to try it again")
    assert ray.err[-1] == f"zsfinercam: error: 3 of 8 images failed; their errors are in {out / MANIFEST_NAME}"
    monkeypatch.delenv(TEST_POISON_ENV)
    resumed = cli([*args, "--out", out, "--engine", "ray", "--resume"])  # only the failed ones again
    assert resumed.code == 1 and summary(resumed).startswith("batch: 1 ok, 2 failed, 5 skipped"), resumed.err
    assert [r["input"] for r in records(out)[8:]] == [str(folder / n) for n in ("corrupt.png", "img2.png",
                                                                               "truncated.png")]
    assert cli([*args, "--out", tmp_path / "local"]).code == 1
    whole = {image_stem(folder / f"img{i}.png") for i in (0, 2, 3, 4, 5)}  # mapped in their chunks as cut
    mine = [{k: v for k, v in outputs(d)["files"].items() if k.split("/")[0] in whole}
            for d in (out, tmp_path / "local")]
    assert len(mine[0]) == 5 * 2 * 3 and mine[0] == mine[1]  # 5 images x 2 concepts x 3 files
    assert not list(out.rglob(f"{TMP_PREFIX}*"))


def case_threads_reach_the_workers(cluster, tiny_files, folder, tmp_path):
    import torch

    saved = torch.get_num_threads()  # --threads sets this process's count too
    try:
        run = cli(["batch", folder / "img0.png", *CONCEPTS, "--out", tmp_path / "out", "--engine", "ray",
                   "--workers", 2, "--threads", 3, *model_args(tiny_files)])
    finally:
        torch.set_num_threads(saved)
    assert run.code == 0, run.err
    assert "zsfinercam: mapping on 2 Ray workers, 3 torch threads each ..." in run.notes, run.notes


def case_resume_after_a_killed_driver_gives_the_same_bytes(cluster, tiny_files, folder, tmp_path):
    args = ["batch", folder, *CONCEPTS, "--batch-size", 2, *model_args(tiny_files)]
    killed = tmp_path / "killed"
    proc = python("-c", DRIVER_KILLER, *args, "--out", killed, "--engine", "ray", "--ray-address", cluster,
                  env={"KILL_AFTER_RECORDS": "4"})  # corrupt.png, img0-2 of 8
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert len(records(killed)) == 4
    resumed = cli([*args, "--out", killed, "--resume", "--engine", "ray"])
    assert resumed.code == 1 and summary(resumed).startswith("batch: 3 ok, 2 failed, 3 skipped"), resumed.err
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
