"""Tensors and components: what a component's inputs and outputs are (dtype, dims, how a sample
fills them, what values they take), its precision policy, its tolerance class, and the tensors
a family rounds on purpose."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from zoo.contract.dims import Dim, Envelope
from zoo.errors import CheckpointError

if TYPE_CHECKING:
    from zoo.contract.sources import Reference

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}


SampleFn = Callable[[tuple[int, ...], torch.Generator, "Reference"], torch.Tensor]


@dataclass(frozen=True)
class TensorSpec:
    """A named input or output: dtype and shape, each dim an int or a symbolic dim name.

    ``sample`` says how the sample-input factory fills it: ``"normal"`` (standard normal),
    ``"mask"`` (1 then trailing 0 padding per row, like a tokenizer mask), ``"timestep"``
    (integer-valued timesteps in [0, 1000)), ``"uniform"`` ([0, 1)), ``"pixels"`` ([-1, 1), images as
    the pipelines feed them), or a callable.

    ``value_range`` is the ``(low, high)`` range the tensor's values are meant to span, where the
    tensor has one by construction (a decoded image: ``(-1, 1)``): parity measures PSNR over
    ``high - low`` for it. None (caches, latents, embeddings): PSNR over the reference's own
    span of values.
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    sample: str | SampleFn = "normal"
    value_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.value_range is not None and not self.value_range[0] < self.value_range[1]:
            raise TypeError(f"TensorSpec {self.name}: value_range must be (low, high) with low < high")

    @property
    def data_range(self) -> float | None:
        """``high - low`` of :attr:`value_range` (None without one)."""
        return None if self.value_range is None else self.value_range[1] - self.value_range[0]

    def resolve(self, point: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else int(point[d]) for d in self.shape)


def make_sample(spec: TensorSpec, shape: tuple[int, ...], gen: torch.Generator, ref: Reference) -> torch.Tensor:
    """One sample tensor for ``spec`` at concrete ``shape`` (seeded by ``gen``)."""
    dtype = DTYPES[spec.dtype]
    if callable(spec.sample):
        return spec.sample(shape, gen, ref).to(dtype)
    if spec.sample == "normal":
        return torch.randn(shape, generator=gen).to(dtype)
    if spec.sample == "uniform":
        return torch.rand(shape, generator=gen).to(dtype)
    if spec.sample == "pixels":
        return (torch.rand(shape, generator=gen) * 2 - 1).to(dtype)
    if spec.sample == "timestep":
        return torch.randint(0, 1000, shape, generator=gen).to(dtype)
    if spec.sample == "mask":
        # rows of 1s followed by 0 padding; every row keeps at least one token
        length = shape[-1]
        keep = torch.randint(1, length + 1, shape[:-1] + (1,), generator=gen)
        return (torch.arange(length).expand(shape) < keep).to(dtype)
    raise ValueError(f"{spec.name}: unknown sample kind {spec.sample!r}")


def token_ids(shape: tuple[int, ...], gen: torch.Generator, ref: Reference) -> torch.Tensor:
    """Sample token ids for a text encoder (the reference's ``text_encoder`` vocabulary)."""
    return torch.randint(0, ref.config("text_encoder").vocab_size, shape, generator=gen)


@dataclass(frozen=True)
class Precision:
    """Precision policy of a component: the export dtype, and what must stay fp32."""

    dtype: str = "float32"
    keep_fp32: tuple[str, ...] = ()


Specs = tuple[TensorSpec, ...]


SpecsFn = Callable[["Reference"], Specs]

DimsFn = Callable[[Envelope, "Reference"], dict[str, Dim]]  # a component's dims at an envelope


