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
from zoo.infra.options import FiniteFloat, click_option


class ZooGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # usage errors (exit 2) and --help (exit 0), reported by click itself
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


class WeightBudget(click.ParamType):
    """A weight-streaming budget: ``auto``, ``N%`` or a size such as ``8G`` (as trtexec writes it)."""

    name = "budget"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from exporters.tensorrt import parse_budget

        try:
            return parse_budget(value)
        except ZooError as e:
            self.fail(str(e).split(": ", 1)[-1], param, ctx)


class FamilyCommand(click.Command):
    """A command whose options depend on its first argument: the family named (``zoo export``),
    the family of the export folder named (``zoo run``) or of the server's model (``zoo request``).
    The family declares them; this class only turns them into click options."""

    def __init__(self, *args: Any, family_options: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.family_options = family_options

    def _first_argument(self, args: list[str]) -> str | None:
        """The first positional argument, skipping options and their values (an option this
        command does not know yet is taken to have a value when a non-option follows it)."""
        options = [p for p in self.params if isinstance(p, click.Option)]
        known = {o for p in options for o in p.opts}
        takes_value = {o for p in options if not p.is_flag for o in p.opts}
        i = 0
        while i < len(args):
            a = args[i]
            if a == "--":
                return args[i + 1] if i + 1 < len(args) else None
            if not a.startswith("-") or a == "-":
                return a
            guessed = a not in known and "=" not in a and i + 1 < len(args) and not args[i + 1].startswith("-")
            i += 2 if a in takes_value or guessed else 1
        return None

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        first = self._first_argument(args)
        extra: list[click.Parameter] = []
        if first is not None:
            try:
                extra = self.family_options(first, args)
            except ZooError:
                if "--help" not in args:
                    raise
        ctx.meta["zoo.family_params"] = extra
        return super().parse_args(ctx, args)

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        extra = ctx.meta.get("zoo.family_params", [])
        helps = [p for p in params if p.name == "help"]
        return [p for p in params if p.name != "help"] + extra + helps


def _quiet_libraries() -> None:
    """Errors only from diffusers / transformers / Polygraphy, without importing them (seconds each):
    the environment tells a library not yet imported, one already imported is told directly."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub: never try the network
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bars: ours say it
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "diffusers" in sys.modules:
        sys.modules["diffusers"].utils.logging.set_verbosity_error()
    if "transformers" in sys.modules:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    try:
        from polygraphy.logger import G_LOGGER  # (milliseconds: Polygraphy imports its backends lazily)

        G_LOGGER.module_severity = G_LOGGER.WARNING
    except ImportError:
        pass


@click.group(cls=ZooGroup)
@click.option("-v", "--verbose", is_flag=True, help="Log what each step does.")
def main(verbose: bool) -> None:
    """Model zoo for video and image diffusion models: export to ONNX, prove parity, generate."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
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
        click.echo(f"  sampler:    {'zoo run' if f.has_sampler else 'none (component family)'}")
        if f.source_roles:
            click.echo(f"  sources:    --model, {', '.join('--' + r.name.replace('_', '-') for r in f.source_roles)}")


def _export_options(family_name: str, args: list[str] = ()) -> list[click.Parameter]:
    """``zoo export FAMILY``'s family options: its envelope axes and its extra sources."""
    from zoo.registry import get_family

    fam = get_family(family_name)
    params: list[click.Parameter] = [
        click.Option([f"--{axis.replace('_', '-')}", axis], help=text) for axis, text in fam.axis_help.items()
    ]
    for role in fam.source_roles:
        flag = f"--{role.name.replace('_', '-')}"
        if role.kind == "lora":
            params.append(
                click.Option([flag, role.name], multiple=role.multiple, metavar="PATH[:SCALE]", help=role.help)
            )
        else:
            params.append(
                click.Option([flag, role.name], multiple=role.multiple, type=click.Path(path_type=Path), help=role.help)
            )
    return params


@main.command(cls=FamilyCommand, family_options=_export_options)
@click.argument("family")
@click.option("--model", type=click.Path(path_type=Path), help="Local checkpoint folder (diffusers format).")
@click.option("--tiny", is_flag=True, help="Build a tiny random-weight model locally (no download).")
@click.option("--random", "preset", help="Build a random-weight model of this preset (tiny, bench).")
@click.option("--variant", help="Variant of the random model (see `zoo families`).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Export folder to write.")
@click.option("--component", "components", multiple=True, help="Export only this component (repeatable).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of random weights.")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16"]),
    help="Dtype the graphs compute in, with each component's fp32 islands. Default: the checkpoint's own "
    "dtype for weightless components, fp32 otherwise.",
)
@click.option(
    "--weightless/--load-weights",
    default=None,
    help="Trace without loading the weights (meta device); the graphs point into the checkpoint's "
    "safetensors files. Default: weightless for components with more than 2 GiB of weights.",
)
@click.option(
    "--copy-weights",
    is_flag=True,
    help="With weightless export: copy the weights into the export (self-contained, for moving to another "
    "machine) instead of hard-linking the checkpoint files.",
)
@click.option(
    "--quantize",
    type=click.Choice(["int8", "fp8"]),
    help="Quantize the denoisers (the components that declare it, or those named with --component): Q/DQ "
    "graphs calibrated by running the family's own sampler on the reference (needs `pip install zoo[quantize]`).",
)
@click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    help="With --quantize: a text file of prompts (one per line), or a folder of requests (*.json, zoo run's "
    "options). Default: a built-in list of prompts.",
)
@click.option(
    "--calibration-size",
    type=int,
    help="With --quantize: how many calibration inputs to run (default: all of --calibration, or 16 built-in prompts).",
)
@click.option(
    "--calibration-steps",
    type=int,
    default=20,
    show_default=True,
    help="With --quantize: denoising steps per calibration input (the whole timestep range at that spacing).",
)
def export(
    family: str,
    model: Path | None,
    tiny: bool,
    preset: str | None,
    variant: str | None,
    out: Path,
    components: tuple[str, ...],
    seed: int,
    precision: str | None,
    weightless: bool | None,
    copy_weights: bool,
    quantize: str | None,
    calibration: Path | None,
    calibration_size: int | None,
    calibration_steps: int,
    **family_options: Any,
) -> None:
    """Export FAMILY's components to ONNX under --out, with manifest.json.

    `zoo export FAMILY --help` lists the family's envelope axes (MIN:OPT:MAX or N) and sources."""
    from exporters.onnx import check_export_target, export_family, random_reference
    from exporters.precision import PRECISIONS
    from zoo.contract import Range, Source
    from zoo.registry import get_family

    fam = get_family(family)
    if tiny:
        if preset not in (None, "tiny"):
            raise ZooError("--tiny and --random are the same choice: give one")
        preset = "tiny"
    # a family whose source roles alone make a reference (imported graphs given file by file)
    from_sources = (
        model is None
        and preset is None
        and not fam.model_required
        and any(family_options.get(r.name) for r in fam.source_roles)
    )
    if (model is None) == (preset is None) and not from_sources:
        if fam.model_required:
            raise ZooError("give exactly one of --model PATH (a local checkpoint folder) or --tiny / --random PRESET")
        roles = ", ".join("--" + r.name.replace("_", "-") for r in fam.source_roles)
        raise ZooError(
            f"give exactly one of --model PATH (a local checkpoint folder), its files ({roles}) or --tiny / --random PRESET"
        )
    if model is not None and variant is not None:
        raise ZooError(
            "--variant chooses a random model's variant; with --model the variant is read from the checkpoint"
        )
    if variant is not None and variant not in fam.variants:
        raise ZooError(f"family {family!r} has no variant {variant!r}; its variants are {', '.join(fam.variants)}")
    for c in components:
        fam.component(c)
    if copy_weights and weightless is False:
        raise click.UsageError("--copy-weights is for weightless export; --load-weights already writes the weights")
    quantize_request = None
    if quantize is not None:
        from exporters.quantize import check_quantize_options
        from runtimes.calibration import quantize_request as make_quantize_request

        check_quantize_options(
            fam, components or None, quantize, PRECISIONS[precision] if precision else None, weightless
        )
        quantize_request = make_quantize_request(fam, quantize, calibration, calibration_size, calibration_steps, 0)
    elif calibration is not None or calibration_size is not None:
        raise click.UsageError("--calibration and --calibration-size are for --quantize int8|fp8")
    check_export_target(out)  # before any model is built or loaded
    overrides = {
        axis: Range.parse(family_options.pop(axis), what=f"--{axis.replace('_', '-')}")
        for axis in fam.axis_help
        if family_options.get(axis) is not None
    }
    extra = _sources(fam, family_options)

    def run(ref) -> None:
        env = fam.envelope(ref, overrides)  # every axis checked before anything is traced
        click.echo(
            f"exporting {family} ({ref.variant}) to {out}: " + ", ".join(f"{k} {v}" for k, v in env.items()), err=True
        )
        manifest = export_family(
            fam,
            ref,
            env,
            out,
            carry_reference=preset is not None,  # a random reference travels with its export
            components=components or None,
            weightless=weightless,
            copy_weights=copy_weights,
            precision=PRECISIONS[precision] if precision else None,
            quantize=quantize_request,
        )
        total = linked = 0
        for name, record in manifest.components.items():
            own, link = record.size_on_disk - record.linked_bytes, record.linked_bytes
            total, linked = total + own, linked + link
            extra = f", {record.precision}" + (f", weights linked from the checkpoint: {_size(link)}" if link else "")
            if record.quantization is not None:
                q = record.quantization
                extra += (
                    f", {q['format']} Q/DQ on {q['layers']} layers ({len(q['high_precision'])} kept in high "
                    f"precision), calibrated on {q['calibration']['count']} inputs x {q['calibration']['steps']} "
                    f"steps in {q['calibration']['seconds']:.1f} s"
                )
            click.echo(f"  {name}: {out / record.file} ({_size(own)}{extra})")
            if record.imported is not None and "batch" in record.imported:  # an imported graph's batch decision
                click.echo(f"    {record.imported['batch']['why']}")
        click.echo(
            f"wrote {out / 'manifest.json'} ({_size(total)} in all"
            + (f", plus {_size(linked)} hard-linked from the checkpoint)" if linked else ")")
        )

    if model is not None:
        run(fam.load((Source("model", _random_model(model)), *extra)))
    elif from_sources:  # a family loaded from its source roles alone (imported graphs given file by file)
        run(fam.load(tuple(extra)))
    else:
        with random_reference(fam, variant=variant, preset=preset, seed=seed, extra=extra) as ref:
            run(ref)


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--component", "components", multiple=True, help="Build only this component (repeatable).")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16"]),
    help="Build the components exported in this precision (the graph carries it: a strongly typed engine "
    "computes what parity checked). A named --component in another precision is refused.",
)
@click.option(
    "--dim",
    "dims",
    multiple=True,
    metavar="NAME=MIN:OPT:MAX",
    help="Narrow a dim's profile inside the exported one (repeatable; `--dry-run` shows the dims).",
)
@click.option(
    "--workspace", type=FiniteFloat(0, None, low_open=True), metavar="GIB", help="Builder workspace limit in GiB."
)
@click.option("--refittable", is_flag=True, help="Build engines whose weights can be replaced (see --refit-from).")
@click.option(
    "--weight-streaming",
    is_flag=False,
    flag_value="auto",
    type=WeightBudget(),
    metavar="[BUDGET]",
    help="Build for weight streaming (models larger than device memory). BUDGET: device memory for "
    "weights at run time, auto (default), N% of the streamable weights, or a size such as 8G.",
)
@click.option(
    "--timing-cache",
    type=click.Path(path_type=Path, dir_okay=False),
    help="TensorRT timing cache to read and update (speeds up later builds).",
)
@click.option(
    "--refit-from",
    type=click.Path(path_type=Path),
    help="Another export of the same model with refittable engines: refit them with this export's weights "
    "(another LoRA or scale) instead of building.",
)
@click.option("--rebuild", is_flag=True, help="Build even where the cache holds a valid engine.")
@click.option("--device", default="cuda", show_default=True, help="The GPU to build for: cuda or cuda:N.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print each component's profile and trtexec line; build nothing (needs no TensorRT).",
)
def build(
    export_dir: Path,
    components: tuple[str, ...],
    precision: str | None,
    dims: tuple[str, ...],
    workspace: float | None,
    refittable: bool,
    weight_streaming: str | None,
    timing_cache: Path | None,
    refit_from: Path | None,
    rebuild: bool,
    device: str,
    dry_run: bool,
) -> None:
    """Build a TensorRT engine per component of EXPORT_DIR, cached under EXPORT_DIR/engines.

    One optimization profile per component from the manifest's dims; the cache key covers the
    graph and weights, precision, profile, flags, TensorRT version and GPU, so an unchanged export
    is not rebuilt. The sidecar engine.json holds the equivalent trtexec line."""
    import shlex
    from functools import partial

    from exporters import tensorrt as engines
    from exporters.manifest import load_manifest
    from exporters.onnx import check_artifact
    from zoo.errors import BackendUnavailableError, InputError

    # everything a build checks, a dry run checks too, before anything is read or written
    device = engines.check_device(device)
    engines.check_budget(weight_streaming)
    if timing_cache is not None and not timing_cache.parent.is_dir():
        raise InputError(
            f"--timing-cache {timing_cache}: its folder {timing_cache.parent} does not exist; create it or name "
            f"a file in an existing folder (the cache is written after the build)"
        )
    manifest = load_manifest(export_dir)
    options = engines.BuildOptions(workspace, refittable, weight_streaming is not None, weight_streaming, timing_cache)
    specs = engines.build_specs(manifest, components, precision, engines.parse_dims(dims), options)
    skipped = [c for c in manifest.components if c not in {s.component for s in specs}]
    if skipped and not components:
        click.echo(f"skipping {', '.join(skipped)}: not exported in {precision}", err=True)
    structures: dict[str, str] = {}
    other = None
    if refit_from is not None:
        if refittable or weight_streaming is not None or workspace is not None or dims or rebuild:
            raise click.UsageError(
                "--refit-from keeps the flags and profile of the engine it refits: drop --refittable, "
                "--weight-streaming, --workspace, --dim and --rebuild"
            )
        other = load_manifest(refit_from)
        structures = engines.check_refit_source(manifest, other, [s.component for s in specs])
    for spec in specs:
        check_artifact(manifest.root, spec.record)  # every graph whole before the first build (or line) is made
    if dry_run:
        for spec in specs:
            # the graph's dynamic dims, with the profile this build gives them (one point is still a profile)
            exported = spec.record.dims
            profile = ", ".join(
                f"{n} {d.min}:{d.opt}:{d.max}"
                for n, d in spec.dims.items()
                if exported[n].is_dynamic and not d.is_derived
            )
            click.echo(
                f"# {spec.component} ({spec.precision}, opset {spec.record.opset}: TensorRT "
                f"{engines.minimum_tensorrt(spec.record.opset)}+): {profile or 'static shapes'}"
            )
            click.echo(shlex.join(spec.trtexec(engines.engines_dir(manifest.root) / f"{spec.component}.plan")))
        return
    problem = engines.unavailable(device)
    if problem:
        raise BackendUnavailableError(
            f"zoo build needs TensorRT and an NVIDIA GPU: {problem} (`zoo build --dry-run` "
            f"prints the trtexec lines without them)"
        )
    target = engines.current_target(device)
    for spec in specs:
        engines.check_parser_opset(spec.record, target)  # every graph one this TensorRT documents, before any build
        engines.check_quantized_target(spec.record, target)  # an FP8 graph needs an FP8 GPU
    click.echo(f"building {len(specs)} engine(s) for {target.describe()}", err=True)
    for spec in specs:
        spec = engines.with_content(spec, manifest)
        if other is not None:
            entry, made = engines.refit_entry(
                spec, other, target, partial(engines.refit_plan, device=device), structures[spec.component]
            )
            how = f"refitted from {other.root} in {entry.sidecar['build']['seconds']:.1f} s" if made else "cached"
        else:
            entry, made = engines.get_or_build(
                spec, target, partial(engines.build_plan, device=device), rebuild=rebuild
            )
            how = f"built in {entry.sidecar['build']['seconds']:.1f} s" if made else "cached"
        memory = entry.sidecar["build"].get("device_memory_bytes")
        click.echo(
            f"  {spec.component}: {entry.plan} ({_size(entry.sidecar['plan']['size'])}, {how}"
            + (f", {_size(memory)} device memory" if memory else "")
            + ")"
        )


