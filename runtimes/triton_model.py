"""The Triton Python-backend model of a repository written by ``zoo triton``.

One :class:`runtimes.serving.Service` per model instance (a process of its own), over the
export in the model version's folder. Each request is answered in the decoupled way: an
``accepted`` event once it passed every check, one event per denoising step, then the result
(the files ``zoo run`` writes and, when asked, the float array). A request that ``zoo run``
would refuse gets ``zoo run``'s line with INVALID_ARG (HTTP 400), before any backend runs; what
the server cannot do (an engine missing, a backend absent) gets ``error: server: ...`` with
INTERNAL (500), no server path in it; a bug gets a one-line INTERNAL error, its traceback going
to the server's log only. A client that
goes away cancels its request at the next step; the server carries on.

Every component loads at ``initialize``: a model whose graph cannot load is not ready, and the
reason (the file) is Triton's reason for it. When ``zoo serve``'s drain timeout ends, the file
named by ``$ZOO_SERVE_STOP`` appears: the running request ends at its next step and each one
left is refused, with ``error: server: shutting down ...`` (503). A stub whose server is gone
(the server was killed) removes its request folders and kills itself, even in mid-request.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from runtimes.serving import ARRAY, EVENT, FILES, MEDIA, NAMES, REQUEST, Payload, RequestError, Service, ServiceError


class _Cancelled(Exception):
    pass


class _Stopping(Exception):
    pass


SHUTTING_DOWN = (
    "error: server: shutting down: the server's drain timeout ended before this request finished; send it again"
)


def _watch_parent(parent: int, service: Service) -> None:  # pragma: no cover - runs in the stub
    """End this stub when its server is gone (reparented): Triton's own check exits only once a
    busy request ends, and a killed server must leave nothing running."""
    while os.getppid() == parent:
        time.sleep(0.5)
    for work in list(service.active):
        shutil.rmtree(work, ignore_errors=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _strings(values: list[bytes]) -> NDArray[Any]:
    out = np.empty((1, max(1, len(values))), dtype=object)  # object arrays keep trailing NUL bytes
    out[0, :] = values or [b""]
    return out


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb

        self.pb = pb
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        # resolved: a load error names the export's own files, not zoo serve's link to them
        export = (Path(args["model_repository"]) / args["model_version"] / params.get("export", "export")).resolve()
        self.stop_file = os.environ.get("ZOO_SERVE_STOP")
        self.service = Service(export, params.get("backend", "onnxruntime"), params.get("device", "cpu"), load=True)
        threading.Thread(
            target=_watch_parent, args=(os.getppid(), self.service), daemon=True, name="zoo-parent-watch"
        ).start()

    def _stopping(self) -> bool:
        return bool(self.stop_file and os.path.exists(self.stop_file))

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            self._answer(request)
        return None

    def _event(self, doc: dict[str, Any]) -> Any:
        return self.pb.Tensor(EVENT, _strings([json.dumps(doc).encode("utf-8")]))

    def _answer(self, request: Any) -> None:
        pb = self.pb
        sender = request.get_response_sender()
        final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL

        def on_event(doc: dict[str, Any]) -> None:
            if request.is_cancelled():
                raise _Cancelled
            if self._stopping():
                raise _Stopping
            sender.send(pb.InferenceResponse(output_tensors=[self._event(doc)]))

        try:
            if self._stopping():
                raise _Stopping
            media = pb.get_input_tensor_by_name(request, MEDIA)
            payload = Payload.decode(
                pb.get_input_tensor_by_name(request, REQUEST).as_numpy(), None if media is None else media.as_numpy()
            )
            result = self.service.run(payload, on_event)
            tensors = [
                self._event(
                    {
                        "type": "result",
                        "names": [n for n, _ in result.files],
                        "shape": None if result.array is None else list(result.array.shape),
                    }
                ),
                pb.Tensor(NAMES, _strings([n.encode("utf-8") for n, _ in result.files])),
                pb.Tensor(FILES, _strings([b for _, b in result.files])),
            ]
            if result.array is not None:
                tensors.append(pb.Tensor(ARRAY, result.array.astype(np.float32).reshape(1, -1)))
            sender.send(pb.InferenceResponse(output_tensors=tensors), flags=final)
        except _Cancelled:
            sender.send(flags=final)
        except _Stopping:
            sender.send(
                pb.InferenceResponse(error=pb.TritonError(SHUTTING_DOWN, pb.TritonError.UNAVAILABLE)), flags=final
            )
        except RequestError as e:
            sender.send(pb.InferenceResponse(error=pb.TritonError(e.line, pb.TritonError.INVALID_ARG)), flags=final)
        except ServiceError as e:  # the server's fault: a missing engine, an absent backend, a bad output
            pb.Logger.log_error(e.line)
            sender.send(pb.InferenceResponse(error=pb.TritonError(e.line, pb.TritonError.INTERNAL)), flags=final)
        except Exception as e:  # a bug: one line to the client, the traceback to the server's log
            pb.Logger.log_error(traceback.format_exc())
            sender.send(
                pb.InferenceResponse(
                    error=pb.TritonError(
                        f"error: internal error ({type(e).__name__}); the traceback is in the server's log",
                        pb.TritonError.INTERNAL,
                    )
                ),
                flags=final,
            )

    def finalize(self) -> None:
        self.service.close()
