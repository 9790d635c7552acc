"""The tolerance table of PARITY.md, in one place. Never loosened to make a test pass.

Rows are keyed by (component kind, precision, scale): ``scale`` is ``tiny`` for random-weight
models (tests, the embedded demo) and ``full`` for real checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from parity.metrics import Metrics
from zoo.contract import Quantization
from zoo.errors import ZooError


@dataclass(frozen=True)
class Tolerance:
    """Bounds a comparison must meet; ``None`` bounds are not checked."""

    atol: float | None = None  # elementwise |c - r| <= atol + rtol * |r|
    rtol: float = 0.0
    max_abs: float | None = None
    min_cosine: float | None = None
    max_rel_l2: float | None = None
    min_psnr: float | None = None
    # at a point where the family rounds to this dtype on purpose: the elementwise bounds (atol,
    # max_abs) hold once one ulp of it is taken off each element's error (see rounding_tolerance)
    rounded_to: str | None = None

    def failures(self, m: Metrics, torch_error: Metrics | None = None, precision: str = "") -> list[str]:
        """What failed, each with the bound that would have passed.

        With ``torch_error`` (PyTorch itself in the reduced ``precision`` against the same fp32
        reference), a bound also holds when the candidate's error is at most twice PyTorch's
        (PARITY.md); see :meth:`held_by_torch` for the bounds held that way."""
        if m.nan or m.inf:
            return [f"{m.nan} NaN / {m.inf} Inf in the candidate"]
        out = []
        for key, text in self._broken(m):
            if key in self._held(m, torch_error):
                continue
            if torch_error is not None and key in _ERROR:
                own = _ERROR[key](torch_error)
                text += (
                    f"; PyTorch in {precision or 'that dtype'} has {_ERROR_NAME[key]} {own:.3g}, "
                    f"twice that would be {TWICE * own:.3g}"
                )
            out.append(text)
        return out

    def held_by_torch(self, m: Metrics, torch_error: Metrics | None, precision: str = "") -> list[str]:
        """The bounds ``m`` breaks that hold by the rule 'at most twice PyTorch's own error in
        that dtype', each saying so with both numbers."""
        if m.nan or m.inf:
            return []
        held = self._held(m, torch_error)
        return [
            f"{_ERROR_NAME[key]} {_ERROR[key](m):.3g} breaks the fixed bound but is within twice PyTorch in "
            f"{precision or 'that dtype'} ({_ERROR[key](torch_error):.3g})"
            for key, _ in self._broken(m)
            if key in held
        ]

    def _broken(self, m: Metrics) -> list[tuple[str, str]]:
        """(bound, failure text) for every fixed bound ``m`` breaks."""
        out = []
        atol_needed, max_abs, beyond = m.atol_needed, m.max_abs, ""
        if self.rounded_to is not None:
            if m.unrounded is None or m.atol_beyond_ulp is None or m.max_abs_beyond_ulp is None:
                return [("rounded", f"not measured in {self.rounded_to} ulps")]
            if m.unrounded:
                out.append(
                    (
                        "rounded",
                        f"{m.unrounded} values are not {self.rounded_to} values: the tensor is not "
                        f"rounded to {self.rounded_to} where the family says it is",
                    )
                )
            atol_needed, max_abs = m.atol_beyond_ulp, m.max_abs_beyond_ulp
            beyond = f" beyond one {self.rounded_to} ulp"
        if self.atol is not None and atol_needed > self.atol:
            out.append(
                ("atol", f"needs atol {atol_needed:.3g} at rtol {self.rtol:g}{beyond} (allowed atol {self.atol:g})")
            )
        if self.max_abs is not None and max_abs > self.max_abs:
            out.append(
                ("max_abs", f"max abs {max_abs:.3g}{beyond} > {self.max_abs:g} (would pass with max_abs {max_abs:.3g})")
            )
        if self.min_cosine is not None and not m.cosine >= self.min_cosine:
            out.append(
                (
                    "min_cosine",
                    f"cosine {m.cosine:.7f} < {self.min_cosine:g} (would pass with min_cosine {m.cosine:.7f})",
                )
            )
        if self.max_rel_l2 is not None and not m.rel_l2 <= self.max_rel_l2:
            out.append(
                (
                    "max_rel_l2",
                    f"rel-L2 {m.rel_l2:.3g} > {self.max_rel_l2:g} (would pass with max_rel_l2 {m.rel_l2:.3g})",
                )
            )
        if self.min_psnr is not None and not m.psnr >= self.min_psnr:
            out.append(
                ("min_psnr", f"PSNR {m.psnr:.2f} dB < {self.min_psnr:g} dB (would pass with min_psnr {m.psnr:.2f})")
            )
        return out

    def _held(self, m: Metrics, torch_error: Metrics | None) -> set[str]:
        """The broken bounds whose error is at most twice PyTorch's own (none without it, or
        when PyTorch's own output has NaN / Inf)."""
        if torch_error is None or torch_error.nan or torch_error.inf:
            return set()
        return {
            key for key, _ in self._broken(m) if key in _ERROR and _ERROR[key](m) <= TWICE * _ERROR[key](torch_error)
        }

    def __str__(self) -> str:
        parts = []
        if self.atol is not None:
            parts.append(f"atol {self.atol:g} rtol {self.rtol:g}")
        if self.max_abs is not None:
            parts.append(f"max_abs {self.max_abs:g}")
        if self.min_cosine is not None:
            parts.append(f"cos >= {self.min_cosine:g}")
        if self.max_rel_l2 is not None:
            parts.append(f"rel-L2 <= {self.max_rel_l2:g}")
        if self.min_psnr is not None:
            parts.append(f"PSNR >= {self.min_psnr:g} dB")
        text = ", ".join(parts)
        return text + (f" + 1 {self.rounded_to} ulp" if self.rounded_to is not None else "")