@main.command("random")
@click.argument("family")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder to write the checkpoint(s) into.")
@click.option("--preset", default="tiny", show_default=True, help="Random preset (see `zoo families`).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the random weights.")
def random_checkpoint(family: str, out: Path, preset: str, seed: int) -> None:
    """Write a random-weight checkpoint of FAMILY in the layout real checkpoints come in (a
    diffusers folder; for AnimateDiff a Stable Diffusion folder, a MotionAdapter and a motion
    LoRA), to try `zoo export --model ...` without downloading anything."""
    import shlex

    from exporters.artifacts import staged_dir
    from zoo.registry import get_family

    fam = get_family(family)
    fam.random_choice(None, preset)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ZooError(f"--out {out} exists and is not empty: choose a new or empty folder")
    with staged_dir(out) as stage:
        sources = fam.write_random_sources(stage, preset=preset, seed=seed)
        media = _write_media(fam.sample_media(fam.load(sources)), stage / "media") if fam.has_sample_media else []
    args = []
    for s in sources:
        path = out / Path(s.path).relative_to(stage)
        flag = "--" + s.role.replace("_", "-")
        args += [flag, str(path) + (f":{s.scale:g}" if s.scale is not None else "")]
        click.echo(f"wrote {s.role}: {path}")
    if media:
        click.echo(
            f"wrote media for `{'zoo pose' if fam.has_pose_step and not fam.has_sampler else 'zoo run'}`"
            f"{'' if fam.has_pose_step and not fam.has_sampler else ' at the default envelope'}: "
            f"{', '.join(str(out / p.relative_to(stage)) for p in media)}"
        )
    click.echo("export it with: zoo export " + shlex.join([family, *args, "--out", "OUT"]))


