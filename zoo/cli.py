"""The ``zoo`` command line: export, run, parity, bench.

It sits on top of every layer and imports them inside the commands, so ``zoo --help`` is fast
and a missing optional runtime only matters to the command that needs it. Every ZooError
becomes one line on stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from zoo.errors import ZooError

ENVELOPE_OPTIONS = ("batch", "height", "width", "frames", "text_length")


class ZooGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ZooError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except OSError as e:  # unwritable --out, full disk, ...
            click.echo(f"error: {e.strerror or e}{': ' + str(e.filename) if e.filename else ''}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing was written at the output path", err=True)
            sys.exit(130)
        except Exception as e:  # a bug, not bad input: one line, the traceback with -v
            if logging.getLogger().isEnabledFor(logging.INFO):
                raise
            click.echo(f"error: internal error ({type(e).__name__}: {e}); run `zoo -v ...` for the traceback", err=True)
            sys.exit(1)


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub: never try the network
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.set_verbosity_error()
        tlog.set_verbosity_error()
        from polygraphy.logger import G_LOGGER

        G_LOGGER.module_severity = G_LOGGER.WARNING
    except ImportError:
        pass


@click.group(cls=ZooGroup)
@click.option("-v", "--verbose", is_flag=True, help="Log what each step does.")
def main(verbose: bool) -> None:
    """Model zoo for video and image diffusion models: export to ONNX, prove parity, generate."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries()


@main.command()
def families() -> None:
    """List the families, their variants, components and random presets."""
    from zoo.registry import family_names, get_family

    for name in family_names():
        f = get_family(name)
        click.echo(f"{name}: {f.description}")
        click.echo(f"  variants:   {', '.join(f.variants)}")
        click.echo(f"  components: {', '.join(c.name for c in f.components)}")
        click.echo(f"  presets:    {', '.join(f.random_presets)} (random weights, --tiny = --random tiny)")
        click.echo(f"  sampler:    {'zoo run' if f.pipeline_slots else 'none (component family)'}")


@main.command()
@click.argument("family")
@click.option("--model", type=click.Path(path_type=Path), help="Local checkpoint folder (diffusers format).")
@click.option("--tiny", is_flag=True, help="Build a tiny random-weight model locally (no download).")
@click.option("--random", "preset", help="Build a random-weight model of this preset (tiny, bench).")
@click.option("--variant", help="Variant of the random model (see `zoo families`).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Export folder to write.")
@click.option("--batch", help="MIN:OPT:MAX images / videos per call.")
@click.option("--height", help="MIN:OPT:MAX height (pixels; feature-map rows for transformer-temporal).")
@click.option("--width", help="MIN:OPT:MAX width (pixels; feature-map columns for transformer-temporal).")
@click.option("--frames", help="MIN:OPT:MAX frames (video families).")
@click.option("--text-length", help="MIN:OPT:MAX text tokens (text-conditioned families).")
@click.option("--component", "components", multiple=True, help="Export only this component (repeatable).")
@click.option("--seed", default=0, show_default=True, help="Seed of random weights.")
def export(family: str, model: Path | None, tiny: bool, preset: str | None, variant: str | None, out: Path,
           components: tuple[str, ...], seed: int, **envelope: str | None) -> None:
    """Export FAMILY's components to ONNX under --out, with manifest.json."""
    from exporters.onnx import check_export_target, export_family, random_reference
    from zoo.contract import Range
    from zoo.registry import get_family

    fam = get_family(family)
    if tiny:
        if preset not in (None, "tiny"):
            raise ZooError("--tiny and --random are the same choice: give one")
        preset = "tiny"
    if (model is None) == (preset is None):
        raise ZooError("give exactly one of --model PATH (a local checkpoint folder) or --tiny / --random PRESET")
    if model is not None and variant is not None:
        raise ZooError("--variant chooses a random model's variant; with --model the variant is read from the checkpoint")
    if variant is not None and variant not in fam.variants:
        raise ZooError(f"family {family!r} has no variant {variant!r}; its variants are {', '.join(fam.variants)}")
    for c in components:
        fam.component(c)
    check_export_target(out)  # before any model is built or loaded
    overrides = {
        name: Range.parse(value, what=f"--{name.replace('_', '-')}") for name, value in envelope.items() if value is not None
    }

    def run(ref) -> None:
        env = fam.envelope(ref, overrides)  # every axis checked before anything is traced
        click.echo(f"exporting {family} ({ref.variant}) to {out}: " + ", ".join(f"{k} {v}" for k, v in env.items()), err=True)
        manifest = export_family(fam, ref, env, out, carry_reference=model is None, components=components or None)
        for name, record in manifest.components.items():
            click.echo(f"  {name}: {out / record.file} ({record.size / 1e6:.1f} MB)")
        click.echo(f"wrote {out / 'manifest.json'}")

    if model is not None:
        run(fam.load(model))
    else:
        with random_reference(fam, variant=variant, preset=preset, seed=seed) as ref:
            run(ref)


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--prompt", required=True, help="What to generate.")
@click.option("--negative-prompt", default="", help="What to steer away from (classifier-free guidance).")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(min=1), help="Denoising steps.")
@click.option("--guidance-scale", default=4.5, show_default=True, type=float, help="CFG scale (<= 1 disables CFG).")
@click.option("--height", type=int, help="Pixels; default: the export's opt height.")
@click.option("--width", type=int, help="Pixels; default: the export's opt width.")
@click.option("--batch", type=int, help="Images per prompt; default: the export's opt batch.")
@click.option("--max-sequence-length", type=int, help="Text tokens; default: the export's opt text length.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**63 - 1),
              help="Same meaning as generator=torch.Generator('cpu').manual_seed(S).")