# "For reduced precision a tolerance also holds if the error is at most twice the error of
# PyTorch itself run in that dtype against fp32" (PARITY.md). The error each bound is about,
# smaller is better: for PSNR the RMS error over the data range (twice = 6.02 dB lower).
TWICE = 2.0
_ERROR = {
    "atol": lambda m: m.atol_needed,
    "max_abs": lambda m: m.max_abs,
    "min_cosine": lambda m: 1.0 - m.cosine,
    "max_rel_l2": lambda m: m.rel_l2,
    "min_psnr": lambda m: 10.0 ** (-m.psnr / 20.0),
}
_ERROR_NAME = {
    "atol": "atol needed",
    "max_abs": "max abs",
    "min_cosine": "1 - cosine",
    "max_rel_l2": "rel-L2",
    "min_psnr": "RMS error / range",
}

_ENCODER = {
    ("float32", "tiny"): Tolerance(atol=1e-4, rtol=1e-3),
    ("float32", "full"): Tolerance(min_cosine=0.99999),
    ("float16", "any"): Tolerance(min_cosine=0.9995, max_rel_l2=3e-2),
    ("bfloat16", "any"): Tolerance(min_cosine=0.998, max_rel_l2=6e-2),
}
_REDUCED_E2E = Tolerance(min_cosine=1 - 5e-2, min_psnr=30.0)

# An imported graph (a component given as an ONNX file: the pose step's person detector and
# whole-body pose model) against that file itself on ONNX Runtime CPU. The exported copy differs
# from the file only in names (its dims named, a batch dim made symbolic where the export proved
# that a batch gives exactly the outputs of its items run alone), so on the reference's own runtime
# and device (ONNX Runtime CPU) it runs the same kernels on the same values: its outputs are
# identical, and nothing less passes (max abs 0). On another runtime (TensorRT, a GPU execution
# provider) kernels differ in the last bits: the fp32 bound of a traced component's tiny row.
# There are no fp16 / bf16 rows: an imported graph computes in the given file's own dtypes.
SAME_RUNTIME = "same runtime"
_IMPORTED_GRAPH = {
    ("float32", SAME_RUNTIME): Tolerance(max_abs=0.0),
    ("float32", "any"): Tolerance(atol=1e-4, rtol=1e-3),
}

