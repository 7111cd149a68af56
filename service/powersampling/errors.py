"""Errors raised by powersampling, each naming what went wrong in one line."""

from __future__ import annotations


class PowerSamplingError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidArgument(PowerSamplingError, ValueError):
    """A caller-supplied value is out of range or malformed; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class UnknownModel(InvalidArgument):
    """The requested model is neither a known name nor a local folder."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            "model",
            f"unknown model {name!r}; use one of {', '.join(known)} or a path to a local Hugging Face folder",
        )


class EngineError(PowerSamplingError):
    """The engine failed to load or to generate."""


class EngineOverloaded(EngineError):
    """The engine ran out of memory or capacity for this request."""
