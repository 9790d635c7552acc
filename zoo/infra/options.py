"""Click parameter types and a family's declared request options as click options.

Shared by ``zoo run`` (parsing the command line) and the server (parsing a request's JSON with
the same types, so a bad request gets the same message ``zoo run`` gives)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


class FiniteFloat(click.ParamType):
    """A finite float (``nan`` and ``inf`` are usage errors), optionally bounded."""

    name = "float"

    def __init__(self, low: float | None = None, high: float | None = None, low_open: bool = False) -> None:
        self.low, self.high, self.low_open = low, high, low_open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        import math

        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number.", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        below = self.low is not None and (number <= self.low if self.low_open else number < self.low)
        above = self.high is not None and number > self.high
        if below or above:
            lo = "" if self.low is None else f"{self.low:g}{'<' if self.low_open else '<='}"
            hi = "" if self.high is None else f"<={self.high:g}"
            self.fail(f"{number:g} is not in the range {lo}x{hi}.", param, ctx)
        return number


def click_option(option: Any) -> click.Option:
    """A family's declared :class:`zoo.contract.Option` as a click option (parsing only)."""
    bounded = option.low is not None or option.high is not None  # click shows an unbounded IntRange as [x<=None]
    kinds: dict[str, Any] = {
        "text": str,
        "int": click.IntRange(
            min=None if option.low is None else int(option.low), max=None if option.high is None else int(option.high)
        )
        if bounded
        else click.INT,
        "float": FiniteFloat(option.low, option.high, option.low_open),
        "path": click.Path(path_type=Path),
        "choice": click.Choice(option.choices),
    }
    if option.type == "flag":
        return click.Option([option.flag, *option.aliases, option.name], is_flag=True, help=option.help)
    extra = {} if option.default is None else {"default": option.default}  # click 8.3+: None is a value
    return click.Option(
        [option.flag, *option.aliases, option.name],
        type=kinds[option.type],
        required=option.required,
        multiple=option.multiple,
        nargs=option.nargs,
        help=option.help,
        show_default=option.default not in (None, "", ()),
        **extra,
    )
