"""Power-SMC's token budget, determinism, resume, stop strings and engines (toy and torch)."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from powersampling import reason, reason_async
from powersampling.engines.base import ExtendRequest
from powersampling.engines.toy import ToyEngine
from powersampling.events import ChainFinished, ChainStarted, SmcChunkFinished, SmcState, SmcSweepFinished
from powersampling.params import SamplingParams
from powersampling.sampler import SmcPlan, make_sampler
from powersampling.sampler.smc import SmcSampler, systematic_resample

from tests.engines.conftest import tiny_model, tiny_model_dir, tiny_tokenizer, tiny_torch_engine  # noqa: F401
from tests.sampler.test_budget_and_determinism import long_engine
from tests.sampler.toy_models import markov_engine


class CountingEngine(ToyEngine):
    """A toy engine that records each `extend` call's size (one call per chunk is the contract)."""

    def __init__(self, base: ToyEngine) -> None:
        super().__init__(base.vocab_size, base.eos_id, base.logprobs)
        self.calls: list[list[ExtendRequest]] = []

    async def extend(self, requests):  # type: ignore[no-untyped-def]
        self.calls.append(list(requests))
        return await super().extend(requests)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    alpha=st.floats(1.0, 8.0),
    particles=st.integers(1, 12),
    sweeps=st.integers(1, 5),
    max_new_tokens=st.integers(1, 12),
    chunk_size=st.integers(1, 8),
    budget_factor=st.one_of(st.none(), st.floats(1.0, 40.0)),
    ramp_tokens=st.integers(0, 4),
    seed=st.integers(0, 2**32),
    eos_rare=st.booleans(),
)
def test_budget_is_never_exceeded_and_spend_is_what_the_engine_generated(
    alpha: float,
    particles: int,
    sweeps: int,
    max_new_tokens: int,
    chunk_size: int,
    budget_factor: float | None,
    ramp_tokens: int,
    seed: int,
    eos_rare: bool,
) -> None:
    engine = long_engine() if eos_rare else markov_engine()
    budget = None if budget_factor is None else int(max_new_tokens * budget_factor)
    before = engine.tokens_generated
    results = reason(
        [0],
        engine,
        method="smc",
        alpha=alpha,
        particles=particles,
        sweeps=sweeps,
        max_new_tokens=max_new_tokens,
        chunk_size=chunk_size,
        ramp_tokens=ramp_tokens,
        token_budget=budget,
        seed=seed,
        n=2,
    )
    assert sum(r.tokens_spent for r in results) == engine.tokens_generated - before
    expected_particles = particles if budget is None else min(particles, budget // max_new_tokens)
    for r in results:
        assert r.smc is not None
        if budget is not None:
            assert r.tokens_spent <= budget
        assert r.smc.particles == expected_particles
        assert r.smc.sweeps + r.skipped_steps == sweeps
        assert r.smc.sweeps >= 1  # the first sweep always fits (budget >= particles · T)
        assert r.mcmc_steps == r.smc.sweeps - 1
        assert r.changed_steps <= r.accepted_steps == r.smc.accepted_sweeps <= r.mcmc_steps
        assert 1 <= r.smc.unique_ancestors <= expected_particles
        assert 0 < r.smc.ess_min <= 1.0
        assert math.isfinite(r.smc.log_z_hat)
        assert 1 <= len(r.token_ids) <= max_new_tokens
        assert r.tokens_spent <= r.smc.sweeps * expected_particles * max_new_tokens


def test_tight_budget_skips_sweeps_and_caps_particles() -> None:
    # Budget 50 with T = 8: at most 6 particles; each sweep may cost 48, so only one sweep runs
    # unless the first sweep's particles end early (the rarely-ending engine makes that unlikely).
    (r,) = reason(
        [0], long_engine(), method="smc", particles=16, sweeps=4, max_new_tokens=8, token_budget=50, seed=3
    )
    assert r.smc is not None and r.smc.particles == 6
    assert r.tokens_spent <= 50
    assert r.skipped_steps == 4 - r.smc.sweeps
    assert r.skipped_steps >= 1


def test_one_engine_call_per_chunk_over_open_particles() -> None:
    engine = CountingEngine(long_engine())
    (r,) = reason([0], engine, method="smc", particles=5, max_new_tokens=10, chunk_size=4, seed=1)
    assert 1 <= len(engine.calls) <= math.ceil(10 / 4)
    assert len(engine.calls[0]) == 5
    assert all(len(call) <= 5 for call in engine.calls)
    assert all(
        req.max_new_tokens == min(4, 10 - len(req.prefix) + 1) for call in engine.calls for req in call
    )
    assert all(req.temperature == 0.25 for call in engine.calls for req in call)
    assert r.tokens_spent == engine.tokens_generated


def test_same_seed_same_output_and_chains_are_the_same_batched_or_alone() -> None:
    kwargs = dict(method="smc", particles=6, sweeps=3, max_new_tokens=9, chunk_size=3)
    a = reason([0], long_engine(), seed=42, n=4, **kwargs)
    b = reason([0], long_engine(), seed=42, n=4, **kwargs)
    c = reason([0], long_engine(), seed=43, n=4, **kwargs)
    alone = reason([0], long_engine(), seed=42, n=1, **kwargs)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.smc for r in a] == [r.smc for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]
    assert (alone[0].token_ids, alone[0].smc) == (a[0].token_ids, a[0].smc)