@dataclass(frozen=True)
class Transform:
    """A weight the graph holds that the checkpoint does not store as such (a fused LoRA, a QR
    basis): ``fn(read)`` computes it from stored tensors, ``read(key)`` reading one at a time by the
    module's state-dict key."""

    what: str  # shown in the weight map, e.g. "W + 0.8 * B @ A (LoRA motion.safetensors)"
    fn: Callable[[Callable[[str], torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class WeightlessModule:
    """How to build a module without its weights: ``build()`` makes it with parameters on the
    meta device and buffers computed from the config (accelerate's ``init_empty_weights``);
    its state-dict keys are the keys of the safetensors files in ``folders``, except the
    ``transforms`` (state-dict key -> how the value is computed from stored tensors)."""

    build: Callable[[], torch.nn.Module]
    folders: tuple[Path, ...]
    transforms: Mapping[str, Transform] = field(default_factory=dict)
    # stored keys -> {module key: stored key}, where the library renames keys at load time
    # (transformers 5's conversion mapping); None: the stored keys are the module's
    rename: Callable[[torch.nn.Module, list[str]], dict[str, str]] | None = None


# What a component's reference is (:attr:`Component.reference_kind`): the family's reference call
# on the library module, in PyTorch (a traced component); or, for a component whose graph is
# imported, that graph itself, the file the user gave, on ONNX Runtime's CPU execution provider.
REFERENCE_TORCH = "torch"
REFERENCE_SOURCE_GRAPH = "source graph on onnxruntime cpu"


@dataclass(frozen=True)
class ImportedGraph:
    """A component whose graph is given, not traced: the ONNX file of the loaded reference's
    source ``source`` (a source role of the family: ``--detector FILE``). The export checks the
    file's inputs and outputs against the component's declaration and copies it; its reference
    (what parity compares the export with) is that file itself on ONNX Runtime CPU.

    ``batch`` names the component's dim that the export may make symbolic where the given graph
    fixes it to 1: only if the graph computes every batch item on its own (checked by running it
    on ONNX Runtime: a batch must give exactly the outputs of its items run one by one), else it
    stays 1 and the manifest says why.

    ``positional``: the graph's inputs and outputs are matched to the declaration by position, not
    by name (for originals that read the names from the session, so that any exporter's names are
    the real file's), and the copy is renamed to the declared names."""

    source: str
    batch: str | None = None
    positional: bool = False

    def path(self, ref: Reference) -> Path:
        """The graph's file: the reference's source of role :attr:`source`."""
        found = [s.path for s in ref.sources if s.role == self.source]
        if not found:
            roles = ", ".join(s.role for s in ref.sources) or "none"
            raise CheckpointError(f"the reference has no {self.source} source (its sources: {roles})")
        return Path(found[0])


@dataclass(frozen=True)
class Quantization:
    """That a component may be quantized (``zoo export --quantize int8|fp8``) and how.

    ``keep``: the layers left in high precision, as ``fnmatch`` patterns of module names inside the
    component's module (``pos_embed*``, ``*.norm_out*``): NVIDIA's recipes keep the embedders and time
    embeddings, the first and last convolutions, the final norm and projection. ``min_cosine``: per
    format (``int8``, ``fp8``; the formats the component takes), the cosine similarity each output
    must keep against the fp32 reference at every profile corner; ``min_psnr``: per format, the
    PSNR (dB) the sampler's frames must keep against the fp32 pipeline's at the same seed, end to
    end (the sampler's latents at every step are held to ``min_cosine``). The family's own bounds,
    measured on its models; never loosened to pass. ``why``: where the list comes from."""

    keep: tuple[str, ...]
    min_cosine: Mapping[str, float]
    min_psnr: Mapping[str, float]
    why: str = ""
    # ModuleLists of the module whose first and last entries stay in high precision too (Wan's
    # ``blocks``: the recipe keeps the first and the last of the 40 transformer blocks), whatever the
    # depth, as long as some are left: a list of two or fewer (a small test model) is quantized whole
    keep_ends: tuple[str, ...] = ()

    def patterns(self, module: torch.nn.Module) -> tuple[str, ...]:
        """:attr:`keep` with the first and last entries of :attr:`keep_ends` spelled out for ``module``."""
        ends = []
        for name in self.keep_ends:
            n = len(module.get_submodule(name))  # type: ignore[arg-type]  # a ModuleList
            if n > 2:
                ends += [f"{name}.0.*", f"{name}.{n - 1}.*"]
        return self.keep + tuple(ends)

    def __post_init__(self) -> None:
        if not self.min_cosine or set(self.min_cosine) != set(self.min_psnr):
            raise TypeError("Quantization: min_cosine and min_psnr name the same formats (int8, fp8)")
        unknown = sorted(set(self.min_cosine) - {"int8", "fp8"})
        if unknown:
            raise TypeError(f"Quantization: unknown formats {', '.join(unknown)}; expected int8, fp8")


@dataclass(frozen=True)
class Component:
    """One exportable part of a family (an encoder, a denoiser, a VAE half).

    ``inputs`` / ``outputs`` are computed from the loaded reference (a function of it), as
    optimum's ``inputs`` property: optional conditions exist or not by config, and a causal
    VAE has one cache tensor per causal conv. ``state`` pairs an output with the input it
    feeds on the next call (a cache): the manifest records the pairs and backends keep those
    tensors on the device between calls.

    A component is traced (``wrapper`` and ``reference`` given: its reference is the reference
    call in PyTorch) or imported (``graph`` given, no wrapper and no reference call: its reference
    is the given ONNX graph on ONNX Runtime CPU); :attr:`reference_kind` says which.
    """

    name: str
    # tolerance class: the row of parity's table (text_encoder | image_encoder | denoiser | vae_encoder |
    # vae_decoder); the manifest records it under its historical key "kind"
    tolerance: str
    module: str  # key of the reference module in Reference.modules
    inputs: SpecsFn
    outputs: SpecsFn
    dims: DimsFn
    # a traced component: its export wrapper and its reference call (None for an imported graph)
    wrapper: Callable[[Reference], torch.nn.Module] | None = None
    reference: Callable[[Reference, Mapping[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    precision: Precision = Precision()
    export_patches: tuple[Callable[[], contextlib.AbstractContextManager[object]], ...] = ()
    state: Callable[[Reference], Mapping[str, str]] = lambda ref: {}  # output -> input it feeds next call
    # tensors of the wrapper itself computed from the module's weights (wrapper name -> how),
    # for a weightless export: e.g. a QR basis the wrapper precomputes
    derived: Callable[[Reference], Mapping[str, Transform]] = lambda ref: {}
    # an imported component: the ONNX file it is, from the reference's sources (None: traced)
    graph: ImportedGraph | None = None
    # that the component may be quantized (zoo export --quantize) and how; None: it stays in its precision
    quantize: Quantization | None = None

    def __post_init__(self) -> None:
        traced = self.wrapper is not None and self.reference is not None
        if self.graph is None and not traced:
            raise TypeError(
                f"component {self.name}: a traced component declares its wrapper and its reference call "
                f"(or, for a graph given as a file, graph=ImportedGraph(...))"
            )
        if self.graph is not None and (self.wrapper is not None or self.reference is not None):
            raise TypeError(
                f"component {self.name}: an imported graph has no wrapper and no reference call "
                f"(its reference is the graph itself on ONNX Runtime CPU)"
            )

    @property
    def reference_kind(self) -> str:
        """:data:`REFERENCE_TORCH` (the reference call in PyTorch) or :data:`REFERENCE_SOURCE_GRAPH`
        (the imported graph itself on ONNX Runtime CPU): what parity compares the export with."""
        return REFERENCE_TORCH if self.graph is None else REFERENCE_SOURCE_GRAPH

    def traced(
        self,
    ) -> tuple[
        Callable[[Reference], torch.nn.Module],
        Callable[[Reference, Mapping[str, torch.Tensor]], dict[str, torch.Tensor]],
    ]:
        """The wrapper and the reference call of a traced component; :class:`ValueError` for an
        imported one, which has neither."""
        if self.wrapper is None or self.reference is None:
            raise ValueError(
                f"component {self.name} is an imported ONNX graph: it has no torch wrapper or reference call "
                f"(its reference is the graph itself on ONNX Runtime CPU)"
            )
        return self.wrapper, self.reference

    def input_specs(self, ref: Reference) -> Specs:
        return tuple(self.inputs(ref))

    def output_specs(self, ref: Reference) -> Specs:
        return tuple(self.outputs(ref))

    def state_pairs(self, ref: Reference) -> dict[str, str]:
        pairs = dict(self.state(ref))
        ins, outs = {s.name for s in self.input_specs(ref)}, {s.name for s in self.output_specs(ref)}
        bad = [f"{o} -> {i}" for o, i in pairs.items() if o not in outs or i not in ins]
        if bad:
            raise ValueError(f"component {self.name}: state pairs name no such output / input: {', '.join(bad)}")
        return pairs

    def sample_inputs(self, ref: Reference, point: Mapping[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
        """Sample feeds at a concrete ``point`` (dim name -> size, derived dims included)."""
        gen = torch.Generator("cpu").manual_seed(seed)
        return {s.name: make_sample(s, s.resolve(point), gen, ref) for s in self.input_specs(ref)}


def specs(*items: TensorSpec) -> SpecsFn:
    """Inputs or outputs that do not depend on the config."""
    return lambda ref: items


@dataclass(frozen=True)
class Rounding:
    """A tensor the family rounds to a coarser ``dtype`` on purpose, as its original does (the
    original's hard-coded ``.to(torch.bfloat16)`` of a pose feature): ``output`` of ``component``.

    Two correct implementations that differ by 1e-7 before the rounding can land one ulp of
    ``dtype`` apart after it. Parity compares the tensor there with a rounding-aware bound (at
    most one ulp of ``dtype`` elementwise, the flipped elements counted) and, in a sampler run,
    lets the candidate continue from the reference's rounded value, so that the rows after it
    compare the loop and not the flip."""

    component: str
    output: str
    dtype: str  # bfloat16 | float16
    why: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in ("bfloat16", "float16"):
            raise TypeError(
                f"Rounding of {self.component}.{self.output}: dtype must be bfloat16 or float16, got {self.dtype!r}"
            )