TABLE: dict[str, dict[tuple[str, str], Tolerance]] = {
    "text_encoder": _ENCODER,
    "image_encoder": _ENCODER,
    "denoiser": {
        ("float32", "tiny"): Tolerance(atol=1e-4, rtol=1e-3),
        ("float32", "full"): Tolerance(atol=2e-3, rtol=1e-2),
        ("float16", "any"): Tolerance(min_cosine=0.999, max_rel_l2=3e-2),
        ("bfloat16", "any"): Tolerance(min_cosine=0.998, max_rel_l2=6e-2),
    },
    "vae_encoder": {
        ("float32", "tiny"): Tolerance(atol=3e-4),
        ("float32", "full"): Tolerance(atol=3e-3),
        ("float16", "any"): Tolerance(min_cosine=0.999),
        ("bfloat16", "any"): Tolerance(min_cosine=0.998),
    },
    "vae_decoder": {
        ("float32", "tiny"): Tolerance(atol=3e-4),
        ("float32", "full"): Tolerance(min_psnr=50.0),
        ("float16", "any"): Tolerance(min_psnr=40.0),
        ("bfloat16", "any"): Tolerance(min_psnr=35.0),
    },
    # decoded frames in [-1, 1] of sampler vs diffusers pipeline, tiny model, 2-4 steps, fixed noise
    "end_to_end": {
        ("float32", "tiny"): Tolerance(max_abs=1e-3),
        ("float32", "full"): Tolerance(max_abs=1e-3),
        ("float16", "any"): _REDUCED_E2E,
        ("bfloat16", "any"): _REDUCED_E2E,
    },
    "person_detector": _IMPORTED_GRAPH,
    "pose_estimator": _IMPORTED_GRAPH,
    # the denoiser's latent input at every step: held to the end-to-end bound, in latent units
    "trajectory": {
        ("float32", "tiny"): Tolerance(max_abs=1e-3),
        ("float32", "full"): Tolerance(max_abs=1e-3),
        ("float16", "any"): _REDUCED_E2E,
        ("bfloat16", "any"): _REDUCED_E2E,
    },
}


# A quantized graph (zoo export --quantize) on a runtime against the same quantizers simulated in
# PyTorch (the exported scales applied to the reference module). Both compute DQ(Q(x)) @ DQ(W_q) in
# fp32: they differ by fp32 rounding (1 - cos ~1e-13 on the tiny models), or, where such a difference
# moves an activation across a rounding boundary, by one quantization step of a few elements (max
# abs ~3e-4, rel-L2 ~1e-5). One layer's weight scale off by 5% moves the output by rel-L2 ~1e-3. In a
# network where one such flip is amplified (a small random UNet: percents), the row also holds within
# twice the simulation's own spread on inputs nudged by 1e-5 (parity.compare.NUDGE), measured beside it.
QUANTIZED_SIMULATION = Tolerance(min_cosine=1 - 1e-8, max_rel_l2=2e-4)


def quantized_tolerance(declaration: Quantization, fmt: str, against: str) -> Tolerance:
    """The rows of a quantized component in ``fmt``: ``simulation`` (the graph against its own
    quantizers simulated in torch: :data:`QUANTIZED_SIMULATION`), ``fp32`` (against the fp32
    reference: the family's declared cosine), ``end_to_end`` (the sampler's frames against the fp32
    pipeline's: the declared PSNR) or ``trajectory`` (its latents: the declared cosine)."""
    if fmt not in declaration.min_cosine:
        raise ZooError(f"no {fmt} bounds declared for this component (it declares {', '.join(declaration.min_cosine)})")
    if against == "simulation":
        return QUANTIZED_SIMULATION
    if against == "end_to_end":
        return Tolerance(min_psnr=declaration.min_psnr[fmt])
    return Tolerance(min_cosine=declaration.min_cosine[fmt])


def rounding_tolerance(row: Tolerance, dtype: str) -> Tolerance:
    """``row`` at a tensor the family rounds to ``dtype`` as its original does (a declared
    :class:`zoo.contract.Rounding`): two results within ``row`` before the rounding may land one
    ulp of ``dtype`` further apart after it (|round(a) - round(b)| <= |a - b| + 1 ulp), so its
    elementwise bounds hold once one ulp is taken off each element's error: for values of a
    normal size, at most one ulp apart. Its other bounds (cosine, rel-L2, PSNR) stay as they are.
    It holds there only: every row after it keeps its own bound (the sampler continues from the
    reference's rounded value)."""
    return replace(row, rounded_to=dtype)


def tolerance(kind: str, precision: str = "float32", scale: str = "tiny", *, same_runtime: bool = False) -> Tolerance:
    """The row for a component kind at a precision and scale (``tiny`` or ``full``). ``same_runtime``:
    the candidate runs on the very runtime and device of its reference (an imported graph's copy on
    ONNX Runtime CPU), where a kind may hold it to a row of its own (identical outputs)."""
    rows = TABLE.get(kind)
    if rows is None:
        raise ZooError(f"no tolerance row for component kind {kind!r}; rows exist for {', '.join(TABLE)}")
    row = (rows.get((precision, SAME_RUNTIME)) if same_runtime else None) or rows.get((precision, scale))
    row = row or rows.get((precision, "any"))
    if row is None:
        raise ZooError(f"no tolerance for {kind} at precision {precision!r}")
    return row
