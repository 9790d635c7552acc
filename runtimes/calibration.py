"""Calibration inputs for ``zoo export --quantize``, and the loop that runs the family's own sampler
over them on the torch reference while a quantizer watches the denoiser's activations.

The inputs are prompts (a built-in list by default, ``--calibration FILE.txt``: one per line) or,
for families whose requests need images and pose videos, ``--calibration DIR``: a folder of requests,
one JSON file each with ``zoo run``'s options (``{"prompt": ..., "image": "ref.png", ...}``, paths
relative to the folder). Each runs at the export's opt shape (the family's defaults) for
``--calibration-steps`` steps, so the calibration sees the whole timestep range, with seed
``seed + i`` for the i-th input: the same inputs give the same scales.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from exporters.manifest import Manifest
from exporters.quantize import QuantizeRequest, inputs_hash
from zoo.contract import Family, Reference, Request, RequestContext
from zoo.errors import InputError, ZooError

# Varied subjects, styles and compositions, as the calibration prompt sets of NVIDIA's diffusion
# quantization examples are (a sample of captions): enough spread for activation ranges.
BUILTIN_PROMPTS: tuple[str, ...] = (
    "a red fox running through fresh snow at dawn, detailed photo",
    "an astronaut riding a horse on the moon, digital art",
    "a bowl of ramen with steam rising, close-up food photography",
    "a lighthouse on a rocky coast during a storm, oil painting",
    "a busy street market in Marrakech at dusk, cinematic lighting",
    "a cat sleeping on a stack of old books, soft window light",
    "a futuristic city skyline with flying cars, neon, night",
    "a watercolor painting of cherry blossoms over a quiet river",
    "portrait of an elderly fisherman with a weathered face, black and white",
    "a macro photo of a dragonfly on a blade of grass with dew drops",
    "a cozy cabin in a pine forest under the northern lights",
    "a woman dancing in a flowing red dress, motion blur",
    "a vintage car parked in front of a diner, 1950s, kodachrome",
    "a surfer riding a huge wave, aerial drone shot",
    "an isometric illustration of a tiny island with a castle",
    "a golden retriever puppy playing with a ball in a garden",
)

DEFAULT_SIZE = 16
DEFAULT_STEPS = 20


@dataclass(frozen=True)
class CalibrationInputs:
    """What the calibration runs: option sets for the family's requests (``prompts``: built-in or
    from a text file; else requests read from a folder), and where they came from."""

    options: tuple[Mapping[str, Any], ...]
    source: str  # "built-in prompts" | the file or folder
    prompts_only: bool

    def describe(self, steps: int, seed: int) -> dict[str, Any]:
        return {
            "inputs": self.source,
            "count": len(self.options),
            "steps": steps,
            "seed": seed,
            "sha256": inputs_hash(self.options),
        }


def read_calibration(path: Path | None, size: int | None, family: Family) -> CalibrationInputs:
    """The first ``size`` calibration inputs (default: all of a given file or folder, or
    :data:`DEFAULT_SIZE` built-in prompts); :class:`InputError` naming what is wrong with the file."""
    if size is not None and size < 1:
        raise InputError(f"--calibration-size {size}: expected at least 1 input")
    if path is None:
        n = DEFAULT_SIZE if size is None else size
        if n > len(BUILTIN_PROMPTS):
            raise InputError(
                f"--calibration-size {n}: the built-in list has {len(BUILTIN_PROMPTS)} prompts; give more with "
                f"--calibration FILE (one prompt per line)"
            )
        return CalibrationInputs(tuple({"prompt": p} for p in BUILTIN_PROMPTS[:n]), "built-in prompts", True)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        options = tuple(_request_file(f, family) for f in files)
        what, prompts_only = "requests (*.json)", False
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(f"--calibration {path}: no such file or folder") from None
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"--calibration {path}: cannot be read as UTF-8 text ({type(e).__name__})") from None
        options = tuple({"prompt": line.strip()} for line in text.splitlines() if line.strip())
        what, prompts_only = "prompts (one per non-empty line)", True
    if not options:
        raise InputError(f"--calibration {path}: has no {what}")
    if size is not None and size > len(options):
        raise InputError(f"--calibration {path}: has {len(options)} {what}, fewer than --calibration-size {size}")
    return CalibrationInputs(options[: size or len(options)], str(path), prompts_only)


def _request_file(path: Path, family: Family) -> dict[str, Any]:
    """One request of a calibration folder: ``zoo run``'s options as JSON, checked as a request to
    ``zoo serve`` is; paths relative to the folder."""
    from runtimes.serving import parse_options

    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"--calibration {path}: not a JSON request ({type(e).__name__}: {e})") from None
    if not isinstance(values, dict):
        raise InputError(f"--calibration {path}: expected a JSON object of zoo run options")
    paths = {o.name for o in family.run_options if o.type == "path"}
    values = {k: str(path.parent / v) if k in paths and isinstance(v, str) else v for k, v in values.items()}
    try:
        options = parse_options(family.run_options, values, seed=False)
    except ZooError as e:
        raise InputError(f"--calibration {path}: {e}") from None
    return {k: v for k, v in options.items() if k in values}


def calibration_requests(
    family: Family, context: RequestContext, inputs: CalibrationInputs, steps: int
) -> list[Request]:
    """The requests of ``inputs`` at ``steps`` steps. A prompt for a family whose requests also
    need media (a reference image, a pose video) goes with the family's own parity request's media."""
    requests = []
    required = [o.name for o in family.run_options if o.required]
    for options in inputs.options:
        if not inputs.prompts_only:
            requests.append(family.request({**options, "steps": steps}, context))
            continue
        try:
            if any(name not in options for name in required):
                raise InputError(f"a prompt alone is not a request of {family.name}")
            requests.append(family.request({**options, "steps": steps}, context))
        except ZooError:  # the request needs media too: the family's own beside the prompt
            base = family.parity_requests(context)[0][1]
            kwargs = dict(base.kwargs)
            for key, value in (("prompt", options["prompt"]), ("num_inference_steps", steps)):
                if key in kwargs:
                    kwargs[key] = value
            requests.append(replace(base, kwargs=kwargs))
    return requests


def sampler_loop(
    family: Family, inputs: CalibrationInputs, steps: int, seed: int, *, progress: bool = True
) -> Callable[[Manifest, Reference], Callable[[Reference], None]]:
    """``QuantizeRequest.forward_loop``: given the staged export's manifest and the reference, the
    loop that runs the family's sampler over every calibration request on the torch backend, every
    component on the reference handed to it (the one holding the module being calibrated)."""
    from tqdm.auto import tqdm

    from runtimes.sampler import Sampler, request_context

    def make(manifest: Manifest, ref: Reference) -> Callable[[Reference], None]:
        requests = calibration_requests(family, request_context(manifest), inputs, steps)

        def loop(calibrating: Reference) -> None:
            with Sampler(manifest, backend="torch") as sampler:
                for backend in sampler.backends.values():
                    backend.use_reference(calibrating)  # type: ignore[attr-defined]  # torch backends
                for i, request in enumerate(tqdm(requests, desc="calibrate", unit="input", disable=not progress)):
                    sampler(request, seed + i, progress=False)

        return loop

    return make


def quantize_request(
    family: Family,
    fmt: str,
    path: Path | None,
    size: int | None,
    steps: int,
    seed: int,
    *,
    progress: bool = True,
) -> QuantizeRequest:
    """``zoo export --quantize``'s request: the inputs read and checked now, before anything loads."""
    if steps < 1:
        raise InputError(f"--calibration-steps {steps}: expected at least 1 step")
    inputs = read_calibration(path, size, family)
    return QuantizeRequest(
        fmt, sampler_loop(family, inputs, steps, seed, progress=progress), inputs.describe(steps, seed)
    )
