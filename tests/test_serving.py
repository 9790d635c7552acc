"""Serving: the request protocol and service (in process), and `zoo serve` / `zoo request` /
`zoo triton` on the bundled Triton Inference Server over loopback: the same files as `zoo run`,
determinism under concurrency, refusals (400 / 503) with `zoo run`'s lines, a client that goes
away, SIGTERM / SIGINT draining, a kill -9 then a restart on the same ports, health and metrics.
Every loop is bounded."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_error, zoo

from runtimes.serving import Payload, RequestError, Service, ServiceError, parse_options, safe_relative
from runtimes.triton import ServerError, http_ready, stream_request
from zoo.errors import InputError

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------
# Protocol and service, in process
# --------------------------------------------------------------------------------------


def test_payload_keeps_every_byte_of_its_files():
    blob = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) + b"\x00\x00\x00"  # trailing NULs: a plain bytes array drops them
    payload = Payload({"prompt": "a fox", "steps": 2}, seed=7, out_name="o.mp4", files={"video": ("clip.mp4", blob)})
    encoded = payload.encode()
    back = Payload.decode(encoded["request"], encoded["media"])
    assert back == payload and back.files["video"][1] == blob
    frames = {"a/0.png": b"\x00" * 5, "b.png": blob}
    folder = Payload({"prompt": "x"}, files={"pose_video": ("poses/", frames), "image": ("ref.png", blob)})
    encoded = folder.encode()
    assert Payload.decode(encoded["request"], encoded["media"]) == folder
    with pytest.raises(RequestError, match="not a zoo request"):
        Payload.decode(np.array([[b"{not json"]], dtype=object), None)


def _run_line(*args) -> str:
    """The one error line `zoo run` prints for ``args``."""
    result = zoo("run", *args)
    assert result.exit_code == 2, result.output
    return next(line for line in result.output.splitlines() if line.lower().startswith("error:"))


def test_options_are_parsed_as_zoo_run_parses_them(tiny_export, tmp_path):
    from exporters.manifest import load_manifest
    from runtimes.sampler import sampler_family

    export = tiny_export("pixart", "sigma")
    options = sampler_family(load_manifest(export)).run_options
    out = tmp_path / "x.png"
    cases = [
        ({"steps": 2}, ["--steps", "2"]),
        ({"prompt": "x", "guidance_scale": float("nan")}, ["--prompt", "x", "--guidance-scale", "nan"]),
        ({"prompt": "x", "steps": 0}, ["--prompt", "x", "--steps", "0"]),
        ({"prompt": "x", "bogus": 1}, ["--prompt", "x", "--bogus", "1"]),
    ]
    for values, args in cases:
        with pytest.raises(RequestError) as e:
            parse_options(options, values)
        assert e.value.line == _run_line(export, *args, "--out", out)
    assert parse_options(options, {"prompt": "x", "steps": "3"})["steps"] == 3
    for values in ({"prompt": "x", "help": True}, {"prompt": "x", "out": "/etc/x.png"}):  # never zoo run's own
        with pytest.raises(RequestError, match="^Error: "):
            parse_options(options, values)


def test_what_the_server_cannot_do_is_its_fault_and_names_no_server_path(tiny_export, tmp_path):
    import shutil

    export = tmp_path / "pixart"
    shutil.copytree(tiny_export("pixart", "sigma"), export)
    (export / "transformer" / "model.onnx").unlink()
    service = Service(export)
    try:
        with pytest.raises(ServiceError) as e:
            service.run(Payload({"prompt": "x", "steps": 1}, out_name="x.png"))
    finally:
        service.close()
    assert (
        e.value.line.startswith("error: server: ") and "<export>" in e.value.line and str(tmp_path) not in e.value.line
    )


def test_folder_names_that_cannot_be_rebuilt_are_refused(tiny_export):
    service = Service(tiny_export("wan-animate"))
    try:
        for frames in ({"": b"x"}, {"a": b"x", "a/b.png": b"y"}, {"a.png": b"x", "./a.png": b"y"}):
            with pytest.raises(RequestError, match="is empty, repeated or both a file and a folder"):
                service.run(Payload({}, out_name="o.npy", files={"pose_video": ("pose", frames)}))
    finally:
        service.close()


def test_service_writes_what_zoo_run_writes_and_refuses_as_it_does(tiny_export, tmp_path):
    export = tiny_export("animatediff")
    assert (
        zoo("run", export, "--prompt", "a fox", "--steps", "2", "--seed", "3", "--out", tmp_path / "run.gif").exit_code
        == 0
    )
    events = []
    service = Service(export)
    try:
        result = service.run(
            Payload({"prompt": "a fox", "steps": 2}, seed=3, out_name="somewhere/my run é.gif"), events.append
        )
        assert result.files == [("my run é.gif", (tmp_path / "run.gif").read_bytes())]  # the name as the client gave it
        assert events[0] == {"type": "accepted"} and [e["step"] for e in events[1:]] == [1, 2]
        not_a_video = tmp_path / "clip.mp4"
        not_a_video.write_bytes(os.urandom(3000))
        with pytest.raises(RequestError) as e:
            service.run(
                Payload(
                    {"prompt": "x", "steps": 2},
                    out_name="o.gif",
                    files={"video": (str(not_a_video), not_a_video.read_bytes())},
                )
            )
        assert e.value.line == _run_line(export, "--prompt", "x", "--video", not_a_video, "--out", tmp_path / "o.gif")
        with pytest.raises(RequestError, match="send the file's bytes, not a path on the server"):
            service.run(Payload({"prompt": "x", "video": "/etc/passwd"}, out_name="o.gif"))
    finally:
        service.close()


def test_media_as_folders_of_frames_give_what_zoo_run_gives(tiny_export, tmp_path):
    """Wan-Animate from an image and two videos given as folders of PNG frames (sent file by file)."""
    from PIL import Image

    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(tmp_path / "ref.png")
    for name, size in (("pose", (32, 48)), ("face", (16, 16))):
        (tmp_path / name).mkdir()
        for i in range(9):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(tmp_path / name / f"{i:03d}.png")
    export = tiny_export("wan-animate")
    args = [
        "--image",
        tmp_path / "ref.png",
        "--pose-video",
        tmp_path / "pose",
        "--face-video",
        tmp_path / "face",
        "--steps",
        "2",
        "--segment-frames",
        "9",
        "--prev-frames",
        "1",
        "--height",
        "32",
        "--width",
        "48",
        "--seed",
        "2",
    ]
    assert zoo("run", export, *args, "--out", tmp_path / "run.npy").exit_code == 0
    files = {
        o: (str(p), Payload.read_media(p))
        for o, p in (
            ("image", tmp_path / "ref.png"),
            ("pose_video", tmp_path / "pose"),
            ("face_video", tmp_path / "face"),
        )
    }
    service = Service(export)
    try:
        result = service.run(
            Payload(
                {"steps": 2, "segment_frames": 9, "prev_frames": "1", "height": 32, "width": 48},
                seed=2,
                out_name="run.npy",
                files=files,
            )
        )
        assert result.files == [("run.npy", (tmp_path / "run.npy").read_bytes())]
        files["face_video"] = (str(tmp_path / "face"), {"../../evil.png": b"x", "0.png": b"not a png"})
        with pytest.raises(RequestError) as e:
            service.run(Payload({"steps": 2, "height": 32, "width": 48}, out_name="o.npy", files=files))
        assert str(tmp_path / "face") in e.value.line and "zoo-request" not in e.value.line
        assert not (tmp_path.parent / "evil.png").exists()
    finally:
        service.close()


def test_returned_file_names_stay_in_the_output_folder():
    assert str(safe_relative("frames/0001.png")) == "frames/0001.png"
    for bad in ("../x.png", "/etc/x", "a\\b.png", ""):
        with pytest.raises(InputError, match="not a path inside the output folder"):
            safe_relative(bad)


# --------------------------------------------------------------------------------------
# Scratch folders, the pids they are named after, and the stubs' module search path
# --------------------------------------------------------------------------------------


def _dead_pid() -> int:
    """The pid of a process that ran and was reaped."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def _zombie() -> subprocess.Popen:
    """A child that exited and is not reaped yet (the caller reaps it)."""
    child = subprocess.Popen(["sleep", "0"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return child
        except (OSError, IndexError):
            pass
        time.sleep(0.02)
    child.wait()
    pytest.fail("the child did not become a zombie within 10 s")


def test_pid_running_counts_a_zombie_as_gone(tmp_path, monkeypatch):
    import pathlib

    from exporters import artifacts
    from exporters.artifacts import pid_running

    zombie = _zombie()
    try:
        assert not pid_running(zombie.pid)  # exited, not reaped: it writes nothing more
        assert pid_running(os.getpid()) and pid_running(1)  # init: another user's process runs too
        assert not pid_running(_dead_pid()) and not pid_running(0)
        # no /proc (macOS): the kernel answers, for which a zombie still exists
        monkeypatch.setattr(artifacts, "Path", lambda p: pathlib.Path(str(p).replace("/proc/", f"{tmp_path}/")))
        assert pid_running(os.getpid()) and pid_running(zombie.pid) and not pid_running(_dead_pid())
    finally:
        zombie.wait()


def test_remove_dead_scratch_removes_only_the_folders_of_processes_that_are_gone(tmp_path, monkeypatch):
    import tempfile

    from exporters.artifacts import clean_stale, remove_dead_scratch, scratch_dir

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    dead, zombie = _dead_pid(), _zombie()
    try:
        gone = [tmp / f"zoo-x-{dead}-a1", tmp / f"zoo-x-{zombie.pid}-b2"]
        live = tmp / f"zoo-x-{os.getpid()}-c3"
        for folder in (*gone, live, tmp / f"zoo-y-{dead}-d4", tmp / "zoo-x-other-e5"):
            folder.mkdir()
            (folder / "f").write_text("x")
        target = tmp_path / "mine"  # a symlink with a dead pid's name is not followed nor removed
        target.mkdir()
        (target / "keep").write_text("keep me")
        (tmp / f"zoo-x-{dead}-link").symlink_to(target)
        (tmp / f"zoo-x-{dead}-file").write_text("a file, not a folder")
        before = sorted(p.name for p in tmp.iterdir())
        assert sorted(remove_dead_scratch("zoo-x-")) == sorted(gone)
        assert sorted(p.name for p in tmp.iterdir()) == sorted(set(before) - {p.name for p in gone})
        assert (target / "keep").read_text() == "keep me"
        made = scratch_dir("zoo-x-")
        assert made.is_dir() and made.parent == tmp and made.name.startswith(f"zoo-x-{os.getpid()}-")
        stale = tmp_path / f".export.staging-{zombie.pid}-deadbeef"  # an export killed and not reaped
        stale.mkdir()
        assert clean_stale(tmp_path / "export") == [stale] and not stale.exists()
    finally:
        zombie.wait()


def test_a_request_gets_a_scratch_folder_named_after_its_process_and_sweeps_nothing(tiny_export, tmp_path, monkeypatch):
    """The server's start and finish remove the request folders of stubs that are gone; a request
    only makes its own."""
    import tempfile

    service = Service(tiny_export("pixart", "sigma"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / f"zoo-request-{_dead_pid()}-x"
    dead.mkdir()
    made = []
    mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append(k.get("prefix")) or mkdtemp(*a, **k))
    try:
        with pytest.raises(RequestError, match="which takes no file"):
            service.run(Payload({"prompt": "x"}, files={"prompt": ("p.txt", b"x")}))
    finally:
        service.close()
    assert made == [f"zoo-request-{os.getpid()}-"] and dead.is_dir()
    assert [p.name for p in tmp_path.iterdir()] == [dead.name]  # its own folder is removed when it ends


def test_the_stubs_module_search_path_leaves_out_the_current_folder_of_an_empty_entry(tmp_path, monkeypatch):
    """A ``runtimes/`` or a ``torch.py`` in zoo serve's current folder is never what a stub imports:
    the empty entry of sys.path (python -c, an interactive session) is not passed on as that folder."""
    from runtimes.triton import MODEL_PY, PYTHON_ENV, python_env

    cwd = tmp_path / "cwd"
    (cwd / "runtimes").mkdir(parents=True)
    (cwd / "runtimes" / "__init__.py").write_text("raise SystemExit('the decoy runtimes was imported')\n")
    (cwd / "torch.py").write_text("raise SystemExit('the decoy torch was imported')\n")
    monkeypatch.chdir(cwd)
    rest = [p for p in sys.path if p and os.path.abspath(p) != str(cwd)]
    monkeypatch.setattr(sys, "path", ["", *rest])
    env = json.loads(python_env())
    assert env["path"] == list(dict.fromkeys(os.path.abspath(p) for p in rest)) and str(cwd) not in env["path"]
    monkeypatch.setattr(sys, "path", ["", str(cwd), *rest])  # named explicitly (PYTHONPATH=$PWD): kept
    assert json.loads(python_env())["path"][0] == str(cwd)
    # the stub's preamble with that list, in an interpreter that adds no folder of its own (-I), run in the decoy's folder
    preamble = MODEL_PY.format(export="export", python_env=PYTHON_ENV).split("from runtimes.triton_model")[0]
    probe = "import importlib.util, runtimes; print(runtimes.__file__); print(importlib.util.find_spec('torch').origin)"
    done = subprocess.run(
        [sys.executable, "-I", "-c", preamble + probe],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, PYTHON_ENV: json.dumps(env)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    runtimes_file, torch_file = done.stdout.split()
    assert Path(runtimes_file) == REPO / "runtimes" / "__init__.py" and not torch_file.startswith(str(cwd))


def test_triton_repository_holds_one_folder_per_model(tiny_export, tmp_path):
    repo = tmp_path / "repo"
    assert (
        zoo(
            "triton",
            tiny_export("pixart", "sigma"),
            "--out",
            repo,
            "--instances",
            "3",
            "--max-queue",
            "4",
            "--queue-timeout",
            "2.5",
        ).exit_code
        == 0
    )
    assert zoo("triton", tiny_export("animatediff"), "--out", repo).exit_code == 0
    assert sorted(p.name for p in repo.iterdir()) == ["animatediff", "pixart"]
    config = (repo / "pixart" / "config.pbtxt").read_text()
    for line in (
        "decoupled: true",
        "count: 3 kind: KIND_CPU",
        "max_queue_size: 4",
        "default_timeout_microseconds: 2500000",
        'key: "family" value: { string_value: "pixart" }',
    ):
        assert line in config
    graph = repo / "pixart" / "1" / "export" / "transformer" / "model.onnx"
    assert graph.stat().st_nlink >= 2  # hard-linked, not copied
    assert "from runtimes.triton_model import TritonPythonModel" in (repo / "pixart" / "1" / "model.py").read_text()
    (tmp_path / "file").write_text("x")
    result = zoo("triton", tiny_export("pixart", "sigma"), "--out", tmp_path / "file")
    assert result.exit_code == 2 and "is not a model repository" in result.output
    result = zoo("serve", repo, "--instances", "2")  # the repository's config says how many
    assert result.exit_code == 2 and "--instances: a repository's config.pbtxt already says this" in result.output


# --------------------------------------------------------------------------------------
# A real server over loopback
# --------------------------------------------------------------------------------------


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to a bind to port 0 or an outgoing connection."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_HANDED_OUT: set[int] = set()


def unused_ports(n: int) -> list[int]:
    """``n`` ports nothing listens on, none handed out before in this session, drawn at random
    from below the kernel's ephemeral range: no bind to port 0 and no outgoing connection (of this
    session or of another test run on the machine) is ever given one of them, so only a process
    naming the same port itself can take it before the server binds it; :func:`start_server` then
    draws new ones, a bounded number of times. (``zoo serve`` takes no port 0 to report back.)"""
    import random

    low = _ephemeral_low()
    draw = random.SystemRandom()
    ports: list[int] = []
    for _ in range(1000):
        port = draw.randrange(max(1024, low - 16384), low)
        if port in _HANDED_OUT or port in ports:
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as zoo serve checks: bound, not connected
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            _HANDED_OUT.update(ports)
            return ports
    raise AssertionError(f"no {n} unused ports below {low} in 1000 draws")


def poll(condition, timeout: float, what: str, every: float = 0.05):
    """``condition()``'s first true value, polled until ``timeout`` s have passed; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(every)


@dataclass
class Served:
    process: subprocess.Popen
    http: int
    grpc: int
    metrics: int
    log: Path
    lines: list[str] = field(default_factory=list)  # zoo serve's own output, as it comes
    reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"localhost:{self.grpc}"

    def ready(self) -> bool:
        return http_ready(self.http)

    def read(self) -> None:
        """Collect zoo serve's output in a thread, so that no test blocks on its pipe."""

        def collect() -> None:
            for line in self.process.stdout:
                self.lines.append(line.decode(errors="replace"))

        self.reader = threading.Thread(target=collect, daemon=True)
        self.reader.start()

    def said(self, prefix: str) -> bool:
        return any(line.startswith(prefix) for line in list(self.lines))

    def output(self, timeout: float = 10) -> str:
        """Everything zoo serve printed (all of it once the process has exited)."""
        if self.reader is not None and self.process.poll() is not None:
            self.reader.join(timeout)
        return "".join(self.lines)

    def pending(self, model: str = "pixart") -> int:
        """Requests of ``model`` waiting in Triton's queue (its pending-request gauge)."""
        with urllib.request.urlopen(f"http://localhost:{self.metrics}/metrics", timeout=5) as r:
            text = r.read().decode()
        found = [
            line
            for line in text.splitlines()
            if line.startswith("nv_inference_pending_request_count{") and f'model="{model}"' in line
        ]
        assert found, "Triton reports no nv_inference_pending_request_count for " + model
        return sum(int(float(line.rsplit(" ", 1)[1])) for line in found)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


_STARTED: list[Served] = []  # every server start_server started, so that none outlives its test


@pytest.fixture(autouse=True)
def _no_server_outlives_its_test():
    """A server a test started and left running (its test failed before stopping it) is killed
    after the test (its tritonserver and stubs die with it, as the kill -9 test shows), at once:
    a failed test's server would otherwise drain its requests first."""
    before = len(_STARTED)
    yield
    for server in _STARTED[before:]:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(30)
    del _STARTED[before:]


#: zoo serve's own check of a port, and Triton's when another process bound it in between
_PORT_TAKEN = ("is in use", "Address already in use", "address already in use")


def start_server(
    path: Path,
    *extra: str,
    ports: list[int] | None = None,
    timeout: float = 90,
    python: str = sys.executable,
    cwd: Path = REPO,
    tmpdir: Path | None = None,
    log: bool = True,
    env: dict[str, str] | None = None,
    attempts: int = 3,
) -> Served:
    """``zoo serve path`` on loopback, returned once it said ``ready in`` (its own line: a health
    probe could be answered by another server on the port); ``tmpdir`` its (and its stubs') TMPDIR,
    ``env`` more of its environment; Triton's log in serve-PORT.log beside ``path`` unless not
    ``log``. Ports not given are drawn by :func:`unused_ports`; if another process took one
    meanwhile, new ones are drawn, ``attempts`` times at most."""
    http, grpc, metrics = ports or unused_ports(3)
    log_file = path.parent / f"serve-{grpc}.log"
    environment = {**os.environ, **({"TMPDIR": str(tmpdir)} if tmpdir else {}), **(env or {})}
    process = subprocess.Popen(
        [
            python,
            "-m",
            "zoo.cli",
            "serve",
            str(path),
            "--http-port",
            str(http),
            "--grpc-port",
            str(grpc),
            "--metrics-port",
            str(metrics),
            *(["--log", str(log_file)] if log else []),
            *extra,
        ],
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    served = Served(process, http, grpc, metrics, log_file)
    _STARTED.append(served)
    served.read()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = served.output()
            triton_log = log_file.read_text(errors="replace") if log and log_file.is_file() else ""
            if ports is None and attempts > 1 and any(t in output + triton_log for t in _PORT_TAKEN):
                return start_server(
                    path,
                    *extra,
                    timeout=timeout,
                    python=python,
                    cwd=cwd,
                    tmpdir=tmpdir,
                    log=log,
                    env=env,
                    attempts=attempts - 1,
                )
            raise AssertionError(f"zoo serve exited with {process.returncode}: {output}")
        if served.said("ready in"):
            return served
        time.sleep(0.05)
    served.stop(signal.SIGKILL)
    raise AssertionError(f"zoo serve did not say it was ready in {timeout} s: {served.output()}")


@pytest.fixture(scope="module")
def served(tiny_export, tmp_path_factory):
    """pixart (2 instances) and animatediff in one repository, served for the module."""
    repo = tmp_path_factory.mktemp("served") / "repo"
    assert zoo("triton", tiny_export("pixart", "sigma"), "--out", repo, "--instances", "2").exit_code == 0
    assert zoo("triton", tiny_export("animatediff"), "--out", repo).exit_code == 0
    server = start_server(repo)
    yield server
    assert server.stop() == 0


def test_request_writes_the_files_run_writes(served, tiny_export, tmp_path):
    export = tiny_export("pixart", "sigma")
    args = ["--prompt", "a red fox", "--steps", "2", "--seed", "11"]
    result = zoo(
        "request",
        served.url,
        "--model",
        "pixart",
        *args,
        "--out",
        tmp_path / "req.png",
        "--array",
        tmp_path / "req.npy",
    )
    assert result.exit_code == 0, result.output
    assert zoo("run", export, *args, "--out", tmp_path / "run.png").exit_code == 0
    assert zoo("run", export, *args, "--out", tmp_path / "run.npy").exit_code == 0
    assert (tmp_path / "req.png").read_bytes() == (tmp_path / "run.png").read_bytes()
    np.testing.assert_array_equal(np.load(tmp_path / "req.npy"), np.load(tmp_path / "run.npy").astype(np.float32))
    video = ["--prompt", "a cat", "--steps", "2", "--seed", "4", "--frames", "4"]
    assert zoo("request", served.url, "--model", "animatediff", *video, "--out", tmp_path / "req.gif").exit_code == 0
    assert zoo("run", tiny_export("animatediff"), *video, "--out", tmp_path / "run.gif").exit_code == 0
    assert (tmp_path / "req.gif").read_bytes() == (tmp_path / "run.gif").read_bytes()


def test_a_pose_export_is_served_as_zoo_pose_runs_it(tiny_export, tmp_path):
    """`zoo triton` writes a repository for a pose export; `zoo request` sends the image and the
    video and writes the pose folder `zoo pose` writes, byte for byte."""
    import cv2

    export = tiny_export("unianimate-pose")
    image = np.full((150, 100, 3), 12, np.uint8)
    cv2.rectangle(image, (30, 15), (70, 140), (250, 250, 250), -1)
    cv2.imwrite(str(tmp_path / "ref.png"), image)
    writer = cv2.VideoWriter(str(tmp_path / "drive.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 8, (160, 120))
    for i in range(3):
        frame = np.full((120, 160, 3), 20, np.uint8)
        cv2.rectangle(frame, (50 + 4 * i, 20), (80 + 4 * i, 110), (250, 250, 250), -1)
        writer.write(frame)
    writer.release()
    inputs = ["--image", tmp_path / "ref.png", "--video", tmp_path / "drive.avi"]
    local = zoo("pose", export, *inputs, "--out", tmp_path / "local")
    assert local.exit_code == 0, local.output
    repo = tmp_path / "repo"
    assert zoo("triton", export, "--out", repo).exit_code == 0
    assert 'key: "family" value: { string_value: "unianimate-pose" }' in next(repo.glob("*/config.pbtxt")).read_text()
    server = start_server(repo)
    try:
        result = zoo("request", server.url, *inputs, "--out", tmp_path / "served")
        assert result.exit_code == 0, result.output
    finally:
        assert server.stop() == 0
    names = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert names == ["0000.jpg", "0001.jpg", "0002.jpg", "pose.jpg"]
    assert sorted(p.name for p in (tmp_path / "served").iterdir()) == names
    for name in names:
        assert (tmp_path / "served" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


def test_eight_clients_three_requests_each_get_their_own_seed(served, tiny_export):
    export = tiny_export("pixart", "sigma")
    seeds = list(range(24))
    service = Service(export)
    try:
        expected = {
            s: service.run(Payload({"prompt": "a fox", "steps": 2}, seed=s, out_name="x.npy")).files for s in seeds
        }
    finally:
        service.close()

    def client(first: int) -> dict[int, list]:
        return {
            s: stream_request(
                served.url, "pixart", Payload({"prompt": "a fox", "steps": 2}, seed=s, out_name="x.npy")
            ).files
            for s in seeds[first::8]
        }

    with ThreadPoolExecutor(8) as pool:
        got = {}
        for part in pool.map(client, range(8)):
            got.update(part)
    assert sorted(got) == seeds
    assert all(got[s] == expected[s] for s in seeds)
    assert len({got[s][0][1] for s in seeds}) == len(seeds)  # different seeds, different images


def test_bad_requests_get_zoo_runs_line_with_400(served, tiny_export, tmp_path):
    pixart, ad = tiny_export("pixart", "sigma"), tiny_export("animatediff")
    out = tmp_path / "x.png"
    not_a_video = tmp_path / "clip.mp4"
    not_a_video.write_bytes(os.urandom(3000))
    cases = [
        ("pixart", Payload({"steps": 2}, out_name=str(out)), [pixart, "--steps", "2"]),
        (
            "pixart",
            Payload({"prompt": "x", "height": 4096}, out_name=str(out)),
            [pixart, "--prompt", "x", "--height", "4096"],
        ),
        (
            "pixart",
            Payload({"prompt": "x", "guidance_scale": float("nan")}, out_name=str(out)),
            [pixart, "--prompt", "x", "--guidance-scale", "nan"],
        ),
        (
            "animatediff",
            Payload(
                {"prompt": "x"},
                out_name=str(tmp_path / "o.gif"),
                files={"video": (str(not_a_video), not_a_video.read_bytes())},
            ),
            [ad, "--prompt", "x", "--video", not_a_video],
        ),
    ]
    for model, payload, run_args in cases:
        with pytest.raises(ServerError) as e:
            stream_request(served.url, model, payload)
        want = _run_line(*run_args, "--out", payload.out_name)
        assert e.value.status == 400 and str(e.value) == want
        assert "Traceback" not in str(e.value) and "zoo-request" not in str(e.value)
    # the same refusal over HTTP (Triton's generate endpoint): status 400 and the same line
    body = json.dumps(
        {"request": json.dumps({"protocol": 1, "options": {"prompt": "x", "height": 4096}, "out_name": str(out)})}
    ).encode()
    http = urllib.request.Request(
        f"http://localhost:{served.http}/v2/models/pixart/generate",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(http, timeout=60)
    assert e.value.code == 400 and json.loads(e.value.read())["error"] == _run_line(*cases[1][2], "--out", out)
    result = zoo(
        "request",
        served.url,
        "--model",
        "animatediff",
        "--prompt",
        "x",
        "--video",
        not_a_video,
        "--out",
        tmp_path / "o.gif",
    )
    assert result.exit_code == 2, result.output
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == [
        _run_line(ad, "--prompt", "x", "--video", not_a_video, "--out", tmp_path / "o.gif")
    ]
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*.gif"))


def test_a_client_that_goes_away_does_not_stop_the_server(served):
    import queue

    import tritonclient.grpc as grpcclient

    payload = Payload({"prompt": "a fox", "steps": 500}, out_name="x.png")
    client = grpcclient.InferenceServerClient(served.url)
    events: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: events.put((result, error)))
    inputs = []
    for name, array in payload.encode().items():
        tensor = grpcclient.InferInput(name, list(array.shape), "BYTES")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    client.async_stream_infer("pixart", inputs)
    events.get(timeout=60)  # accepted: it is running
    client.stop_stream(cancel_requests=True)
    client.close()
    result = stream_request(served.url, "pixart", Payload({"prompt": "a fox", "steps": 2}, out_name="x.png"))
    assert result.files[0][0] == "x.png" and served.process.poll() is None


def test_health_and_prometheus_metrics(served):
    stream_request(served.url, "pixart", Payload({"prompt": "a fox", "steps": 1}, out_name="x.png"))
    assert served.ready()
    with urllib.request.urlopen(f"http://localhost:{served.metrics}/metrics", timeout=5) as r:
        text = r.read().decode()
    counts = [
        line
        for line in text.splitlines()
        if line.startswith("nv_inference_request_success{") and 'model="pixart"' in line
    ]
    assert counts and float(counts[0].rsplit(" ", 1)[1]) >= 1


def _slow(steps: int = 300) -> Payload:
    """About a second of work on the tiny PixArt (so that requests overlap however slow the machine)."""
    return Payload({"prompt": "a fox", "steps": steps}, out_name="x.png")


def _outcome(url: str, payload: Payload, on_event=None):
    """A request's result, or the server's refusal of it."""
    try:
        return stream_request(url, "pixart", payload, on_event)
    except ServerError as e:
        return e


def _outcomes(url: str, n: int, payload: Payload) -> list:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: _outcome(url, payload), range(n)))


def test_a_full_queue_and_an_expired_wait_answer_503(tiny_export, tmp_path):
    export = tiny_export("pixart", "sigma")
    server = start_server(export, "--max-queue", "1")
    try:
        outcomes = _outcomes(server.url, 5, _slow())
    finally:
        assert server.stop() == 0
    refused = [o for o in outcomes if isinstance(o, ServerError)]
    assert refused and all(o.status == 503 and "queue" in str(o).lower() for o in refused)
    assert len(outcomes) - len(refused) >= 2  # the one running and the one queued
    server = start_server(export, "--queue-timeout", "0.2")
    try:
        outcomes = _outcomes(server.url, 3, _slow())
    finally:
        assert server.stop() == 0
    refused = [o for o in outcomes if isinstance(o, ServerError)]
    assert refused and all(o.status == 503 for o in refused)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_drains_in_flight_and_queued_requests(tiny_export, sig):
    server = start_server(tiny_export("pixart", "sigma"))
    accepted = threading.Event()
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(_outcome, server.url, _slow(), lambda e: accepted.set()) for _ in range(3)]
        assert accepted.wait(60)
        poll(lambda: server.pending() == 2, 60, "the other two requests queued")
        server.process.send_signal(sig)
        results = [f.result(timeout=120) for f in futures]
    assert server.process.wait(60) == 0
    assert all(not isinstance(r, ServerError) and r.files[0][0] == "x.png" for r in results), results


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _running(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _stubs(server: Served) -> list[int]:
    """The Python backend stubs of ``zoo serve``'s tritonserver."""
    return [stub for triton in _children(server.process.pid) for stub in _children(triton)]


def _survivors(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if _running(p)]


def _busy(server: Served, n: int = 1, steps: int = 999):
    """``n`` long requests on a pool (one running, the rest queued); returns once one runs."""
    accepted = threading.Event()
    pool = ThreadPoolExecutor(n)
    futures = [pool.submit(_outcome, server.url, _slow(steps), lambda e: accepted.set()) for _ in range(n)]
    assert accepted.wait(60)
    poll(lambda: server.pending() == n - 1, 60, f"{n - 1} requests queued behind the running one")
    return pool, futures


def test_kill_9_leaves_no_stub_no_folder_and_nothing_that_blocks_a_restart(tiny_export, tmp_path):
    """kill -9 of zoo serve mid-request: its busy stub ends too (no orphan holding memory), the
    request's folder goes with it, and a restart on the same ports removes the dead server's
    scratch folders."""
    export = tiny_export("pixart", "sigma")
    server = start_server(export, tmpdir=tmp_path)
    ports = [server.http, server.grpc, server.metrics]
    pool, futures = _busy(server)
    stubs = _stubs(server)
    assert stubs and list(tmp_path.glob("zoo-request-*"))  # a request is running in a stub
    server.process.kill()
    server.process.wait(10)
    try:
        assert _survivors(stubs, 20) == []
        assert isinstance(futures[0].result(timeout=60), ServerError)
    finally:
        pool.shutdown(wait=False)
    assert not list(tmp_path.glob("zoo-request-*"))
    dead = f"-{server.process.pid}-"
    assert [p for p in tmp_path.iterdir() if dead in p.name]  # zoo serve's own scratch, until the next start
    again = start_server(export, ports=ports, tmpdir=tmp_path)  # the same ports, at once
    try:
        assert not [p for p in tmp_path.iterdir() if dead in p.name]
        assert stream_request(again.url, "pixart", _slow(1)).files[0][0] == "x.png"
    finally:
        assert again.stop() == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("zoo-")]


def test_a_second_signal_kills_the_server_and_its_busy_stubs_at_once(tiny_export, tmp_path):
    """And without --log, zoo serve prints its own lines only: Triton's log is in a file."""
    server = start_server(tiny_export("pixart", "sigma"), tmpdir=tmp_path, log=False)
    pool, futures = _busy(server)
    stubs = _stubs(server)
    try:
        server.process.send_signal(signal.SIGINT)
        poll(lambda: server.said("draining"), 30, "the first SIGINT handled")  # (two at once could arrive as one)
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(20) == 0
        assert _survivors(stubs, 5) == []
        assert isinstance(futures[0].result(timeout=60), ServerError)
    finally:
        pool.shutdown(wait=False)
    output = server.output()
    assert "killed (second signal)" in output and "ready in" in output and "Triton's log: " in output
    assert not re.search(r"(?m)^[IWE]\d{4} ", output), output  # no line of Triton's own log
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("zoo-")]


def test_sigterm_past_the_drain_timeout_cancels_what_is_left_and_exits_0(tiny_export, tmp_path):
    """SIGTERM with requests that outlast --drain-timeout: the one running ends at its next step,
    the queued ones are refused, each client gets a 503 line, and zoo serve exits 0 on time."""
    drain = 1
    server = start_server(tiny_export("pixart", "sigma"), "--drain-timeout", str(drain), tmpdir=tmp_path)
    pool, futures = _busy(server, 8)  # 8 x 999 steps, one at a time: far more than a second on any machine
    try:
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(60)
        took = time.monotonic() - signalled
        outcomes = [f.result(timeout=30) for f in futures]
    finally:
        pool.shutdown(wait=False)
    output = server.output()
    assert code == 0, output
    assert took < drain + 8, (took, output)  # not Triton's exit timeout, nor a kill
    refused = [o for o in outcomes if isinstance(o, ServerError)]
    assert refused and all(o.status == 503 and "shutting down" in str(o) for o in refused), outcomes
    assert "cancelling the requests left" in output and "stopped" in output and "killed" not in output
    assert "code -11" not in output and "Segmentation" not in server.log.read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("zoo-")]


def test_a_graph_that_cannot_load_is_never_ready(tiny_export, tmp_path):
    """A corrupt graph: zoo serve does not say ready; it stops, naming the file (exit 2)."""
    import shutil

    export = tmp_path / "pixart"
    shutil.copytree(tiny_export("pixart", "sigma"), export)
    graph = export / "transformer" / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # same size, other bytes
    graph.write_bytes(bytes(data))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    http, grpc, metrics = unused_ports(3)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "zoo.cli",
            "serve",
            str(export),
            "--http-port",
            str(http),
            "--grpc-port",
            str(grpc),
            "--metrics-port",
            str(metrics),
        ],
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(scratch)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot load" in errors[0] and str(graph) in errors[0], result.stderr
    assert "ready in" not in result.stderr
    assert not [p for p in scratch.iterdir() if p.name.startswith("zoo-")]


def test_triton_and_serve_bad_input_write_nothing(tiny_export, tmp_path):
    from exporters.tensorrt import unavailable

    pixart = tiny_export("pixart", "sigma")
    assert_error(
        zoo("triton", pixart, "--out", tmp_path / "r1", "--name", "../evil"), "--name '../evil': a model name is"
    )
    assert_error(
        zoo("triton", tiny_export("transformer-temporal", "default"), "--out", tmp_path / "r2"),
        "family 'transformer-temporal' has no sampler",
    )
    if unavailable() is not None:  # absent TensorRT: refused before anything is written
        assert_error(
            zoo("triton", pixart, "--out", tmp_path / "r3", "--backend", "tensorrt"),
            "the tensorrt backend is not available here",
        )
    for args in (["--instances", "0"], ["--max-queue", "-1"], ["--queue-timeout", "nan"]):
        result = zoo("triton", pixart, "--out", tmp_path / "r4", *args)
        assert result.exit_code == 2 and "Invalid value for" in result.output
    result = zoo("serve", pixart, "--http-port", "9000", "--grpc-port", "9000")
    assert result.exit_code == 2 and "--http-port, --grpc-port and --metrics-port must differ" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_request_bad_input_is_one_line(served, tmp_path):
    port = unused_ports(1)[0]  # nothing listens there
    assert_error(zoo("request", f"localhost:{port}", "--prompt", "x", "--out", tmp_path / "x.png"), f"localhost:{port}")
    assert_error(zoo("request", served.url, "--model", "nope", "--prompt", "x", "--out", tmp_path / "x.png"), "nope")
    assert_error(
        zoo("request", served.url, "--prompt", "x", "--out", tmp_path / "x.png"),
        "has 2 ready models (animatediff, pixart): name one with --model",
    )
    assert_error(
        zoo(
            "request",
            served.url,
            "--model",
            "animatediff",
            "--prompt",
            "x",
            "--video",
            tmp_path / "none.mp4",
            "--out",
            tmp_path / "x.gif",
        ),
        "does not exist",
    )
    result = zoo(
        "request", served.url, "--model", "pixart", "--prompt", "x", "--out", tmp_path / "x.png", "--array", tmp_path
    )
    assert result.exit_code == 2 and "Invalid value for '--array'" in result.output
    assert list(tmp_path.iterdir()) == []


def test_serve_refuses_a_busy_port_and_a_folder_that_is_neither(tiny_export, tmp_path):
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        result = zoo("serve", tiny_export("pixart", "sigma"), "--http-port", port)
        assert result.exit_code == 2 and f"port {port} is in use" in result.output
    result = zoo("serve", tmp_path)
    assert result.exit_code == 2 and "neither an export folder" in result.output


def _listening(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp writes them) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            address, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:
                found.add(address)
    return found


def test_serve_listens_on_loopback_only_and_says_so(served):
    """The default --host: every port on 127.0.0.1; zoo serve's own lines, Triton's log in its file."""
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, as IPv4 or IPv4-mapped IPv6
    for port in (served.http, served.grpc, served.metrics):
        assert _listening(port) and _listening(port) <= loopback, (port, _listening(port))
    assert "TRITONBACKEND_ModelInstanceInitialize" in served.log.read_text()


def test_serve_bad_host_is_one_line(tiny_export, tmp_path):
    for host in ("203.0.113.7", "no such host."):  # TEST-NET-3: never this machine's
        result = zoo("serve", tiny_export("pixart", "sigma"), "--host", host, "--http-port", unused_ports(1)[0])
        assert (
            result.exit_code == 2
            and "Invalid value for '--host'" in result.output
            and "not an address" in result.output
        )


def test_non_ascii_names_both_ways(served, tiny_export, tmp_path):
    """Output and media names with accents and spaces, kept as given: the files come back under
    them, the same bytes as zoo run's, and a refusal names them (the stub runs in the C locale)."""
    ad = tiny_export("animatediff")
    args = ["--prompt", "a fox", "--steps", "2", "--seed", "5", "--frames", "4"]
    out = tmp_path / "uni dir ü" / "s12 ö.gif"
    out.parent.mkdir()
    result = zoo("request", served.url, "--model", "animatediff", *args, "--out", out)
    assert result.exit_code == 0, result.output
    assert zoo("run", ad, *args, "--out", tmp_path / "run.gif").exit_code == 0
    assert out.read_bytes() == (tmp_path / "run.gif").read_bytes()
    video = tmp_path / "fü x.gif"
    video.write_bytes(out.read_bytes())
    again = tmp_path / "vidéo ä.gif"
    result = zoo("request", served.url, "--model", "animatediff", *args, "--video", video, "--out", again)
    assert result.exit_code == 0, result.output
    assert zoo("run", ad, *args, "--video", video, "--out", tmp_path / "run2.gif").exit_code == 0
    assert again.read_bytes() == (tmp_path / "run2.gif").read_bytes()
    bad = tmp_path / "kaputt ü.gif"
    bad.write_bytes(os.urandom(2000))
    result = zoo("request", served.url, "--model", "animatediff", *args, "--video", bad, "--out", tmp_path / "o é.gif")
    assert_error(result, str(bad))
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == [
        _run_line(ad, *args, "--video", bad, "--out", tmp_path / "o é.gif")
    ]


def test_frame_folders_with_names_the_server_cannot_write(tiny_export, tmp_path, monkeypatch):
    """Under the stub's ASCII file system encoding (simulated), a folder of frames with accented
    names is rebuilt under numbered names in zoo run's (natural) order: the same result as zoo run
    on the original folder; a refusal still names the client's frame."""
    from PIL import Image

    import runtimes.serving as serving

    rng = np.random.default_rng(4)
    Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(tmp_path / "réf.png")
    folders = {"pose": tmp_path / "pösé", "face": tmp_path / "gesicht ä"}
    for name, size in (("pose", (32, 48)), ("face", (16, 16))):
        folders[name].mkdir()
        for i in range(9):  # natural order: bild 5 before bild 10, which sorts first as text
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
                folders[name] / f"bild ü {i * 5}.png"
            )
    export = tiny_export("wan-animate")
    args = [
        "--image",
        tmp_path / "réf.png",
        "--pose-video",
        folders["pose"],
        "--face-video",
        folders["face"],
        "--steps",
        "2",
        "--segment-frames",
        "9",
        "--prev-frames",
        "1",
        "--height",
        "32",
        "--width",
        "48",
        "--seed",
        "2",
    ]
    assert zoo("run", export, *args, "--out", tmp_path / "run.npy").exit_code == 0
    files = {
        o: (str(p), Payload.read_media(p))
        for o, p in (("image", tmp_path / "réf.png"), ("pose_video", folders["pose"]), ("face_video", folders["face"]))
    }
    monkeypatch.setattr(serving, "_writable", lambda name: name.isascii())
    service = Service(export)
    try:
        options = {"steps": 2, "segment_frames": 9, "prev_frames": "1", "height": 32, "width": 48}
        result = service.run(Payload(options, seed=2, out_name="ergebnis ö.npy", files=files))
        assert result.files == [("ergebnis ö.npy", (tmp_path / "run.npy").read_bytes())]
        odd = dict(files["pose_video"][1])
        odd["bild ü 45.png"] = (tmp_path / "réf.png").read_bytes()  # 48x32 among 48x32: then one of another size
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "small.png")
        odd["bild ü 50.png"] = (tmp_path / "small.png").read_bytes()
        with pytest.raises(RequestError) as e:
            service.run(
                Payload(options, out_name="o.npy", files={**files, "pose_video": (files["pose_video"][0], odd)})
            )
    finally:
        service.close()
    assert "bild ü 50.png" in e.value.line and str(folders["pose"]) in e.value.line, e.value.line
    assert "000" not in e.value.line and "zoo-request" not in e.value.line


