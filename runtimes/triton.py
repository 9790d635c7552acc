"""NVIDIA Triton Inference Server: a model repository that serves an export's sampler, the
bundled ``tritonserver`` that runs it, and the streaming client.

``zoo triton DIR --out REPO`` writes the deployment artifact: ``REPO/<family>/config.pbtxt``
(decoupled, a queue with its size and timeout, N instances) and ``REPO/<family>/1/model.py``, a
Python-backend model that imports :mod:`runtimes.triton_model` (zoo installed in the server's
Python), with the export hard-linked beside it. ``zoo serve`` writes the same repository and runs
it in the ``tritonserver`` that ``nvidia-pytriton`` bundles (or a system one), so what is tested
here is what is deployed. Only the server's binary is used: PyTriton's Python API is not.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporters.artifacts import pid_running, remove_dead_scratch, scratch_dir, staged_dir
from runtimes.serving import ARRAY, EVENT, FILES, MEDIA, NAMES, REQUEST, Payload, Result
from zoo.errors import BackendUnavailableError, ZooError

log = logging.getLogger(__name__)

EXPORT = "export"  # the export's folder inside a model version
PYTHON_ENV = "ZOO_SERVE_PYTHON"  # zoo serve's interpreter's module search path, for the stubs
STOP_ENV = "ZOO_SERVE_STOP"  # a file whose existence tells the models to cancel what is left (drain timeout)
MODEL_PY = '''"""Triton Python-backend model written by `zoo triton`: zoo's sampler over the export in ./{export}.

