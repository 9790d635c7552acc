"""Writing generated images atomically: a failed or interrupted run leaves no partial file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from exporters.artifacts import atomic_write_bytes
from zoo.errors import OutputError


def write_images(images: np.ndarray, out: Path) -> list[Path]:
    """``images`` (N, H, W, 3) float in [0, 1], as the diffusers pipeline returns with
    ``output_type="np"``. ``.npy`` gets the whole float array; ``.png`` one file per image
    (``name.png``, or ``name-0.png``, ``name-1.png``, ... for several)."""
    from PIL import Image

    images = np.asarray(images)
    if not np.isfinite(images).all():
        raise OutputError(f"the generated images contain NaN or Inf values; nothing written to {out}")
    if out.suffix.lower() == ".npy":
        buf = io.BytesIO()
        np.save(buf, images)
        atomic_write_bytes(out, buf.getvalue())
        return [out]
    paths = [out] if len(images) == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(len(images))]
    encoded = []
    for image in images:  # encode all first: a failure leaves no file behind
        buf = io.BytesIO()
        # the pipeline's own numpy_to_pil rounding: (x * 255).round()
        Image.fromarray((image * 255).round().astype("uint8")).save(buf, format="PNG")
        encoded.append(buf.getvalue())
    for data, path in zip(encoded, paths):
        atomic_write_bytes(path, data)
    return paths
