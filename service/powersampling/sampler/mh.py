"""Block-wise Metropolis-Hastings over p(x)^alpha (Karan & Du 2025, Algorithm 1).

Target for a prompt c: pi(x) ∝ p(x | c)^alpha. Proposal q: the model at temperature tau, token by
token. For each block k the chain is extended to length target_k = min(T, k·B) (or EOS), then takes
N steps: pick m uniformly in the current sequence, redraw x' = x[:m] + q-tokens until target_k or
EOS, and accept with probability min(1, A), where

    log A = alpha·(Σ_{i≥m} log p(x'_i) − Σ_{i≥m} log p(x_i))
          + (Σ_{i≥m} log q(x_i) − Σ_{i≥m} log q(x'_i))
          + log|x| − log|x'|

The last term is the Hastings correction for choosing m uniformly over the *current* length: the
forward move picks m with probability 1/|x|, the reverse with 1/|x'|. It matters whenever EOS makes
lengths differ. Proposals run to the block's target length (not to the current length), so with a
single block the chain's state space is every sequence up to T and MH targets pi exactly.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from powersampling.engines.base import ExtendRequest
from powersampling.events import (
    BlockFinished,
    ChainFinished,
    ChainStarted,
    ChainState,
    Checkpoint,
    McmcStepSkipped,
    McmcStepTaken,
    SamplerEvent,
)
from powersampling.params import SamplingParams
from powersampling.sampler.base import ChainOutcome, Draw, Sampler, chain_seed
from powersampling.sampler.budget import BudgetPlan


def log_acceptance_ratio(
    alpha: float,
    current_logp: Sequence[float],
    current_logq: Sequence[float],
    proposal_logp: Sequence[float],
    proposal_logq: Sequence[float],
) -> float:
    """log A for replacing the current suffix by the proposal's (both from the same position m).

    The arguments are the suffixes from m on; the lengths of the whole sequences enter through the
    Hastings term, which only needs the suffix lengths since both share the prefix of length m.
    """
    if not current_logp or not proposal_logp:
        raise ValueError("suffixes must be non-empty")
    return alpha * (math.fsum(proposal_logp) - math.fsum(current_logp)) + (
        math.fsum(current_logq) - math.fsum(proposal_logq)
    )


def hastings_length_term(current_length: int, proposal_length: int) -> float:
    """log|x| − log|x'|: the resample position is uniform over each sequence's own length."""
    return math.log(current_length) - math.log(proposal_length)


@dataclass(slots=True)
class _Chain:
    """Mutable working state of one chain (the sampler's own; events carry frozen copies)."""

    index: int
    seed: int
    tokens: list[int] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    logq: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    blocks_done: int = 0
    tokens_spent: int = 0
    mcmc_steps: int = 0
    accepted_steps: int = 0
    changed_steps: int = 0
    skipped_steps: int = 0

    @classmethod
    def from_state(cls, state: ChainState) -> _Chain:
        return cls(
            index=state.chain_index,
            seed=state.seed,
            tokens=list(state.token_ids),
            logp=list(state.logp),
            logq=list(state.logq),
            finish_reason=state.finish_reason,
            blocks_done=state.blocks_done,
            tokens_spent=state.tokens_spent,
            mcmc_steps=state.mcmc_steps,
            accepted_steps=state.accepted_steps,
            changed_steps=state.changed_steps,
            skipped_steps=state.skipped_steps,
        )

    def snapshot(self) -> ChainState:
        return ChainState(
            chain_index=self.index,
            seed=self.seed,
            blocks_done=self.blocks_done,
            token_ids=tuple(self.tokens),
            logp=tuple(self.logp),
            logq=tuple(self.logq),
            ended=self.finish_reason is not None,
            finish_reason=self.finish_reason,
            tokens_spent=self.tokens_spent,
            mcmc_steps=self.mcmc_steps,
            accepted_steps=self.accepted_steps,
            changed_steps=self.changed_steps,
            skipped_steps=self.skipped_steps,
        )


class PowerSampler(Sampler):
    """Runs chains of one prompt against an engine; pure: it only awaits the engine it is given."""

    plan: BudgetPlan

    def _plan(self, params: SamplingParams) -> BudgetPlan:
        return BudgetPlan.from_params(params)

    @property
    def progress_slots(self) -> int:
        return self.plan.num_blocks

    async def run(self, resume: Mapping[int, ChainState] | None = None) -> list[ChainState]:  # type: ignore[override]
        """Run the request's n chains concurrently (their proposals meet in the engine's batches)."""
        assert self.params.seed is not None
        resume = resume or {}
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(
                        self.run_chain(
                            resume[i]
                            if i in resume
                            else _Chain(i, chain_seed(self.params.seed, i)).snapshot()
                        )
                    )
                    for i in range(self.params.n)
                ]
        except BaseExceptionGroup as failed:
            # The chains fail together (the group cancels the others): report the first cause as
            # itself, so callers can catch EngineError rather than an exception group.
            raise failed.exceptions[0] from None
        return [t.result() for t in tasks]

    async def run_chain(self, start: ChainState) -> ChainState:
        """Advance one chain from `start` (fresh or a checkpoint) to its end."""
        chain = _Chain.from_state(start)
        self._emit(ChainStarted(chain.index, chain.seed, self.progress_slots, chain.blocks_done))
        for k in range(chain.blocks_done, self.plan.num_blocks):
            if chain.finish_reason is not None:
                break
            await self._run_block(chain, k)
        final = chain.snapshot()
        self._emit(ChainFinished(chain.index, final, chain.finish_reason or "length"))
        return final

    async def _run_block(self, chain: _Chain, k: int) -> None:
        # Every random draw of block k comes from its own generator, so a chain resumed at a block
        # boundary continues exactly as the uninterrupted one would have.
        rng = np.random.default_rng([chain.seed, k])
        target = self.plan.block_target(k)
        ext = await self._propose(chain.tokens, chain.logp, chain.logq, target, rng)
        chain.tokens += ext.tokens
        chain.logp += ext.logp
        chain.logq += ext.logq
        chain.finish_reason = ext.finish_reason
        chain.tokens_spent += ext.generated
        block_start = len(chain.tokens) - len(ext.tokens)

        planned = self.plan.steps_for_block(k, chain.tokens_spent)
        revised = False
        for step in range(planned if chain.tokens else 0):
            current_length = len(chain.tokens)
            m = int(rng.integers(0, current_length))
            cost_bound = target - m
            if not self.plan.step_fits(k, chain.tokens_spent, cost_bound):
                chain.skipped_steps += 1
                self._emit(McmcStepSkipped(chain.index, k, step, m, cost_bound))
                continue
            prop = await self._propose(chain.tokens[:m], chain.logp[:m], chain.logq[:m], target, rng)
            chain.tokens_spent += prop.generated
            chain.mcmc_steps += 1
            proposal_length = m + len(prop.tokens)
            log_a = log_acceptance_ratio(
                self.params.alpha, chain.logp[m:], chain.logq[m:], prop.logp, prop.logq
            ) + hastings_length_term(current_length, proposal_length)
            u = rng.random()
            accepted = log_a >= 0.0 or math.log(u) < log_a
            changed = accepted and prop.tokens != chain.tokens[m:]
            if accepted:
                chain.accepted_steps += 1
                chain.tokens[m:] = prop.tokens
                chain.logp[m:] = prop.logp
                chain.logq[m:] = prop.logq
                chain.finish_reason = prop.finish_reason
            if changed:
                chain.changed_steps += 1
                revised = revised or m < block_start
            self._emit(
                McmcStepTaken(
                    chain_index=chain.index,
                    block_index=k,
                    step_index=step,
                    resample_index=m,
                    current_length=current_length,
                    proposal_length=proposal_length,
                    proposal_tokens=prop.generated,
                    log_acceptance_ratio=log_a,
                    accepted=accepted,
                    changed=changed,
                    tokens_spent=chain.tokens_spent,
                )
            )
        chain.blocks_done = k + 1
        self._emit(BlockFinished(chain.index, k, self.plan.num_blocks, planned, revised, chain.snapshot()))

    async def _propose(
        self,
        kept: list[int],
        kept_logp: list[float],
        kept_logq: list[float],
        target: int,
        rng: np.random.Generator,
    ) -> Draw:
        """Draw tokens from q after `kept` until `target` tokens, EOS or a stop string."""
        request = ExtendRequest(
            prefix=self.prompt + tuple(kept),
            max_new_tokens=target - len(kept),
            temperature=self.temperature,
            seed=int(rng.integers(0, 2**63 - 1)),
            stop=self.params.stop,
        )
        (ext,) = await self.engine.extend([request])
        return self._draw(kept, request, ext)

    def finish_reason(self, state: ChainState) -> str:
        return state.finish_reason or "length"

    def text(self, state: ChainState) -> str:
        """The answer's text: generated tokens without special tokens, cut before a stop string."""
        return self.answer_text(state.token_ids)

    def outcome(self, state: Checkpoint) -> ChainOutcome:
        assert isinstance(state, ChainState)
        return ChainOutcome(
            chain_index=state.chain_index,
            token_ids=state.token_ids,
            text=self.text(state),
            finish_reason=self.finish_reason(state),
            tokens_spent=state.tokens_spent,
            mcmc_steps=state.mcmc_steps,
            accepted_steps=state.accepted_steps,
            changed_steps=state.changed_steps,
            skipped_steps=state.skipped_steps,
            log_prob=float(sum(state.logp)),
        )

    def checkpoint_of(self, event: SamplerEvent) -> Checkpoint | None:
        return event.state if isinstance(event, BlockFinished) else None

    def resume_position(self, state: Checkpoint) -> int:
        assert isinstance(state, ChainState)
        return state.blocks_done

    def fits_checkpoint(self, index: int, state: object) -> bool:
        """Whether a stored checkpoint can continue chain `index`: this chain's seed, a block of this
        plan, lengths within that block's target, spend within the budget, known token ids."""
        params, plan = self.params, self.plan
        assert params.seed is not None
        if not isinstance(state, ChainState):
            return False
        if not (0 <= index < params.n and state.chain_index == index):
            return False
        if state.seed != chain_seed(params.seed, index) or not 1 <= state.blocks_done <= plan.num_blocks:
            return False
        length = len(state.token_ids)
        if not length == len(state.logp) == len(state.logq) or length > plan.block_target(
            state.blocks_done - 1
        ):
            return False
        if state.tokens_spent < length or (
            params.token_budget is not None and state.tokens_spent > params.token_budget
        ):
            return False
        vocab = self.engine.vocab_size
        return all(0 <= t < vocab for t in state.token_ids)
