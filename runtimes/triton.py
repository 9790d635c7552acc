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
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import logging

from exporters.artifacts import staged_dir
from runtimes.serving import ARRAY, EVENT, FILES, MEDIA, NAMES, REQUEST, Payload, Result
from zoo.errors import BackendUnavailableError, ZooError

log = logging.getLogger(__name__)

EXPORT = "export"  # the export's folder inside a model version
MODEL_PY = '''"""Triton Python-backend model written by `zoo triton`: zoo's sampler over the export in ./{export}.

The server's Python must have zoo installed (pip install zoo[serve] and its backends)."""

from runtimes.triton_model import TritonPythonModel  # noqa: F401
'''


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
    return "\n".join([
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
    ])


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


def write_repository(export_dir: Path, repo: Path, options: ServeOptions = ServeOptions(), name: str | None = None,
                     *, link_export: bool = False) -> Path:
    """Model ``name`` (the family's name by default) in the Triton repository ``repo``, serving the
    export's sampler; other models of the repository stay. The export is hard-linked into the
    model (a repository to move; files on another filesystem are copied, and said so), or with
    ``link_export`` is a symbolic link to it (``zoo serve``'s own repository beside a local export).
    The model's folder is staged and swapped in whole. Returns it."""
    from exporters.manifest import load_manifest
    from runtimes.backends import BACKENDS
    from runtimes.sampler import sampler_family

    manifest = load_manifest(export_dir)
    family = sampler_family(manifest)
    if options.backend not in BACKENDS:
        raise ZooError(f"unknown backend {options.backend!r}; choose one of {', '.join(BACKENDS)}")
    name = name or family.name
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise ZooError(f"--name {name!r}: a model name is letters, digits, '_', '.' and '-' (a folder of the repository)")
    with staged_dir(Path(repo) / name) as stage:
        version = stage / "1"
        version.mkdir(parents=True)
        (stage / "config.pbtxt").write_text(config_pbtxt(name, family.name, options))
        (version / "model.py").write_text(MODEL_PY.format(export=EXPORT))
        if link_export:
            (version / EXPORT).symlink_to(Path(export_dir).resolve(), target_is_directory=True)
        else:
            copied = _link_tree(Path(export_dir), version / EXPORT)
            if copied:
                log.warning("%s is on another filesystem than %s: %.1f MB were copied, not hard-linked",
                            export_dir, repo, copied / 1e6)
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
    raise BackendUnavailableError("serving needs NVIDIA's tritonserver with its Python backend: "
                                  "pip install -e '.[serve]' (nvidia-pytriton ships one), or set TRITON_SERVER_HOME")


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


def server_env() -> dict[str, str]:
    """The environment of the server and its Python stubs: this interpreter's libpython first
    (the stub links ``libpython3.X.so``; the system's own, under another interpreter such as
    pyenv's, fails on the newer stdlib), and this interpreter's packages and zoo on the path."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    import site

    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, *site.getsitepackages(), env.get("PYTHONPATH", "")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def scratch_dir(prefix: str) -> Path:
    """A temporary folder named after this process; those of processes that are gone (a kill -9)
    are removed first."""
    from exporters.artifacts import _pid_alive

    root = Path(tempfile.gettempdir())
    for old in root.glob(f"{prefix}*"):
        pid = old.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """The server dies with ``zoo serve`` (a kill -9 of it leaves no server holding the ports)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


