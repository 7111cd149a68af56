"""Command-line flags generated from `SamplingParams`, the way `serve`'s come from `ServerConfig`.

Each field's metadata (help text, the default as shown, the smallest value) makes its flag;
a command picks the fields it offers and may respell a flag or change its default (`Flag`).
`reason` lets `SamplingParams` judge every value (errors name the field); `bench quality`
asks for `checked` flags, which argparse refuses below the field's smallest value.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from powersampling.params import SMC_FIELDS, Method, SamplingParams

SMC_GROUP = "method smc (Power-SMC)"
SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingParams))  # in declaration order
_FIELD_DEFAULT: Any = object()  # marks "the field's own default"


@dataclass(frozen=True, slots=True)
class Flag:
    """How one command spells a field's flag: its option strings, default and help, where they
    differ from the generated ones (``--field-name``, the field's default, its metadata)."""

    names: tuple[str, ...] = ()
    default: Any = _FIELD_DEFAULT
    help: str | None = None


def positive_int(value: str) -> int:
    """argparse type: an integer of at least 1."""
    n = _parse(int, value, "an integer")
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def non_negative_int(value: str) -> int:
    """argparse type: an integer of at least 0."""
    n = _parse(int, value, "an integer")
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be non-negative, got {n}")
    return n


def positive_float(value: str) -> float:
    """argparse type: a number greater than 0."""
    x = _parse(float, value, "a number")
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return x


def _parse(kind: Callable[[str], Any], value: str, what: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None


def add_sampling_flags(
    parser: argparse.ArgumentParser,
    names: Iterable[str],
    *,
    flags: Mapping[str, Flag] | None = None,
    checked: bool = False,
) -> None:
    """Add a flag for each named SamplingParams field (dest: the field's name); the SMC fields go in
    an argument group of their own. `checked`: integer and positive flags refuse values below the
    field's smallest in argparse already (otherwise SamplingParams judges them)."""
    flags = flags or {}
    hints = typing.get_type_hints(SamplingParams)
    fields = {f.name: f for f in dataclasses.fields(SamplingParams)}
    smc_group: Any = None
    for name in names:
        f = fields[name]
        flag = flags.get(name, Flag())
        target: Any = parser
        if name in SMC_FIELDS:
            if smc_group is None:
                smc_group = parser.add_argument_group(SMC_GROUP)
            target = smc_group
        default = f.default if flag.default is _FIELD_DEFAULT else flag.default
        shown = f.metadata.get("shown")
        if default is not None and default != () and flag.default is _FIELD_DEFAULT:
            shown = default.value if isinstance(default, Method) else default
        help_text = flag.help or f.metadata["help"] + (f" (default {shown})" if shown is not None else "")
        kwargs: dict[str, Any] = {"dest": name, "default": default, "help": help_text}
        kind = _base_type(hints[name])
        if kind is Method:
            kwargs["choices"] = [m.value for m in Method]
            if isinstance(default, Method):
                kwargs["default"] = default.value
        elif kind is tuple:
            kwargs["action"] = "append"
            kwargs["default"] = [] if default == () else default
        else:
            kwargs["type"] = _checked_type(kind, f.metadata.get("min")) if checked else kind
        target.add_argument(*(flag.names or ("--" + name.replace("_", "-"),)), **kwargs)


def sampling_options(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The parsed values of the named fields' flags, by field name."""
    return {name: getattr(args, name) for name in names}


def _base_type(annotation: Any) -> Any:
    """int, float, Method or tuple for a field's annotation (Optional unwrapped)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is tuple:
        return tuple
    if args and typing.get_origin(annotation) is not tuple:
        return _base_type(args[0])
    return annotation


def _checked_type(kind: Any, low: float | None) -> Callable[[str], Any]:
    if kind is int and low == 1:
        return positive_int
    if kind is int and low == 0:
        return non_negative_int
    if kind is float and low == 0.0:
        return positive_float
    return kind


__all__ = [
    "SAMPLING_FIELDS",
    "SMC_GROUP",
    "Flag",
    "add_sampling_flags",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "sampling_options",
]
