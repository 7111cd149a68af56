"""Stop strings, for the sampler: `StopMatcher` lives on the ground floor (`powersampling.stops`)."""

from __future__ import annotations

from powersampling.stops import StopMatcher

__all__ = ["StopMatcher"]