The Python backend's stub runs an embedded interpreter of its own. The stub that nvidia-pytriton
0.7 bundles (pybind11 2.10's isolated config) ignores PYTHONPATH and every PYTHON* variable, runs
in the C locale, and takes its sys.prefix from the first `python3` on PATH. `zoo serve` therefore
passes its own interpreter's module search path in ${python_env}, put first here before any import;
elsewhere (NVIDIA's container) the stub's own Python must have zoo installed."""

import json as _json
import os as _os
import site as _site
import sys as _sys

_env = _json.loads(_os.environ.get("{python_env}") or "{{}}")
_sys.path[:0] = [_p for _p in _env.get("path", []) if _p not in _sys.path]
for _d in _env.get("site", []):  # their .pth files too (editable installs, namespace packages)
    _site.addsitedir(_d)
for _stream in (_sys.stdout, _sys.stderr):  # the C locale would make them ASCII
    if hasattr(_stream, "reconfigure"):
        _stream.reconfigure(encoding="utf-8", errors="backslashreplace")

from runtimes.triton_model import TritonPythonModel  # noqa: E402,F401
'''


def python_env() -> str:
    """This interpreter's module search path and its site folders, as JSON: what the stub's
    interpreter puts first (see :data:`MODEL_PY`). The empty entry (``python -c``, an interactive
    session: "the current folder") is left out: the stub would put ``zoo serve``'s current folder
    first, where a ``runtimes/`` or a ``torch.py`` of the user's would shadow the real ones."""
    import site

    path = [os.path.abspath(p) for p in sys.path if p]  # a folder named explicitly, the current one included, stays
    user = [site.getusersitepackages()] if site.ENABLE_USER_SITE else []  # a venv's interpreter has none
    sites = [d for d in [*site.getsitepackages(), *user] if os.path.isdir(d)]
    return json.dumps({"path": list(dict.fromkeys(path)), "site": sites})


class ServerError(ZooError):
    """The server refused a request or could not be reached: ``status`` is the HTTP equivalent."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------------------
# The repository
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServeOptions:
    backend: str = "onnxruntime"
    device: str = "cpu"
    instances: int = 1
    max_queue: int = 0  # 0: unbounded
    queue_timeout: float = 0.0  # seconds a request may wait in the queue; 0: no limit


def config_pbtxt(name: str, family: str, options: ServeOptions) -> str:
    """The model's ``config.pbtxt``: decoupled (step events, then the result), one request per
    execution, the queue bounded as asked (a full queue or an expired wait is refused with
    UNAVAILABLE, HTTP 503), ``instances`` model processes."""
    policy = [f"max_queue_size: {options.max_queue}"]
    if options.queue_timeout > 0:
        policy += ["timeout_action: REJECT", f"default_timeout_microseconds: {int(options.queue_timeout * 1e6)}"]
    params = {"family": family, "backend": options.backend, "device": options.device, "export": EXPORT}
    return "\n".join(
        [
            f'name: "{name}"',
            'backend: "python"',
            "max_batch_size: 1",
            "input [",
            f'  {{ name: "{REQUEST}" data_type: TYPE_STRING dims: [ 1 ] }},',
            f'  {{ name: "{MEDIA}" data_type: TYPE_STRING dims: [ -1 ] optional: true }}',
            "]",
            "output [",
            f'  {{ name: "{EVENT}" data_type: TYPE_STRING dims: [ 1 ] }},',
            f'  {{ name: "{FILES}" data_type: TYPE_STRING dims: [ -1 ] }},',
            f'  {{ name: "{NAMES}" data_type: TYPE_STRING dims: [ -1 ] }},',
            f'  {{ name: "{ARRAY}" data_type: TYPE_FP32 dims: [ -1 ] }}',
            "]",
            "model_transaction_policy { decoupled: true }",
            "dynamic_batching {",
            "  max_queue_delay_microseconds: 0",
            "  default_queue_policy { " + " ".join(policy) + " }",
            "}",
            f"instance_group [ {{ count: {options.instances} kind: KIND_CPU }} ]",
            "parameters [",
            ",\n".join(f'  {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()),
            "]",
            "",
        ]
    )


def _link_tree(src: Path, dst: Path) -> int:
    """``src`` copied to ``dst`` with hard links where the filesystem allows; the bytes that had
    to be copied instead (another filesystem)."""
    copied = 0

    def link(s: str, d: str) -> None:
        nonlocal copied
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
            copied += os.path.getsize(d)

    shutil.copytree(src, dst, copy_function=link, symlinks=False)
    return copied


def write_repository(
    export_dir: Path,
    repo: Path,
    options: ServeOptions = ServeOptions(),
    name: str | None = None,
    *,
    link_export: bool = False,
) -> Path:
    """Model ``name`` (the family's name by default) in the Triton repository ``repo``, serving the
    export's sampler; other models of the repository stay. The export is hard-linked into the
    model (a repository to move; files on another filesystem are copied, and said so), or with
    ``link_export`` is a symbolic link to it (``zoo serve``'s own repository beside a local export).
    The model's folder is staged and swapped in whole. Returns it."""
    from exporters.manifest import load_manifest
    from runtimes.backends import BACKENDS
    from runtimes.serving import served_family

    manifest = load_manifest(export_dir)
    family = served_family(manifest)
    if options.backend not in BACKENDS:
        raise ZooError(f"unknown backend {options.backend!r}; choose one of {', '.join(BACKENDS)}")
    name = name or family.name
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise ZooError(
            f"--name {name!r}: a model name is letters, digits, '_', '.' and '-' (a folder of the repository)"
        )
    with staged_dir(Path(repo) / name) as stage:
        version = stage / "1"
        version.mkdir(parents=True)
        (stage / "config.pbtxt").write_text(config_pbtxt(name, family.name, options))
        (version / "model.py").write_text(MODEL_PY.format(export=EXPORT, python_env=PYTHON_ENV))
        if link_export:
            (version / EXPORT).symlink_to(Path(export_dir).resolve(), target_is_directory=True)
        else:
            copied = _link_tree(Path(export_dir), version / EXPORT)
            if copied:
                log.warning(
                    "%s is on another filesystem than %s: %.1f MB were copied, not hard-linked",
                    export_dir,
                    repo,
                    copied / 1e6,
                )
    return repo / name


def repository_models(repo: Path) -> list[str]:
    """The models of a repository written by ``zoo triton`` (folders with a config.pbtxt)."""
    return sorted(p.parent.name for p in Path(repo).glob("*/config.pbtxt"))


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


def find_tritonserver() -> Path:
    """The folder of a ``tritonserver`` with a Python backend: ``$TRITON_SERVER_HOME`` (NVIDIA's
    container has /opt/tritonserver), else the one ``nvidia-pytriton`` bundles."""
    import importlib.util

    candidates = [Path(os.environ["TRITON_SERVER_HOME"])] if os.environ.get("TRITON_SERVER_HOME") else []
    spec = importlib.util.find_spec("pytriton")
    if spec and spec.origin:
        candidates.append(Path(spec.origin).parent / "tritonserver")
    candidates.append(Path("/opt/tritonserver"))
    for home in candidates:
        if (home / "bin" / "tritonserver").is_file() and (home / "backends" / "python").is_dir():
            return home
    raise BackendUnavailableError(
        "serving needs NVIDIA's tritonserver with its Python backend: "
        "pip install -e '.[serve]' (nvidia-pytriton ships one), or set TRITON_SERVER_HOME"
    )


def _backend_dir(home: Path, into: Path) -> Path:
    """A backends folder whose Python backend has the stub for this interpreter's version (the
    bundled server keeps one stub per Python version aside)."""
    python = into / "python"
    python.mkdir(parents=True)
    for f in (home / "backends" / "python").iterdir():
        if f.is_file():
            (python / f.name).symlink_to(f)
    stub = python / "triton_python_backend_stub"
    if not stub.exists():
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        bundled = home / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not bundled.is_file():
            raise BackendUnavailableError(f"{home} has no Python backend stub for Python {version}")
        stub.symlink_to(bundled)
    return into


def _python_bin(into: Path) -> Path:
    """A folder whose ``python3`` is this interpreter. First on the stubs' PATH: the bundled stub's
    interpreter takes its prefix (hence its standard library) from the first ``python3`` on PATH,
    which must match the ``libpython`` it links (another version's stdlib fails to import)."""
    into.mkdir(parents=True)
    for name in ("python3", "python"):
        (into / name).symlink_to(sys.executable)
    return into


def server_env(scratch: Path) -> dict[str, str]:
    """The environment of the server and its Python stubs (see :data:`MODEL_PY`): this
    interpreter's libpython first (the stub links ``libpython3.X.so``; the system's own, under
    another interpreter such as pyenv's, fails on the newer stdlib), this interpreter as the
    ``python3`` on PATH, its module search path in :data:`PYTHON_ENV`, the drain-timeout flag in
    :data:`STOP_ENV`, and UTF-8 for stubs that read the environment (the bundled one does not:
    it runs in the C locale, so the service never puts a client's name into a server path)."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.pathsep.join(p for p in (str(_python_bin(scratch / "bin")), env.get("PATH", "")) if p)
    env[PYTHON_ENV] = python_env()
    env[STOP_ENV] = str(scratch / "stop")
    env.update(PYTHONUTF8="1", PYTHONIOENCODING="utf-8")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux; none known elsewhere)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return kids


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """The server dies with ``zoo serve`` (a kill -9 of it leaves no server holding the ports)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


LOOPBACK = "127.0.0.1"
GRACE = 10  # seconds a server has to stop once what was left is cancelled, before it is killed


def client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host``."""
    return {"0.0.0.0": LOOPBACK, "::": "::1", "": LOOPBACK}.get(host, host)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def http_ready(port: int, host: str = LOOPBACK) -> bool:
    """Whether a Triton server answers ``/v2/health/ready`` on ``port`` (all its models loaded)."""
    try:
        with urllib.request.urlopen(f"http://{_url_host(client_host(host))}:{port}/v2/health/ready", timeout=1) as r:
            ready: bool = r.status == 200
            return ready
    except OSError:
        return False


def model_failures(port: int, host: str = LOOPBACK) -> dict[str, str]:
    """The repository's models that failed to load, with Triton's reason (the exception's line)."""
    request = urllib.request.Request(
        f"http://{_url_host(client_host(host))}:{port}/v2/repository/index", data=b"{}", method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as r:
            index = json.loads(r.read())
    except (OSError, ValueError):
        return {}
    return {
        m.get("name", "?"): _reason(str(m["reason"]))
        for m in index
        if m.get("state") == "UNAVAILABLE" and m.get("reason")
    }


def _reason(reason: str) -> str:
    """Triton's reason for a model that failed to load, as the exception's own line."""
    reason = reason.split("\n\nAt:")[0].split("\\n\\nAt:")[0].strip()
    reason = re.sub(r"^(Internal|Invalid argument|Unavailable): ", "", reason)
    return re.sub(r"^[A-Za-z_.]*(Error|Exception): ", "", reason)


class Server:
    """``tritonserver`` over a repository, bound to ``host``, as a child process that dies with
    this one; its Python stubs are in its process group. Triton's log goes to ``log`` (appended),
    else to ``triton.log`` in the server's scratch folder (:attr:`log_path`)."""

    def __init__(
        self, repo: Path, ports: Ports = Ports(), drain_timeout: int = 30, log: Path | None = None, host: str = LOOPBACK
    ) -> None:
        self.repo, self.ports, self.drain_timeout, self.log, self.host = Path(repo), ports, drain_timeout, log, host
        self.process: subprocess.Popen[bytes] | None = None
        self._scratch: Path | None = None
        self._stubs: list[int] = []  # of a server killed

    @property
    def url(self) -> str:
        return f"{_url_host(client_host(self.host))}:{self.ports.grpc}"

    @property
    def log_path(self) -> Path | None:
        return self.log if self.log is not None else self._scratch / "triton.log" if self._scratch else None

    def command(self, backends: Path, home: Path) -> list[str]:
        # Triton's own exit timeout is a backstop: the drain timeout is enforced by cancelling (cancel_left)
        return [
            str(home / "bin" / "tritonserver"),
            f"--model-repository={self.repo.resolve()}",
            f"--backend-directory={backends}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self.ports.http}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-port={self.ports.metrics}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            f"--exit-timeout-secs={self.drain_timeout + GRACE}",
            "--disable-auto-complete-config",
            "--log-verbose=0",
        ]

    def start(self) -> Server:
        """Start ``tritonserver`` (in its scratch folder: nothing is imported from the current one)."""
        home = find_tritonserver()
        remove_dead_scratch("zoo-request-")  # left by the stubs of a server that was killed
        self._scratch = scratch_dir("zoo-serve-")
        try:
            backends = _backend_dir(home, self._scratch / "backends")
            env = server_env(self._scratch)
            log_path = self.log_path
            assert log_path is not None  # the scratch folder is set
            with open(log_path, "ab") as out:
                self.process = subprocess.Popen(
                    self.command(backends, home),
                    env=env,
                    cwd=self._scratch,
                    preexec_fn=_die_with_parent,
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
        except BaseException:
            shutil.rmtree(self._scratch, ignore_errors=True)
            raise
        return self

    def ready(self) -> bool:
        return http_ready(self.ports.http, self.host)

    def wait_ready(self, timeout: float = 120) -> float:
        """Seconds until ``/v2/health/ready``; :class:`ServerError` if the server exits, a model
        fails to load (Triton's reason: the file that is corrupt, the module that is missing), or
        it times out."""
        start = time.monotonic()
        see = f" (Triton's log: {self.log})" if self.log else ""
        while time.monotonic() - start < timeout:
            if self.process is not None and self.process.poll() is not None:
                failed = self._log_failures()
                raise ServerError(
                    f"tritonserver exited with code {self.process.returncode} before it was ready"
                    + (f": {failed}" if failed else "")
                    + see,
                    500,
                )
            if self.ready():
                return time.monotonic() - start
            failures = model_failures(self.ports.http, self.host)
            if failures:
                raise ServerError(
                    "; ".join(f"model {m!r} cannot load: {r}" for m, r in sorted(failures.items())) + see, 500
                )
            time.sleep(0.1)
        raise ServerError(f"tritonserver was not ready after {timeout:.0f} s" + see, 503)

    def _log_failures(self) -> str:
        """Why the server exited, from its log: the models that failed to load and their reasons,
        else its last error line."""
        log_path = self.log_path
        if log_path is None:  # never started
            return ""
        try:
            lines = log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        errors = [line.split("] ", 1)[-1].strip('"') for line in lines if line.startswith("E")]
        matches = [re.match(r"failed to load '([^']*)' version \d+: (.*)", e) for e in errors]
        failed = [f"model {m.group(1)!r} cannot load: {_reason(m.group(2))}" for m in matches if m]
        if failed:
            return "; ".join(dict.fromkeys(failed))
        return errors[-1].split("\\n")[0] if errors else ""

    def _exited(self, timeout: float) -> bool:
        """Whether the server exited within ``timeout`` s, left unreaped (its pid, its process
        group's id, cannot be reused until it is)."""
        assert self.process is not None  # started
        pid = self.process.pid
        deadline = time.monotonic() + timeout
        while True:
            try:
                if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    return True
            except ChildProcessError:  # reaped already
                return True
            except InterruptedError:
                pass
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def cancel_left(self) -> None:
        """Tell the models to cancel what is left: each running request ends at its next step and
        every queued one is refused, with ``error: server: shutting down ...`` (503)."""
        if self._scratch is not None:
            (self._scratch / "stop").touch()

    def kill_group(self) -> None:
        """SIGKILL the server and its process group (its Python stubs), remembering the stubs
        (safe in a signal handler: the server is not reaped here)."""
        if self.process is None or self.process.returncode is not None:
            return
        self._stubs += _children(self.process.pid)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """:meth:`kill_group`, then reap the server; returns once its stubs are dead too (5 s at most)."""
        if self.process is None:
            return
        self.kill_group()
        self.process.wait()
        deadline = time.monotonic() + 5
        while any(pid_running(p) for p in self._stubs) and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the server; after the drain timeout cancel what is left, after a grace kill it
        and its stubs. Its exit code (-9 where it had to be killed)."""
        if self.process is None:
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
            if not self._exited(self.drain_timeout):
                self.cancel_left()
                self._exited(GRACE)
        self.finish()
        return self.process.returncode

    def finish(self) -> None:
        """After the server exited (or to end it now): no stub of it left, its scratch folder and
        the request folders of its stubs removed."""
        if self.process is not None:
            self.kill()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
        remove_dead_scratch("zoo-request-")

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_forever(
    server: Server, on_ready: Callable[[float], None], say: Callable[[str], None] = lambda line: None
) -> int:
    """Run ``server`` until it exits or this process gets SIGTERM / SIGINT. A first signal is
    passed on as SIGTERM: no new requests, the ones held finish; at ``drain_timeout`` what is left
    is cancelled (its clients get a 503 ``shutting down`` line) and the server exits by itself; a
    second signal kills it and its stubs at once. ``say`` hears what happens. The server's exit
    code, 0 after a signal."""
    signals: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        signals.append(signum)
        if server.process is None or server.process.returncode is not None:
            return
        if len(signals) == 1:
            server.process.send_signal(signal.SIGTERM)
        else:
            server.kill_group()

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        process = server.process
        assert process is not None  # start() set it, or raised
        if signals:  # a signal came while the server was starting
            process.send_signal(signal.SIGTERM)
        try:
            on_ready(server.wait_ready())
        except ServerError:
            if not signals:
                raise
        deadline = None
        cancelled = False
        while not server._exited(0.1):
            now = time.monotonic()
            if signals and deadline is None:
                deadline = now + server.drain_timeout
                say(f"draining: no new requests; the ones held have {server.drain_timeout} s to finish")
            if deadline is not None and now >= deadline and not cancelled:
                cancelled = True
                server.cancel_left()
                say(f"drain timeout ({server.drain_timeout} s): cancelling the requests left")
            if cancelled and deadline is not None and now >= deadline + GRACE:
                say(f"the server did not stop {GRACE} s after the drain timeout: killed")
                break
        code = process.poll()
        if code is None or len(signals) > 1:
            server.kill()
            say("killed" + (" (second signal): requests in flight were dropped" if len(signals) > 1 else ""))
            return 0 if signals else process.returncode
        if signals and code in (0, -signal.SIGTERM):
            say("drained and stopped" if not cancelled else "stopped")
            return 0
        return code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        server.finish()


# --------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------

_STATUS = {
    "StatusCode.INVALID_ARGUMENT": 400,
    "StatusCode.UNAVAILABLE": 503,
    "StatusCode.NOT_FOUND": 404,
    "StatusCode.CANCELLED": 499,
    "StatusCode.DEADLINE_EXCEEDED": 504,
}


def _server_error(e: Any) -> ServerError:
    """The HTTP status of a refusal. Over a gRPC stream Triton sends only the message: the model's
    refusals are ``zoo run``'s lines (400; ``error: internal error`` is 500), Triton's own queue
    refusals (a full queue, an expired wait) are 503."""
    message = (e.message() or str(e)).strip()
    status = _STATUS.get(str(e.status()))
    if status is None:
        lower = message.lower()
        if lower.startswith("error: server: shutting down"):  # the drain timeout ended: ask again elsewhere
            status = 503
        elif lower.startswith(("error: internal error", "error: server:")):
            status = 500
        elif lower.startswith("error:"):
            status = 400
        elif "queue" in lower or "timeout" in lower or "timed out" in lower:
            status = 503
        else:
            status = 500
    return ServerError(message, status)


def grpc_url(url: str) -> str:
    for prefix in ("grpc://", "http://"):
        if url.startswith(prefix):
            url = url[len(prefix) :]
    return url.rstrip("/")


def model_family(url: str, model: str | None) -> tuple[str, str]:
    """The model to ask (``model``, or the server's only ready one) and its family."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(grpc_url(url))
    try:
        if model is None:
            index = client.get_model_repository_index(as_json=True).get("models", [])
            ready = [m["name"] for m in index if m.get("state") == "READY"]
            if len(ready) != 1:
                raise ServerError(
                    f"the server at {url} has {len(ready)} ready models ({', '.join(ready) or 'none'}): "
                    f"name one with --model",
                    400,
                )
            model = ready[0]
        config = client.get_model_config(model, as_json=True)["config"]
    except InferenceServerException as e:
        raise ServerError(f"the server at {url}: {_server_error(e)}", _server_error(e).status) from None
    finally:
        client.close()
    family = config.get("parameters", {}).get("family", {}).get("string_value")
    if not family:
        raise ServerError(f"model {model!r} at {url} is not a zoo model (no family parameter)", 400)
    return model, family


def stream_request(
    url: str,
    model: str,
    payload: Payload,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    timeout: float = 3600,
) -> Result:
    """Send ``payload`` over gRPC streaming; ``on_event`` hears the step events; the result's files.
    A refusal is a :class:`ServerError` with the server's one line and the HTTP status."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    inputs = []
    for name, array in payload.encode().items():
        tensor = grpcclient.InferInput(name, list(array.shape), "BYTES")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    replies: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(grpc_url(url))
    finished = False  # the server ended the request (a result or a refusal): nothing to cancel
    try:
        client.start_stream(callback=lambda result, error: replies.put((result, error)))
        client.async_stream_infer(model, inputs, enable_empty_final_response=True)
        while True:
            try:
                result, error = replies.get(timeout=timeout)
            except queue.Empty:
                raise ServerError(f"no answer from {url} in {timeout:.0f} s", 504) from None
            if error is not None:
                finished = True
                raise _server_error(error)
            response = result.get_response()
            event = result.as_numpy(EVENT)
            if event is not None:
                doc = json.loads(bytes(event.reshape(-1)[0]))
                if doc.get("type") == "result":
                    finished = True
                    names = [bytes(n).decode("utf-8") for n in result.as_numpy(NAMES).reshape(-1)]
                    blobs = [bytes(b) for b in result.as_numpy(FILES).reshape(-1)]
                    array = result.as_numpy(ARRAY)
                    shape = doc.get("shape")
                    return Result(
                        list(zip(names, blobs)), None if array is None or shape is None else array.reshape(shape)
                    )
                if on_event is not None:
                    on_event(doc)
            if (
                response.parameters.get("triton_final_response")
                and response.parameters["triton_final_response"].bool_param
            ):
                finished = True
                raise ServerError("the server ended the request without a result", 500)
    except InferenceServerException as e:
        raise _server_error(e) from None
    finally:
        try:
            client.stop_stream(cancel_requests=not finished)
        finally:
            client.close()