def test_a_fifo_is_refused_before_it_is_read(served, tiny_export, tmp_path):
    """zoo request and zoo run refuse a FIFO given as media at once (a reader would block)."""
    fifo = tmp_path / "clip.gif"
    os.mkfifo(fifo)
    results = {}

    def attempt():
        results["request"] = zoo(
            "request",
            served.url,
            "--model",
            "animatediff",
            "--prompt",
            "x",
            "--video",
            fifo,
            "--out",
            tmp_path / "o.gif",
        )
        results["run"] = zoo(
            "run", tiny_export("animatediff"), "--prompt", "x", "--video", fifo, "--out", tmp_path / "o.gif"
        )

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(120)
    if thread.is_alive():  # blocked on the FIFO: unblock it, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("a FIFO given as --video was opened and blocked")
    for result in results.values():
        assert_error(result, f"--video {fifo}: not a regular file or folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.gif"]


def test_serve_from_a_wheel_installed_outside_the_checkout(tiny_export, tmp_path):
    """Issue 20: zoo installed from a wheel (not editable) into a fresh virtual environment that
    borrows this one's dependencies through a .pth (CI cannot afford installing torch again), run
    from an unrelated folder with that environment not activated: the stubs import zoo from it."""
    import shutil
    import sysconfig

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for package in ("zoo", "exporters", "runtimes", "parity"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp_path / "dist", src],
        check=True,
        timeout=300,
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "borrowed.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )  # torch & co., not zoo (editable hook unused)
    wheel = next((tmp_path / "dist").glob("zoo-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", site, wheel], check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [python, "-c", "import zoo, runtimes.triton_model as m; print(zoo.__file__, m.__file__)"],
        cwd=elsewhere,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert all(Path(w).is_relative_to(site) for w in where), where
    unrelated = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not p.startswith(str(REPO)))
    env = {"PATH": unrelated, "VIRTUAL_ENV": "", "PYTHONPATH": ""}  # no virtual environment active
    server = start_server(tiny_export("pixart", "sigma"), python=str(python), cwd=elsewhere, tmpdir=tmp_path, env=env)
    try:
        result = stream_request(server.url, "pixart", Payload({"prompt": "a fox", "steps": 1}, out_name="x.png"))
        assert result.files[0][0] == "x.png"
    finally:
        assert server.stop() == 0
