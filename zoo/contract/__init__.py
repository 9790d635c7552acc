"""The declarative contract every family fills in, split by concern:

- :mod:`zoo.contract.dims`: the envelope (user units) and symbolic tensor dims with their profiles;
- :mod:`zoo.contract.tensors`: tensor and component specs (value ranges, precision, tolerance class,
  what a component's reference is: a torch call, or an imported graph on ONNX Runtime CPU);
- :mod:`zoo.contract.sources`: sources and the loaded reference;
- :mod:`zoo.contract.requests`: run options (defaults stated once) and requests;
- :mod:`zoo.contract.family`: the family declaration, its sampler slots, host loops and typed hooks;
- :mod:`zoo.contract.hooks`: the protocols between a family and the layers above it (runners,
  slot calls, host-loop checks, the pipeline a family builds).

Everything generic (export, checks, profiles, backends, parity) reads only this contract. The names
are re-exported here: ``from zoo.contract import Component`` is the public spelling.
"""

from zoo.contract.dims import (
    GUARD_OVERRIDE,
    Axis,
    Dim,
    Envelope,
    Range,
    check_dims,
    resolve_point,
    round_to,
)
from zoo.contract.family import Family, HostLoop, LoopCheck, Media, PipelineSlot, PoseRun
from zoo.contract.hooks import (
    ExportedComponent,
    HostModules,
    LoopChecks,
    PipelineLike,
    PoseStep,
    Runner,
    Runners,
    SlotCall,
    TensorShape,
)
from zoo.contract.requests import (
    COMMON_RUN_OPTIONS,
    Option,
    Request,
    RequestContext,
    bind_argument,
)
from zoo.contract.sources import (
    Modules,
    Reference,
    Source,
    SourceRole,
    Sources,
    source_of,
)
from zoo.contract.tensors import (
    DTYPES,
    REFERENCE_SOURCE_GRAPH,
    REFERENCE_TORCH,
    Component,
    DimsFn,
    ImportedGraph,
    Precision,
    Quantization,
    Rounding,
    SampleFn,
    Specs,
    SpecsFn,
    TensorSpec,
    Transform,
    WeightlessModule,
    make_sample,
    specs,
    token_ids,
)

__all__ = [
    "Axis",
    "COMMON_RUN_OPTIONS",
    "Component",
    "DTYPES",
    "Dim",
    "DimsFn",
    "Envelope",
    "ExportedComponent",
    "Family",
    "GUARD_OVERRIDE",
    "HostLoop",
    "ImportedGraph",
    "LoopCheck",
    "LoopChecks",
    "Media",
    "Modules",
    "Option",
    "PipelineLike",
    "PipelineSlot",
    "PoseRun",
    "HostModules",
    "PoseStep",
    "Precision",
    "Quantization",
    "REFERENCE_SOURCE_GRAPH",
    "REFERENCE_TORCH",
    "Range",
    "Reference",
    "Request",
    "RequestContext",
    "Rounding",
    "Runner",
    "Runners",
    "SampleFn",
    "SlotCall",
    "Source",
    "SourceRole",
    "Sources",
    "Specs",
    "SpecsFn",
    "TensorShape",
    "TensorSpec",
    "Transform",
    "WeightlessModule",
    "bind_argument",
    "check_dims",
    "make_sample",
    "resolve_point",
    "round_to",
    "source_of",
    "specs",
    "token_ids",
]
