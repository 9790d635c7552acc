"""Quantized denoiser vs its fp32 graph on ONNX Runtime (this machine's CPU, or any):

1. a random checkpoint at the family's bench widths (the folder ``zoo export --random bench``
   builds), the denoiser rebuilt at ``--layers`` blocks when given (the bench presets have one or two);
2. the denoiser exported in fp32, then with ``--quantize FORMAT`` (calibrated through the family's
   own sampler on ``--size`` built-in prompts x ``--steps`` steps), each in its own process: wall
   time, peak RSS, the calibration's share;
3. ``zoo bench QUANTIZED --against FP32``: both graphs' median latency at the opt shape and their sizes.

Usage: python scripts/bench_quantize.py pixart --out /tmp/bq-pixart --layers 28 --config sample_size=64 \
           --config interpolation_scale=1 --height 512:512:512 --width 512:512:512
       python scripts/bench_quantize.py animatediff --out /tmp/bq-ad
       python scripts/bench_quantize.py wan-animate --out /tmp/bq-wan --layers 4
Prints one JSON object (also written to OUT/bench.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from zoo.registry import get_family


def run(args: list[str]) -> dict[str, float]:
    """One zoo command in its own process: wall seconds and peak RSS (MiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "zoo.cli", *args])
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: zoo {' '.join(args)}")
    return {"seconds": round(time.perf_counter() - start, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024)}


def deepen(folder: Path, layers: int | None, changes: dict[str, object]) -> None:
    """Rebuild the denoiser saved in ``folder`` (a diffusers model folder) with ``layers`` blocks and
    the config ``changes``, random weights (the library's own initialisation)."""
    import diffusers
    import torch

    config = json.loads((folder / "config.json").read_text())
    cls = getattr(diffusers, config["_class_name"])
    config = {k: v for k, v in config.items() if not k.startswith("_")} | changes
    if layers:
        config["num_layers"] = layers
    torch.manual_seed(0)
    model = cls.from_config(config)
    shutil.rmtree(folder)
    model.save_pretrained(folder)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("family")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--format", default="int8", choices=["int8", "fp8"])
    p.add_argument("--layers", type=int, help="denoiser blocks (default: the bench preset's)")
    p.add_argument("--size", type=int, default=2, help="calibration prompts")
    p.add_argument("--steps", type=int, default=4, help="calibration steps")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--config", action="append", default=[], metavar="KEY=JSON", help="denoiser config changes")
    a, axes = p.parse_known_args()  # the rest: zoo export's axis options (--height 512:512:512 ...)
    family = get_family(a.family)
    denoiser = next(c for c in family.components if c.quantize is not None)
    a.out.mkdir(parents=True, exist_ok=True)
    model = a.out / "checkpoint"
    if not model.exists():
        family.build_random(model, preset="bench")  # the folder `zoo export --model` loads
        changes = {k: json.loads(v) for k, v in (c.split("=", 1) for c in a.config)}
        if a.layers or changes:
            deepen(model / denoiser.module, a.layers, changes)
    common = ["export", a.family, "--model", str(model), "--component", denoiser.name, *axes]
    result: dict[str, object] = {"family": a.family, "component": denoiser.name, "format": a.format}
    fp32, quantized = a.out / "fp32", a.out / a.format
    for folder in (fp32, quantized):
        shutil.rmtree(folder, ignore_errors=True)
    result["export_fp32"] = run([*common, "--out", str(fp32)])
    calibration = ["--calibration-size", str(a.size), "--calibration-steps", str(a.steps)]
    result[f"export_{a.format}"] = run([*common, "--out", str(quantized), "--quantize", a.format, *calibration])
    record = json.loads((quantized / "manifest.json").read_text())["components"][denoiser.name]
    result["quantization"] = {k: record["quantization"][k] for k in ("layers", "calibration")}
    result["quantization"]["high_precision"] = len(record["quantization"]["high_precision"])
    bench_json = a.out / "bench-rows.json"
    result["bench_run"] = run(
        [
            "bench",
            str(quantized),
            "--against",
            str(fp32),
            "--component",
            denoiser.name,
            "--iterations",
            str(a.iterations),
            "--json",
            str(bench_json),
        ]
    )
    row = json.loads(bench_json.read_text())["rows"][0]
    result["bench"] = {
        "shape": row["shape"],
        "threads": row["threads"],
        "fp32_ms": round(row["against_ms"], 1),
        f"{a.format}_ms": round(row["backend_ms"], 1),
        "speedup": round(row["against_speedup"], 2),
        "fp32_bytes": row["against_size"],
        f"{a.format}_bytes": row["size"],
        "size_ratio": round(row["size"] / row["against_size"], 3),
        "torch_fp32_ms": round(row["torch_ms"], 1),
    }
    (a.out / "bench.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
