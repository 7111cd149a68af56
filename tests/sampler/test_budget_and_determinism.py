"""Token budget, determinism, batching, resume and stop strings of the sampler on toy models."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from powersampling import InvalidArgument, SamplingParams, reason, reason_async
from powersampling.engines.toy import ToyEngine
from powersampling.events import BlockFinished, McmcStepSkipped, McmcStepTaken
from powersampling.sampler import BudgetPlan

from tests.sampler.toy_models import markov_engine, position_engine


def long_engine() -> ToyEngine:
    """A model that rarely stops, so blocks fill up and budgets bind."""
    return ToyEngine(
        vocab_size=4,
        eos_id=3,
        next_token_logprobs=lambda prefix: [math.log(0.4), math.log(0.3), math.log(0.27), math.log(0.03)],
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    alpha=st.floats(1.0, 8.0),
    block_size=st.integers(1, 8),
    max_new_tokens=st.integers(1, 14),
    mcmc_steps=st.integers(0, 6),
    budget_factor=st.one_of(st.none(), st.floats(1.0, 5.0)),
    seed=st.integers(0, 2**32),
    eos_rare=st.booleans(),
)
def test_budget_is_never_exceeded_and_spend_is_what_the_engine_generated(
    alpha: float,
    block_size: int,
    max_new_tokens: int,
    mcmc_steps: int,
    budget_factor: float | None,
    seed: int,
    eos_rare: bool,
) -> None:
    engine = long_engine() if eos_rare else markov_engine()
    budget = None if budget_factor is None else int(max_new_tokens * budget_factor)
    before = engine.tokens_generated
    results = reason(
        [0],
        engine,
        alpha=alpha,
        block_size=block_size,
        max_new_tokens=max_new_tokens,
        mcmc_steps=mcmc_steps,
        token_budget=budget,
        seed=seed,
        n=3,
    )
    assert sum(r.tokens_spent for r in results) == engine.tokens_generated - before
    for r in results:
        if budget is not None:
            assert r.tokens_spent <= budget
        assert len(r.token_ids) <= max_new_tokens
        assert r.mcmc_steps + r.skipped_steps <= mcmc_steps * math.ceil(max_new_tokens / block_size)


def test_without_budget_every_block_gets_its_steps() -> None:
    results = reason([0], long_engine(), block_size=4, max_new_tokens=12, mcmc_steps=5, seed=1, n=4)
    for r in results:
        if r.finish_reason == "length":
            assert r.mcmc_steps == 15


def test_tight_budget_cuts_steps_and_reports_spend() -> None:
    loose = reason([0], long_engine(), block_size=4, max_new_tokens=12, mcmc_steps=5, seed=2)[0]
    tight = reason(
        [0], long_engine(), block_size=4, max_new_tokens=12, mcmc_steps=5, seed=2, token_budget=30
    )[0]
    assert tight.tokens_spent <= 30 < loose.tokens_spent
    assert tight.mcmc_steps < loose.mcmc_steps


def test_budget_equal_to_max_new_tokens_allows_no_proposal_beyond_the_first() -> None:
    r = reason([0], long_engine(), block_size=12, max_new_tokens=12, mcmc_steps=5, seed=3, token_budget=12)[0]
    assert r.tokens_spent <= 12


def test_budget_plan_spreads_steps_over_blocks() -> None:
    plan = BudgetPlan(max_new_tokens=100, block_size=25, mcmc_steps=10, token_budget=None)
    assert plan.num_blocks == 4
    assert [plan.block_target(k) for k in range(4)] == [25, 50, 75, 100]
    assert plan.steps_for_block(0, 25) == 10
    tight = BudgetPlan(max_new_tokens=100, block_size=25, mcmc_steps=10, token_budget=400)
    steps = tight.steps_for_block(0, 25)
    assert 0 < steps < 10
    assert tight.step_fits(0, 25, 25) and not tight.step_fits(0, 290, 40)


def test_budget_below_max_new_tokens_is_an_error() -> None:
    with pytest.raises(InvalidArgument, match=r"token_budget.*below max_new_tokens"):
        SamplingParams(max_new_tokens=100, token_budget=99)


def test_same_seed_same_output_and_different_seed_differs() -> None:
    kwargs = dict(block_size=3, max_new_tokens=9, mcmc_steps=4)
    a = reason([0], long_engine(), seed=42, n=6, **kwargs)
    b = reason([0], long_engine(), seed=42, n=6, **kwargs)
    c = reason([0], long_engine(), seed=43, n=6, **kwargs)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]


def test_chains_are_the_same_batched_or_alone() -> None:
    """Chain i of an n-sample request equals the same chain run on its own."""
    kwargs = dict(block_size=3, max_new_tokens=9, mcmc_steps=4, seed=7)
    together = reason([0], long_engine(), n=5, **kwargs)
    alone = reason([0], long_engine(), n=1, **kwargs)
    assert together[0].token_ids == alone[0].token_ids
    assert together[0].tokens_spent == alone[0].tokens_spent


def test_chains_of_concurrent_requests_share_engine_batches() -> None:
    engine = long_engine()

    async def run() -> None:
        await asyncio.gather(
            *(
                reason_async([0], engine, block_size=4, max_new_tokens=8, mcmc_steps=3, seed=s, n=4)
                for s in range(5)
            )
        )

    asyncio.run(run())
    # 20 chains, each making 2 extensions and 6 proposals: far fewer batches than calls.
    assert engine.sequences_run == 20 * 8
    assert engine.batches_run <= 8 + 2


def test_resume_from_a_block_checkpoint_gives_the_uninterrupted_chain() -> None:
    kwargs = dict(block_size=3, max_new_tokens=12, mcmc_steps=3, seed=5, n=2)
    checkpoints: dict[int, list] = {0: [], 1: []}

    def keep(event) -> None:
        if isinstance(event, BlockFinished):
            checkpoints[event.chain_index].append(event.state)

    full = reason([0], long_engine(), on_event=keep, **kwargs)
    engine = long_engine()
    resume = {0: checkpoints[0][1], 1: checkpoints[1][2]}
    resumed = asyncio.run(reason_async([0], engine, resume=resume, **kwargs))
    assert [r.token_ids for r in resumed] == [r.token_ids for r in full]
    assert [r.tokens_spent for r in resumed] == [r.tokens_spent for r in full]
    assert [r.resumed_from_block for r in resumed] == [2, 3]
    assert engine.tokens_generated < sum(r.tokens_spent for r in full)


def test_events_report_every_step() -> None:
    events: list = []
    r = reason(
        [0], long_engine(), block_size=4, max_new_tokens=8, mcmc_steps=3, seed=1, on_event=events.append
    )[0]
    steps = [e for e in events if isinstance(e, McmcStepTaken)]
    skipped = [e for e in events if isinstance(e, McmcStepSkipped)]
    assert len(steps) == r.mcmc_steps and not skipped
    assert sum(e.accepted for e in steps) == r.accepted_steps
    assert sum(e.changed for e in steps) == r.changed_steps
    blocks = [e for e in events if isinstance(e, BlockFinished)]
    assert [b.block_index for b in blocks] == list(range(len(blocks)))
    assert blocks[-1].state.token_ids == tuple(r.token_ids)


def test_baselines_take_no_mcmc_steps() -> None:
    for method in ("greedy", "sample", "low-temp"):
        r = reason([0], position_engine(), method=method, max_new_tokens=6, seed=0, mcmc_steps=10)[0]
        assert r.mcmc_steps == 0 and r.tokens_spent == len(r.token_ids)
    greedy = reason([0], position_engine(), method="greedy", max_new_tokens=6, seed=0)[0]
    assert greedy.token_ids == [0, 1, 0, 1, 0, 1]
    assert greedy.proposal_temperature == 0.0


def test_stop_strings_end_the_chain_and_trim_the_text() -> None:
    engine = ToyEngine(
        vocab_size=4,
        eos_id=3,
        next_token_logprobs=lambda prefix: [math.log(0.45), math.log(0.35), math.log(0.15), math.log(0.05)],
        token_strings=["a", "b", "\n", ""],
    )
    for r in reason("a", engine, stop=("\n",), max_new_tokens=30, block_size=10, mcmc_steps=2, seed=4, n=8):
        assert "\n" not in r.text
        if r.finish_reason == "stop":
            assert engine.detokenize(r.token_ids).endswith("\n")
    # A stop string spanning two tokens.
    hits = reason("a", engine, stop=("ba",), max_new_tokens=30, method="sample", seed=1, n=20)
    assert any(r.finish_reason == "stop" for r in hits)
    for r in hits:
        assert "ba" not in r.text
        if r.finish_reason == "stop":
            assert engine.detokenize(r.token_ids).endswith("ba")