@click.option("--backend", default="onnxruntime", show_default=True, type=click.Choice(["onnxruntime", "torch", "tensorrt"]))
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--resolution-binning", is_flag=True, help="Snap to the model's aspect-ratio bins, then resize back (opt-in).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Image to write: .png, or .npy for the float array.")
def run(export_dir: Path, prompt: str, negative_prompt: str, steps: int, guidance_scale: float, height: int | None,
        width: int | None, batch: int | None, max_sequence_length: int | None, seed: int, backend: str, device: str,
        resolution_binning: bool, out: Path) -> None:
    """Generate with an export folder through a backend; writes exactly the requested size."""
    import torch

    from exporters.manifest import load_manifest
    from runtimes.sampler import Sampler, check_request
    from runtimes.writers import write_images

    suffix = out.suffix.lower()
    if suffix not in (".png", ".npy"):
        raise ZooError(f"--out {out}: expected a .png or .npy file")
    if out.is_dir() or (out.parent.exists() and not out.parent.is_dir()):
        raise ZooError(f"--out {out}: expected a file path in a folder")
    manifest = load_manifest(export_dir)
    request = check_request(
        manifest,
        dict(prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=steps, guidance_scale=guidance_scale,
             height=height, width=width, num_images_per_prompt=batch, max_sequence_length=max_sequence_length,
             **({"use_resolution_binning": True} if resolution_binning else {})),
    )
    sampler = Sampler(export_dir, backend=backend, device=device)
    result = sampler(generator=torch.Generator("cpu").manual_seed(seed), output_type="np", **request)
    for path in write_images(result.images, out):
        click.echo(f"wrote {path}")


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--backend", default="onnxruntime", show_default=True, type=click.Choice(["onnxruntime", "tensorrt"]))
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--json", "json_path", is_flag=False, flag_value="-", type=click.Path(path_type=Path),
              help="Also write the JSON report to FILE, or to stdout with a bare --json (it is always in EXPORT_DIR/parity.json).")
@click.option("--no-end-to-end", is_flag=True, help="Components only: skip the trajectory and end-to-end runs.")
def parity(export_dir: Path, backend: str, device: str, json_path: Path | None, no_end_to_end: bool) -> None:
    """Compare every component at every profile corner, then the sampler end to end, against PyTorch."""
    from exporters.artifacts import atomic_write_json
    from exporters.manifest import load_manifest
    from parity.compare import run_parity
    from zoo.errors import ParityError
    from parity.report import format_table, report_json

    manifest = load_manifest(export_dir)
    rows = run_parity(export_dir, backend=backend, device=device, end_to_end=not no_end_to_end)
    report = report_json(rows, family=manifest.family, variant=manifest.variant, backend=backend, device=device)
    atomic_write_json(export_dir / "parity.json", report)
    if str(json_path) == "-":
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(format_table(rows))
        if json_path:
            atomic_write_json(json_path, report)
    failed = [r for r in rows if not r.ok]
    if failed:
        raise ParityError(f"parity failed: {len(failed)} of {len(rows)} comparisons out of tolerance (see FAIL lines above)")


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--backend", default="onnxruntime", show_default=True, type=click.Choice(["onnxruntime", "tensorrt"]))
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(min=0))
@click.option("--iterations", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the results here as JSON.")
def bench(export_dir: Path, backend: str, device: str, warmup: int, iterations: int, json_path: Path | None) -> None:
    """Median latency per component at the opt shape: torch eager vs the backend, side by side."""
    from exporters.artifacts import atomic_write_json
    from runtimes.bench import bench as run_bench

    rows = run_bench(export_dir, backend=backend, device=device, warmup=warmup, iterations=iterations)
    width = max([len(r.shape) for r in rows] + [5])
    click.echo(f"{'component':<14} {'shape':<{width}} {'torch ms':>10} {backend + ' ms':>16} {'speedup':>8}")
    for r in rows:
        click.echo(f"{r.component:<14} {r.shape:<{width}} {r.torch_ms:>10.2f} {r.backend_ms:>16.2f} {r.speedup:>7.2f}x")
    if json_path:
        atomic_write_json(json_path, {"export": str(export_dir), "rows": [r.to_json() for r in rows]})


if __name__ == "__main__":
    main()
