"""Requests: the options a family declares for ``zoo run`` (each default stated once, in its
:class:`Option`), the request they become, and what a family knows of an export to build one."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from zoo.contract.dims import Axis, Range


@dataclass(frozen=True)
class Option:
    """A request option of ``zoo run`` (or a source option of ``zoo export``), declared by the
    family; the command line turns it into a click option and parses it, nothing more.

    ``type``: ``text``, ``int``, ``float`` (finite; ``low`` / ``high`` bounds, ``low_open``
    for an open lower bound), ``path``, ``choice``, ``flag``."""

    name: str  # python name: free_init_method -> --free-init-method
    help: str
    type: str = "text"
    default: Any = None  # a value of the option's type (text, number, path): Any, by nature
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    required: bool = False
    multiple: bool = False
    nargs: int = 1  # values after the flag (``--resolution-area W H``: 2); the parsed value is a tuple
    aliases: tuple[str, ...] = ()  # other spellings of the flag (an original's ``--use_flux``)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass
class Request:
    """What one generation asks of the pipeline: the class, the call's kwargs, and the set-up
    calls made on the pipeline before it runs (``{"enable_free_init": {...}}``)."""

    pipeline: str
    # the pipeline call's kwargs and the set-up calls' kwargs: the library's signatures (Any, by nature)
    kwargs: dict[str, Any]
    setup: dict[str, dict[str, Any]] = field(default_factory=dict)
    scheduler: str | None = None  # a diffusers scheduler class built on the checkpoint's scheduler config
    output_format: str = "images"  # images (N,H,W,3) | video (B,F,H,W,3)
    fps: int = 8
    shape_sources: dict[str, str] = field(default_factory=dict)  # shape kwarg -> what set it, for messages


COMMON_RUN_OPTIONS: tuple[Option, ...] = (
    Option("prompt", "What to generate.", required=True),
    Option("negative_prompt", "What to steer away from (classifier-free guidance).", default=""),
    Option("steps", "Denoising steps.", type="int", default=20, low=1),
    Option("guidance_scale", "CFG scale (<= 1 disables CFG).", type="float", default=7.5),
    Option(
        "scheduler",
        "Swap the scheduler class (a diffusers scheduler, e.g. DDIMScheduler) on the checkpoint's scheduler config.",
    ),
)


@dataclass
class RequestContext:
    """What a family needs to know of an export to build and check a request."""

    envelope: Mapping[str, Range]
    axes: Mapping[str, Axis]
    configs: Mapping[str, Mapping[str, Any]]  # the modules' JSON configs (any JSON value)
    components: tuple[str, ...]
    pipeline: str | None


# the function and its arguments are a library module's (any signature): Any, by nature
def bind_argument(fn: Callable[..., Any], name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """The value ``fn(*args, **kwargs)`` receives for parameter ``name`` (None if absent)."""
    bound = inspect.signature(fn).bind_partial(*args, **kwargs)
    return bound.arguments.get(name)