def http_ready(port: int) -> bool:
    """Whether a Triton server answers ``/v2/health/ready`` on ``port`` (all its models loaded)."""
    try:
        with urllib.request.urlopen(f"http://localhost:{port}/v2/health/ready", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


class Server:
    """``tritonserver`` over a repository, as a child process that dies with this one. SIGTERM and
    SIGINT are passed on as SIGTERM: Triton stops taking requests and finishes the ones it holds
    (up to ``drain_timeout`` seconds) before it exits."""

    def __init__(self, repo: Path, ports: Ports = Ports(), drain_timeout: int = 30, log: Path | None = None) -> None:
        self.repo, self.ports, self.drain_timeout, self.log = Path(repo), ports, drain_timeout, log
        self.process: subprocess.Popen | None = None
        self._scratch: Path | None = None

    @property
    def url(self) -> str:
        return f"localhost:{self.ports.grpc}"

    def command(self, backends: Path, home: Path) -> list[str]:
        return [str(home / "bin" / "tritonserver"), f"--model-repository={self.repo}", f"--backend-directory={backends}",
                f"--http-port={self.ports.http}", f"--grpc-port={self.ports.grpc}", f"--metrics-port={self.ports.metrics}",
                "--allow-metrics=true", "--allow-gpu-metrics=false", f"--exit-timeout-secs={self.drain_timeout}",
                "--disable-auto-complete-config", "--log-verbose=0"]

    def start(self) -> Server:
        """Start ``tritonserver``; its log goes to ``log`` (appended), else to this process's stderr."""
        home = find_tritonserver()
        self._scratch = scratch_dir("zoo-serve-")
        try:
            backends = _backend_dir(home, self._scratch / "backends")
            out = open(self.log, "ab") if self.log else None
            try:
                self.process = subprocess.Popen(self.command(backends, home), env=server_env(),
                                                preexec_fn=_die_with_parent, start_new_session=True,
                                                stdout=out or sys.stderr, stderr=subprocess.STDOUT)
            finally:
                if out is not None:
                    out.close()
        except BaseException:
            shutil.rmtree(self._scratch, ignore_errors=True)
            raise
        return self

    def ready(self) -> bool:
        return http_ready(self.ports.http)

    def wait_ready(self, timeout: float = 120) -> float:
        """Seconds until ``/v2/health/ready``; :class:`ServerError` if the server exits or times out."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode} before it was ready"
                                  + (f" (see {self.log})" if self.log else ""), 500)
            if self.ready():
                return time.monotonic() - start
            time.sleep(0.1)
        raise ServerError(f"tritonserver was not ready after {timeout:.0f} s", 503)

    def stop(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> int:
        """Signal the server and wait for it (SIGKILL after the drain timeout and a margin)."""
        if self.process is None:
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout if timeout is not None else self.drain_timeout + 15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
        return self.process.returncode

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_forever(server: Server, on_ready: Callable[[float], None]) -> int:
    """Run ``server`` until it exits or this process gets SIGTERM / SIGINT (passed on as SIGTERM,
    so in-flight requests finish; a second signal kills it); its exit code, 0 after a signal."""
    stopping: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        stopping.append(signum)
        if server.process is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM if len(stopping) == 1 else signal.SIGKILL)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        if stopping:  # a signal came while the server was starting
            server.process.send_signal(signal.SIGTERM)
        try:
            on_ready(server.wait_ready())
        except ServerError:
            if not stopping:
                raise
        code = server.process.wait()
        return 0 if stopping and code in (0, -signal.SIGTERM) else code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        server.stop()


# --------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------

_STATUS = {"StatusCode.INVALID_ARGUMENT": 400, "StatusCode.UNAVAILABLE": 503, "StatusCode.NOT_FOUND": 404,
           "StatusCode.CANCELLED": 499, "StatusCode.DEADLINE_EXCEEDED": 504}


def _server_error(e: Any) -> ServerError:
    """The HTTP status of a refusal. Over a gRPC stream Triton sends only the message: the model's
    refusals are ``zoo run``'s lines (400; ``error: internal error`` is 500), Triton's own queue
    refusals (a full queue, an expired wait) are 503."""
    message = (e.message() or str(e)).strip()
    status = _STATUS.get(str(e.status()))
    if status is None:
        lower = message.lower()
        if lower.startswith(("error: internal error", "error: server:")):
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
            url = url[len(prefix):]
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
                raise ServerError(f"the server at {url} has {len(ready)} ready models ({', '.join(ready) or 'none'}): "
                                  f"name one with --model", 400)
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


def stream_request(url: str, model: str, payload: Payload, on_event: Callable[[dict[str, Any]], None] | None = None,
                   timeout: float = 3600) -> Result:
    """Send ``payload`` over gRPC streaming; ``on_event`` hears the step events; the result's files.
    A refusal is a :class:`ServerError` with the server's one line and the HTTP status."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    inputs = []
    for name, array in payload.encode().items():
        tensor = grpcclient.InferInput(name, list(array.shape), "BYTES")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    replies: queue.Queue = queue.Queue()
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
                    names = [bytes(n).decode() for n in result.as_numpy(NAMES).reshape(-1)]
                    blobs = [bytes(b) for b in result.as_numpy(FILES).reshape(-1)]
                    array = result.as_numpy(ARRAY)
                    shape = doc.get("shape")
                    return Result(list(zip(names, blobs)),
                                  None if array is None or shape is None else array.reshape(shape))
                if on_event is not None:
                    on_event(doc)
            if response.parameters.get("triton_final_response") and response.parameters["triton_final_response"].bool_param:
                finished = True
                raise ServerError("the server ended the request without a result", 500)
    except InferenceServerException as e:
        raise _server_error(e) from None
    finally:
        try:
            client.stop_stream(cancel_requests=not finished)
        finally:
            client.close()