def _write_media(media: dict[str, Any], folder: Path) -> list[Path]:
    """A family's sample media as files: an image as PNG, frames as MP4 or a folder of PNG frames."""
    import numpy as np

    from runtimes.writers import write_video

    written = []
    for name, value in media.items():
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        if isinstance(value, list):
            write_video(np.stack([np.asarray(f, dtype=np.float32) / 255 for f in value])[None], path)
        else:
            value.save(path)
        written.append(path)
    return written


def _random_model(model: Path) -> Path:
    """``--model DIR`` where DIR is the folder `zoo random` wrote, whose model is ``DIR/model``: that."""
    from zoo.infra.checkpoint import RANDOM_MARKER

    inner = model / "model"
    if (inner / RANDOM_MARKER).is_file() and not (model / RANDOM_MARKER).exists():
        click.echo(f"using {inner}, the model folder `zoo random` wrote in {model}", err=True)
        return inner
    return model


def _sources(fam: Any, options: dict[str, Any]) -> list[Any]:
    """The family's extra sources from their options (LoRAs as PATH[:SCALE])."""
    from zoo.contract import Source
    from zoo.infra.lora import parse_lora

    sources = []
    for role in fam.source_roles:
        value = options.get(role.name)
        for item in (value or ()) if role.multiple else (() if value is None else (value,)):
            if role.kind == "lora":
                spec = parse_lora(item)
                sources.append(Source(role.name, spec.path, spec.scale))
            else:
                sources.append(Source(role.name, item))
    return sources


