"""The typed hooks between a family and the layers above it.

A family's code (``zoo/families``, ``zoo/models``) is the bottom layer: it never imports a
backend, a manifest or a pipeline runner, yet its sampler slots and host-loop checks call them.
Every such call goes through a protocol declared here, so the tie is explicit and mypy checks
both sides: a backend (``runtimes``) satisfies :class:`Runner` structurally, a family's slot call
is a :class:`SlotCall`, a host loop's checks a :class:`LoopChecks`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from zoo.contract.dims import Dim, Envelope

if TYPE_CHECKING:
    from zoo.contract.family import LoopCheck, PoseRun
    from zoo.contract.sources import Reference


class TensorShape(Protocol):
    """A tensor of an exported component as its runner knows it: name and (symbolic) shape."""

    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> tuple[int | str, ...]: ...


class ExportedComponent(Protocol):
    """What a runner tells of the component it runs (the manifest's record of it)."""

    @property
    def name(self) -> str: ...

    @property
    def inputs(self) -> Sequence[TensorShape]: ...

    @property
    def outputs(self) -> Sequence[TensorShape]: ...

    @property
    def dims(self) -> Mapping[str, Dim]: ...  # the exported profile of each symbolic dim


class Runner(Protocol):
    """One exported component as a family's slot calls and host loops run it (a backend of
    ``runtimes``, or a wrapper of one that records or replaces what it returns): everything a
    family may call on a runner, and nothing else."""

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the component on named feeds (state inputs may be left out); named outputs."""
        ...

    @property
    def input_names(self) -> tuple[str, ...]: ...

    @property
    def record(self) -> ExportedComponent: ...

    def call_cached(self, feeds: Mapping[str, torch.Tensor], keep: int = 2) -> dict[str, torch.Tensor]:
        """``self(feeds)``, reusing the outputs of a recent call with equal feeds."""
        ...

    def set_state(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Set the state inputs (a chunk cache) the next call takes when its feeds leave them out."""
        ...

    def reset_state(self) -> None: ...


Runners = Mapping[str, Runner]  # exported component name -> its runner


class SlotCall(Protocol):
    """A method of a :class:`~zoo.contract.family.PipelineSlot`: ``fn(runners, *args, **kwargs)``
    takes the pipeline's call of the library module and returns what that module returns."""

    # the arguments and the result are the library module's own (a diffusers / transformers call
    # signature and output class, different for every module): arbitrary by nature
    def __call__(self, runners: Runners, /, *args: Any, **kwargs: Any) -> Any: ...


class LoopChecks(Protocol):
    """A host loop's checks: run the loop on ``runners`` and the library call it replaces on the
    reference, at the export's ``envelope``; one :class:`~zoo.contract.family.LoopCheck` each."""

    def __call__(self, ref: Reference, runners: Runners, envelope: Envelope, seed: int) -> list[LoopCheck]: ...


class PipelineLike(Protocol):
    """What :meth:`Family.build_pipeline` returns: a diffusers pipeline or a family's own loop,
    configured (progress bar) and called the way ``zoo run`` calls a pipeline."""

    # a pipeline's call takes the request's kwargs and returns the library's output class, which
    # the family's ``output`` hook reads: both arbitrary by nature
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def set_progress_bar_config(self, *args: Any, **kwargs: Any) -> None: ...


# an export's host modules (tokenizers, a torch model a pose step runs), each loaded when called:
# name -> loader. What a loader returns is the library's own object (Any, by nature).
HostModules = Mapping[str, Callable[[], Any]]


class PoseStep(Protocol):
    """A family's pose step for one ``zoo pose`` call (:meth:`~zoo.contract.family.Family.pose_step`),
    its inputs already read and checked: run on ``runners`` (one per exported component), it
    writes its files into ``out`` (a staging folder the caller swaps in whole) and calls
    ``advance(n)`` as it finishes ``n`` more of :attr:`frames`."""

    @property
    def frames(self) -> int:
        """How many frames it will process (the progress bar's total; a container's own count)."""
        ...

    def __call__(self, runners: Runners, out: Path, advance: Callable[[int], None]) -> PoseRun: ...
