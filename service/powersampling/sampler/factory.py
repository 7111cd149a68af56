"""The one place that picks a sampler for a request's method."""

from __future__ import annotations

from collections.abc import Sequence

from powersampling.engines.base import Engine
from powersampling.events import EventSink
from powersampling.params import Method, SamplingParams
from powersampling.sampler.base import Sampler
from powersampling.sampler.mh import PowerSampler
from powersampling.sampler.smc import SmcSampler


def make_sampler(
    engine: Engine,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    *,
    on_event: EventSink | None = None,
) -> Sampler:
    """The sampler of `params.method` (Power-SMC for smc; block-wise MH, which also runs the plain
    baselines as single blocks without MCMC steps, for the others)."""
    if params.method is Method.SMC:
        return SmcSampler(engine, prompt_ids, params, on_event=on_event)
    return PowerSampler(engine, prompt_ids, params, on_event=on_event)


__all__ = ["make_sampler"]