def _device(device: str | None, backend: str) -> str:
    """``--device``, by default where the backend runs: cuda for TensorRT engines, else cpu."""
    return device if device is not None else ("cuda" if backend == "tensorrt" else "cpu")


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _run_options(export_dir: str, args: list[str] = ()) -> list[click.Parameter]:
    """``zoo run DIR``'s request options: the ones the export's family declares."""
    from exporters.manifest import load_manifest
    from runtimes.sampler import sampler_family

    return [click_option(o) for o in sampler_family(load_manifest(Path(export_dir))).run_options]


@main.command(cls=FamilyCommand, family_options=_run_options)
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=click.IntRange(0, 2**63 - 1),
    help="Same meaning as generator=torch.Generator('cpu').manual_seed(S).",
)
@click.option(
    "--backend", default="onnxruntime", show_default=True, type=click.Choice(["onnxruntime", "torch", "tensorrt"])
)
@click.option("--device", help="cpu or cuda[:N]. Default: cuda for --backend tensorrt, else cpu.")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Image (.png, .npy) or video (.mp4, .gif, .npy, or a folder of PNG frames) to write.",
)
def run(export_dir: Path, seed: int, backend: str, device: str, out: Path, **options: Any) -> None:
    """Generate with an export folder through a backend; writes exactly the requested size.

    `zoo run DIR --help` lists the request options of the export's family."""
    from exporters.manifest import load_manifest
    from runtimes.sampler import Sampler, prepare_request
    from runtimes.writers import check_output_path, write_output

    device = _device(device, backend)
    manifest = load_manifest(export_dir)
    request = prepare_request(manifest, options)  # options, media and shapes checked here
    check_output_path(request.output_format, out)
    with Sampler(export_dir, backend=backend, device=device) as sampler:
        array = sampler(request, seed)
    for path in write_output(array, out, fps=request.fps):
        click.echo(f"wrote {path}")