def comparable(result) -> dict:
    d = result.to_dict()
    del d["latency_s"], d["resumed_from_block"]
    return d


@pytest.mark.parametrize("pick", ["mid_sweep", "between_sweeps", "last_chunk"])
def test_resume_from_a_chunk_checkpoint_gives_the_uninterrupted_run(pick: str) -> None:
    kwargs = dict(method="smc", particles=6, sweeps=3, max_new_tokens=12, chunk_size=3, seed=5, n=2)
    checkpoints: dict[int, list[SmcState]] = {0: [], 1: []}

    def keep(event) -> None:
        if isinstance(event, SmcChunkFinished | SmcSweepFinished):
            checkpoints[event.chain_index].append(event.state)

    full = reason([0], long_engine(), on_event=keep, **kwargs)
    chosen = {}
    for i, states in checkpoints.items():
        if pick == "mid_sweep":
            chosen[i] = next(s for s in states if s.sweep_index == 1 and s.chunks_done == 2)
        elif pick == "between_sweeps":
            chosen[i] = next(s for s in states if s.sweep_index == 2 and s.chunks_done == 0)
        else:
            chosen[i] = states[-2]
    engine = long_engine()
    events: list = []
    resumed = asyncio.run(reason_async([0], engine, resume=chosen, on_event=events.append, **kwargs))
    assert [comparable(r) for r in resumed] == [comparable(r) for r in full]
    assert engine.tokens_generated < sum(r.tokens_spent for r in full)
    sampler = make_sampler(engine, [0], SamplingParams(**kwargs))
    assert [r.resumed_from_block for r in resumed] == [sampler.resume_position(chosen[i]) for i in (0, 1)]
    started = [e for e in events if isinstance(e, ChainStarted)]
    assert sorted(e.resumed_from_block for e in started) == sorted(r.resumed_from_block for r in resumed)
    assert all(sampler.fits_checkpoint(i, s) for i, s in chosen.items())


def test_foreign_checkpoints_do_not_fit() -> None:
    kwargs = dict(method="smc", particles=4, sweeps=2, max_new_tokens=8, chunk_size=2, seed=5)
    states: list[SmcState] = []
    reason(
        [0],
        long_engine(),
        on_event=lambda e: states.append(e.state) if isinstance(e, SmcChunkFinished) else None,
        **kwargs,
    )
    sampler = make_sampler(long_engine(), [0], SamplingParams(**kwargs))
    good = states[1]
    assert sampler.fits_checkpoint(0, good)
    other_seed = make_sampler(long_engine(), [0], SamplingParams(**{**kwargs, "seed": 6}))
    more_particles = make_sampler(long_engine(), [0], SamplingParams(**{**kwargs, "particles": 5}))
    assert not other_seed.fits_checkpoint(0, good)
    assert not more_particles.fits_checkpoint(0, good)
    assert not sampler.fits_checkpoint(1, good)
    from dataclasses import replace

    assert not sampler.fits_checkpoint(0, replace(good, particles=good.particles[:-1]))
    assert not sampler.fits_checkpoint(0, replace(good, chunks_done=0))
    too_long = replace(good.particles[0], token_ids=(0,) * 9, logp=(0.0,) * 9)
    assert not sampler.fits_checkpoint(0, replace(good, particles=(too_long, *good.particles[1:])))
    assert not sampler.fits_checkpoint(0, replace(good, ended=True))
    mh = make_sampler(long_engine(), [0], SamplingParams(seed=5, max_new_tokens=8))
    assert not mh.fits_checkpoint(0, good)