def _pose_family(manifest: Any) -> Any:
    """The export's family, if it declares a pose step; :class:`ZooError` naming those that do if not."""
    from zoo.registry import family_names, get_family

    family = get_family(manifest.family)
    if not family.has_pose_step:
        having = [n for n in family_names() if get_family(n).has_pose_step]
        raise ZooError(
            f"family {family.name!r} has no pose step: `zoo pose` takes an export of "
            f"{', '.join(having) or 'a family that declares one'}"
        )
    return family


def _pose_options(export_dir: str, args: list[str] = ()) -> list[click.Parameter]:
    """``zoo pose DIR``'s input options: the ones the export's family declares for its pose step."""
    from exporters.manifest import load_manifest

    return [click_option(o) for o in _pose_family(load_manifest(Path(export_dir))).pose_options]


@main.command(cls=FamilyCommand, family_options=_pose_options)
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder to write the pose frames into: a new or empty one, or an earlier `zoo pose` output (replaced whole).",
)
@click.option("--backend", default="onnxruntime", show_default=True, type=click.Choice(["onnxruntime", "tensorrt"]))
@click.option("--device", help="cpu or cuda[:N]. Default: cuda for --backend tensorrt, else cpu.")
@click.option(
    "--keypoints",
    "keypoints_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the step's record here as JSON: every image's keypoints (unianimate-pose: raw and aligned, "
    "boxes; wan-animate-pose: source frame index, face box) and the warnings.",
)
def pose(
    export_dir: Path, out: Path, backend: str, device: str | None, keypoints_path: Path | None, **options: Any
) -> None:
    """Make pose conditions with an export of a family that has a pose step (unianimate-pose,
    wan-animate-pose): the driving video's frames as pose images (and face, background, mask
    frames) in --out, through the export's components.

    `zoo pose DIR --help` lists the inputs the export's family takes. A fallback where the original
    would crash or draw nonsense (a missing keypoint) is a `warning:` line on stderr."""
    from exporters.artifacts import atomic_write_json, staged_dir
    from exporters.manifest import load_manifest
    from runtimes.backends import Runners, parse_device
    from zoo.errors import ArtifactError, OutputError

    device = _device(device, backend)
    manifest = load_manifest(export_dir)
    fam = _pose_family(manifest)
    missing = [c.name for c in fam.components if c.name not in manifest.components]
    if missing:
        raise ArtifactError(
            f"export {export_dir} lacks component(s) {', '.join(missing)} that the pose step runs; "
            f"re-export without --component"
        )
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not fam.is_pose_output(out))):
        raise OutputError(f"--out {out} exists and is not a `zoo pose` output folder: choose a new or empty folder")
    if keypoints_path is not None and not keypoints_path.parent.is_dir():
        raise OutputError(f"--keypoints {keypoints_path}: {keypoints_path.parent} is not an existing folder")
    parse_device(device, backend)
    from runtimes.sampler import host_loaders

    step = fam.pose_step(options, host_loaders(manifest, device))  # inputs checked before any runtime
    from tqdm.auto import tqdm

    runners = Runners(backend, manifest, device)
    try:
        with tqdm(total=step.frames, desc="pose", unit="frame", leave=False) as bar, staged_dir(out) as stage:
            result = step(runners, stage, bar.update)
    finally:
        runners.close()
    for line in result.warnings:
        click.echo(f"warning: {line}", err=True)
    if keypoints_path is not None:
        atomic_write_json(keypoints_path, result.keypoints)
    names = result.files if len(result.files) <= 3 else (result.files[0], "...", *result.files[-2:])
    click.echo(f"wrote {out} ({len(result.files)} files: {' '.join(names)})")
    if keypoints_path is not None:
        click.echo(f"wrote {keypoints_path}")


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--backend", default="onnxruntime", show_default=True, type=click.Choice(["onnxruntime", "tensorrt"]))
@click.option("--device", help="cpu or cuda[:N]. Default: cuda for --backend tensorrt, else cpu.")
@click.option(
    "--json",
    "json_path",
    is_flag=False,
    flag_value="-",
    type=click.Path(path_type=Path),
    help="Also write the JSON report to FILE, or to stdout with a bare --json (it is always in EXPORT_DIR/parity.json).",
)
@click.option(
    "--no-end-to-end",
    is_flag=True,
    help="Components (and host loops) only: skip the trajectory and end-to-end runs (a NOT RUN row).",
)
@click.option(
    "--weights-only",
    is_flag=True,
    help="Only the initializer check of weightless components (no weights are loaded: for checkpoints "
    "too large to run here).",
)
def parity(
    export_dir: Path, backend: str, device: str, json_path: Path | None, no_end_to_end: bool, weights_only: bool
) -> None:
    """Compare every component at every profile corner, then the sampler end to end, against PyTorch.

    Weightless components first get the initializer check: every initializer is the checkpoint's
    tensor (the safetensors header places it at that byte range) or the recorded transformation
    of it (recomputed). A check that cannot run (a partial export's loops and sampler, a graph the
    runtime here has no kernels for, --no-end-to-end, --weights-only) is a NOT RUN row with the
    reason, never a pass.

    \b
    Exit status and last line:
      0  every check ran and passed       "N passed, 0 failed"
      2  a check failed (or bad input)    "parity failed: K of N ..."
      3  nothing failed, some did not run "passed what ran; K checks not run (...)"
                                          ("nothing ran: K checks not run (...)" when none ran)
    """
    from exporters.artifacts import atomic_write_json
    from exporters.manifest import load_manifest
    from parity.compare import run_parity
    from parity.report import EXIT_NOT_RUN, FAIL, exit_status, format_table, report_json, summary
    from zoo.errors import ParityError

    device = _device(device, backend)
    manifest = load_manifest(export_dir)
    if weights_only:
        from parity.compare import weights_only_row, weights_parity

        rows = weights_parity(export_dir)
        if not rows:
            raise ZooError(f"{export_dir} has no weightless component: there is no initializer check to run")
        rows.append(weights_only_row())
    else:
        rows = run_parity(export_dir, backend=backend, device=device, end_to_end=not no_end_to_end)
    report = report_json(rows, family=manifest.family, variant=manifest.variant, backend=backend, device=device)
    atomic_write_json(export_dir / "parity.json", report)
    if str(json_path) == "-":
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(format_table(rows))
        if json_path:
            atomic_write_json(json_path, report)
    failed = [r for r in rows if r.status == FAIL]
    if failed:
        raise ParityError(
            f"parity failed: {len(failed)} of {len(rows)} comparisons out of tolerance (see FAIL lines above)"
        )
    if str(json_path) == "-":
        click.echo(summary(rows), err=True)  # stdout holds the JSON; the verdict is still the last line
    if exit_status(rows) == EXIT_NOT_RUN:  # nothing failed, but not everything ran: not a pass
        sys.exit(EXIT_NOT_RUN)


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--backend", default="onnxruntime", show_default=True, type=click.Choice(["onnxruntime", "tensorrt"]))
@click.option("--device", help="cpu or cuda[:N]. Default: cuda for --backend tensorrt, else cpu.")
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(min=0))
@click.option("--iterations", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--component", "components", multiple=True, help="Time only this component (repeatable).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the results here as JSON.")
@click.option(
    "--against",
    type=click.Path(path_type=Path),
    help="Another export of the family (the fp32 export of a quantized one): its same components timed on the "
    "same backend and feeds, and the graphs' sizes, beside this export's.",
)
def bench(
    export_dir: Path,
    backend: str,
    device: str,
    warmup: int,
    iterations: int,
    components: tuple[str, ...],
    json_path: Path | None,
    against: Path | None,
) -> None:
    """Median latency per component at the opt shape: its reference (torch eager for a traced
    component, the given graph on ONNX Runtime CPU for an imported one) vs the backend, side by side."""
    from exporters.artifacts import atomic_write_json
    from runtimes.bench import bench as run_bench

    device = _device(device, backend)
    rows = run_bench(
        export_dir,
        backend=backend,
        device=device,
        warmup=warmup,
        iterations=iterations,
        components=components or None,
        against=against,
    )
    width = max([len(r.shape) for r in rows] + [5])
    head = f"{'component':<14} {'shape':<{width}} {'reference ms':>12} {backend + ' ms':>16} {'speedup':>8}"
    click.echo(head + (f" {'--against ms':>13} {'vs against':>10} {'size':>10} {'vs against':>10}" if against else ""))
    for r in rows:
        line = f"{r.component:<14} {r.shape:<{width}} {r.torch_ms:>12.2f} {r.backend_ms:>16.2f} {r.speedup:>7.2f}x"
        if r.against_ms is not None and r.size is not None and r.against_size:
            line += (
                f" {r.against_ms:>13.2f} {r.against_speedup:>9.2f}x {_size(r.size):>10} "
                f"{r.size / r.against_size:>9.2f}x"
            )
        click.echo(line)
    if json_path:
        atomic_write_json(
            json_path,
            {
                "export": str(export_dir),
                **({"against": str(against)} if against else {}),
                "rows": [{**r.to_json(), "against_speedup": r.against_speedup} for r in rows],
            },
        )


# --------------------------------------------------------------------------------------
# Serving: zoo triton, zoo serve, zoo request
# --------------------------------------------------------------------------------------


def _serve_options(f: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--backend",
                default="onnxruntime",
                show_default=True,
                type=click.Choice(["onnxruntime", "torch", "tensorrt"]),
            ),
            click.option("--device", help="cpu or cuda[:N]. Default: cuda for --backend tensorrt, else cpu."),
            click.option(
                "--instances",
                default=1,
                show_default=True,
                type=click.IntRange(min=1),
                help="Model instances (processes, each with its own backends) serving requests side by side.",
            ),
            click.option(
                "--max-queue",
                default=0,
                show_default=True,
                type=click.IntRange(min=0),
                help="Requests that may wait; more are refused (503). 0: no limit.",
            ),
            click.option(
                "--queue-timeout",
                default=0.0,
                show_default=True,
                type=FiniteFloat(0),
                help="Seconds a request may wait in the queue before it is refused (503). 0: no limit.",
            ),
        ]
    ):
        f = option(f)
    return f


def _serve_settings(backend: str, device: str | None, instances: int, max_queue: int, queue_timeout: float) -> Any:
    from runtimes.backends import parse_device
    from runtimes.triton import ServeOptions

    device = _device(device, backend)
    parse_device(device, backend)  # a backend that cannot run here says so before any server starts
    return ServeOptions(backend, device, instances, max_queue, queue_timeout)


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Model repository folder: written, or the model added to it (one folder per model).",
)
@click.option("--name", help="Model name. Default: the family's.")
@_serve_options
def triton(
    export_dir: Path,
    out: Path,
    name: str | None,
    backend: str,
    device: str | None,
    instances: int,
    max_queue: int,
    queue_timeout: float,
) -> None:
    """Write a Triton model repository that serves EXPORT_DIR's sampler or pose step (the deployment artifact).

    REPO/<model>/config.pbtxt and a Python-backend model over the export, hard-linked beside it.
    Run it with `zoo serve REPO`, or in NVIDIA's Triton container with zoo installed."""
    from runtimes.triton import repository_models, write_repository

    settings = _serve_settings(backend, device, instances, max_queue, queue_timeout)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not repository_models(out))):
        raise ZooError(f"--out {out} exists and is not a model repository: choose a new or empty folder")
    model = write_repository(export_dir, out, settings, name)
    click.echo(
        f"wrote {model} (serve it with `zoo serve {out}`, or `tritonserver --model-repository={out.resolve()}` "
        f"where zoo is installed)"
    )


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@_serve_options
@click.option("--http-port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--grpc-port", default=8001, show_default=True, type=click.IntRange(1, 65535))
@click.option("--metrics-port", default=8002, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--drain-timeout",
    default=30,
    show_default=True,
    type=click.IntRange(min=0),
    help="On SIGTERM / SIGINT: seconds to let in-flight and queued requests finish; what is left "
    "then is cancelled (its clients get a 503 'shutting down' line).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address the HTTP, gRPC and metrics ports listen on: 127.0.0.1 serves this machine only; "
    "0.0.0.0 (every interface) or one of its addresses serves the network, unauthenticated.",
)
@click.option(
    "--log",
    "log_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Append Triton's log here (default: a file in the server's temporary folder, removed at exit).",
)
def serve(
    path: Path,
    backend: str,
    device: str | None,
    instances: int,
    max_queue: int,
    queue_timeout: float,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    drain_timeout: int,
    host: str,
    log_path: Path | None,
) -> None:
    """Serve an export folder (or a repository written by `zoo triton`) with Triton Inference Server.

    Clients: `zoo request 127.0.0.1:GRPC_PORT ...`; health at http://127.0.0.1:HTTP_PORT/v2/health/ready,
    Prometheus metrics at http://127.0.0.1:METRICS_PORT/metrics. SIGTERM or Ctrl-C lets the requests
    in flight finish for up to --drain-timeout seconds, cancels what is left, and exits 0; a second
    one kills the server at once."""
    import errno
    import ipaddress
    import socket
    import time

    from exporters.artifacts import scratch_dir
    from runtimes.triton import (
        Ports,
        Server,
        client_host,
        find_tritonserver,
        repository_models,
        serve_forever,
        write_repository,
    )

    find_tritonserver()
    scratch = None
    export = (path / "manifest.json").is_file()
    if export:
        settings = _serve_settings(backend, device, instances, max_queue, queue_timeout)
    elif path.is_dir() and repository_models(path):
        ctx = click.get_current_context()
        given = [
            f"--{n.replace('_', '-')}"
            for n in ("backend", "device", "instances", "max_queue", "queue_timeout")
            if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE
        ]
        if given:
            raise click.UsageError(
                f"{', '.join(given)}: a repository's config.pbtxt already says this; write it again "
                f"with `zoo triton EXPORT --out {path} {given[0]} ...`"
            )
        repo = path
    else:
        raise ZooError(f"{path} is neither an export folder (manifest.json) nor a model repository (*/config.pbtxt)")
    ports = [http_port, grpc_port, metrics_port]
    if len(set(ports)) != 3:
        raise click.UsageError("--http-port, --grpc-port and --metrics-port must differ")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        socket.getaddrinfo(host, None, family)
    except (OSError, UnicodeError):
        raise click.BadParameter(
            f"{host!r} is not an address of this machine (e.g. 127.0.0.1, 0.0.0.0, ::1)", param_hint="'--host'"
        ) from None
    for port in ports:  # bound as the server binds (SO_REUSEADDR: closed connections do not count)
        for _attempt in range(20):  # a server killed a moment ago may still be letting go (2 s at most)
            with socket.socket(family) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((host, port))
                    break
                except OSError as e:
                    if e.errno == errno.EADDRNOTAVAIL:
                        raise click.BadParameter(
                            f"{host!r} is not an address of this machine", param_hint="'--host'"
                        ) from None
                    time.sleep(0.1)
        else:
            raise ZooError(f"port {port} is in use: choose another with --http-port / --grpc-port / --metrics-port")
    if export:
        scratch = scratch_dir("zoo-repo-")
        repo = scratch / "repository"
        try:
            write_repository(path, repo, settings, link_export=True)  # a link to the export: nothing copied
        except BaseException:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
            raise
    models = ", ".join(repository_models(repo))
    server = Server(repo, Ports(http_port, grpc_port, metrics_port), drain_timeout, log_path, host)
    at = client_host(host)
    at = f"[{at}]" if ":" in at else at
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"

    def ready(seconds: float) -> None:
        click.echo(f"ready in {seconds:.1f} s: serving {models}", err=True)
        click.echo(f"  gRPC    {at}:{grpc_port}   (zoo request {at}:{grpc_port} ...)", err=True)
        click.echo(f"  HTTP    http://{at}:{http_port}/v2/health/ready", err=True)
        click.echo(f"  metrics http://{at}:{metrics_port}/metrics", err=True)
        if not loopback:
            click.echo(
                f"  listening on {host}: anyone who reaches these ports can run requests (no authentication)", err=True
            )
        click.echo(
            f"  Triton's log: {server.log_path}" + ("" if log_path else " (removed at exit; keep it with --log FILE)"),
            err=True,
        )
        click.echo("Ctrl-C or SIGTERM drains and stops.", err=True)

    try:
        code = serve_forever(server, ready, lambda line: click.echo(line, err=True))
    finally:
        if scratch is not None:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
    if code:
        raise ZooError(
            f"tritonserver exited with code {code}" + (f" (see {log_path})" if log_path else " (run with --log FILE)")
        )