def test_events_and_statistics_of_a_run() -> None:
    events: list = []
    (r,) = reason(
        [0], long_engine(), method="smc", particles=8, sweeps=3, max_new_tokens=9, chunk_size=3,
        resample_threshold=1.0, seed=2, on_event=events.append,
    )  # fmt: skip
    chunks = [e for e in events if isinstance(e, SmcChunkFinished)]
    sweeps = [e for e in events if isinstance(e, SmcSweepFinished)]
    assert isinstance(events[0], ChainStarted) and isinstance(events[-1], ChainFinished)
    assert events[0].num_blocks == 3 * 3
    assert [e.sweep_index for e in sweeps] == [0, 1, 2]
    assert sweeps[0].accepted
    assert sum(e.accepted for e in sweeps[1:]) == r.accepted_steps
    assert sum(e.resampled for e in chunks) == r.smc.resamples
    assert min(e.ess for e in chunks) == pytest.approx(r.smc.ess_min)
    assert chunks[-1].tokens_spent == r.tokens_spent
    assert all(e.num_sweeps == 3 and 0 <= e.particles_alive <= 8 for e in chunks)
    # The kept answer's log Ẑ is that of the last accepted sweep.
    last_accepted = [e for e in sweeps if e.accepted][-1]
    assert r.smc.log_z_hat == last_accepted.log_z_hat
    assert tuple(r.token_ids) == last_accepted.answer_token_ids
    assert events[-1].state.tokens_spent == r.tokens_spent


def test_stop_strings_end_a_particle_and_trim_the_text() -> None:
    engine = ToyEngine(
        vocab_size=4,
        eos_id=3,
        next_token_logprobs=lambda p: [0.0, 0.0, 0.0, -4.0],
        token_strings=["a", "b", "c", ""],
    )
    results = reason(
        [0], engine, method="smc", particles=4, max_new_tokens=12, chunk_size=5, stop=("bc",), n=8, seed=4
    )
    for r in results:
        if r.finish_reason == "stop":
            assert engine.detokenize(r.token_ids).endswith("bc")
            assert "bc" not in r.text
    assert any(r.finish_reason == "stop" for r in results)


def test_systematic_resampling_keeps_counts_within_one_of_n_times_weight() -> None:
    import numpy as np

    weights = np.array([0.5, 0.3, 0.15, 0.05])
    for u in (0.0, 0.3, 0.999):
        counts = np.bincount(systematic_resample(weights, u), minlength=4)
        assert counts.sum() == 4
        assert np.all(np.abs(counts - 4 * weights) < 1)


def test_plan_from_params() -> None:
    plan = SmcPlan.from_params(SamplingParams(method="smc", particles=32, max_new_tokens=10, token_budget=95))
    assert plan.particles == 9 and plan.sweep_cost_bound == 90
    assert plan.sweep_fits(5) and not plan.sweep_fits(6)
    ramp = SmcPlan.from_params(SamplingParams(method="smc", alpha=3.0, ramp_tokens=4))
    assert [ramp.alpha_at(3.0, t) for t in (0, 2, 4, 9)] == [1.0, 2.0, 3.0, 3.0]
    assert isinstance(make_sampler(markov_engine(), [0], SamplingParams(method="smc", seed=1)), SmcSampler)


@pytest.mark.slow
async def test_smc_runs_on_the_torch_engine(tiny_torch_engine) -> None:  # noqa: F811 - the imported fixture
    engine = tiny_torch_engine
    results = await reason_async(
        "hello", engine, method="smc", particles=4, sweeps=2, max_new_tokens=12, chunk_size=4, seed=1, n=2,
        chat=False,
    )  # fmt: skip
    again = await reason_async(
        "hello", engine, method="smc", particles=4, sweeps=2, max_new_tokens=12, chunk_size=4, seed=1, n=2,
        chat=False,
    )  # fmt: skip
    for r in results:
        assert r.smc is not None and r.smc.particles == 4 and r.smc.sweeps == 2
        assert 1 <= len(r.token_ids) <= 12 and r.tokens_spent <= 2 * 4 * 12
        assert math.isfinite(r.log_prob) and math.isfinite(r.smc.log_z_hat)
        assert r.engine == "torch"
    assert [r.token_ids for r in results] == [r.token_ids for r in again]