def _request_options(url: str, args: list[str] = ()) -> list[click.Parameter]:
    """``zoo request URL``'s request options: those of the served model's family (asked of the server)."""
    from runtimes.serving import request_options
    from runtimes.triton import model_family
    from zoo.registry import get_family

    args = list(args)
    model = next((a.split("=", 1)[1] for a in args if a.startswith("--model=")), None)
    if model is None and "--model" in args and args.index("--model") + 1 < len(args):
        model = args[args.index("--model") + 1]
    _, family = model_family(url, model)
    return [click_option(o) for o in request_options(get_family(family))]


@main.command("request", cls=FamilyCommand, family_options=_request_options)
@click.argument("url")
@click.option("--model", help="The served model. Default: the server's only one.")
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=click.IntRange(0, 2**63 - 1),
    help="Same meaning as generator=torch.Generator('cpu').manual_seed(S).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="What `zoo run --out` takes: an image (.png, .npy) or video (.mp4, .gif, .npy, or a folder of PNG frames); "
    "the pose folder for a model with a pose step.",
)
@click.option(
    "--array",
    "array_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the float array the pipeline returned (.npy).",
)
def request_command(url: str, model: str | None, seed: int, out: Path, array_path: Path | None, **options: Any) -> None:
    """Ask a `zoo serve` server (gRPC at URL, e.g. localhost:8001) for what `zoo run` makes; writes the same files.

    A model with a pose step answers what `zoo pose` writes: the pose folder at --out.
    `zoo request URL --help` lists the served family's request options."""
    from exporters.artifacts import atomic_write_bytes
    from runtimes.serving import Payload, request_options, runs_pose, safe_relative
    from runtimes.triton import ServerError, model_family, stream_request
    from zoo.registry import get_family

    model, family = model_family(url, model)
    served = get_family(family)
    media = {o.name for o in request_options(served) if o.type == "path"}
    desc = "pose" if runs_pose(served) else "sampling"
    files: dict[str, tuple[str, bytes]] = {}
    values: dict[str, Any] = {}
    for name, value in options.items():
        if value is None or value == ():
            continue
        if name in media:  # a missing path, a FIFO or a device refused before anything is read
            files[name] = (str(value), Payload.read_media(Path(value), f"--{name.replace('_', '-')}"))
        else:
            values[name] = list(value) if isinstance(value, tuple) else value
    if out.parent.exists() and not out.parent.is_dir():
        raise ZooError(f"--out {out}: expected a file path in a folder")
    bars: dict[int, Any] = {}

    def on_event(event: dict[str, Any]) -> None:
        from tqdm.auto import tqdm

        if event.get("type") == "warning":  # a pose step's fallback, printed as `zoo pose` prints it
            click.echo(f"warning: {event.get('line')}", err=True)
        if event.get("type") == "step":
            bar = bars.get(event["bar"])
            if bar is None:
                bar = bars[event["bar"]] = tqdm(total=event["total"], desc=f"{desc} ({model})", leave=False)
            bar.update(event["step"] - bar.n)

    payload = Payload(values, seed, str(out), files, return_array=array_path is not None)
    try:
        result = stream_request(url, model, payload, on_event)
    except ServerError as e:
        line = str(e) if e.status == 400 else f"error: the server refused the request ({e.status}): {e}"
        click.echo(line, err=True)
        sys.exit(2)
    finally:
        for bar in bars.values():
            bar.close()
    written: list[Path] = []
    for name, data in result.files:
        rel = safe_relative(name)
        atomic_write_bytes(out.parent / rel, data)
        top = out.parent / rel.parts[0]  # a folder of PNG frames is reported once, as `zoo run` does
        if top not in written:
            written.append(top)
    if array_path is not None and result.array is not None:
        import io

        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, result.array)
        atomic_write_bytes(array_path, buffer.getvalue())
        written.append(array_path)
    for path in written:
        click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
