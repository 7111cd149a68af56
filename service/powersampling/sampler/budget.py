"""The token budget: how many MCMC steps each block gets, and which steps fit.

A request's budget caps its total proposal tokens: initial extensions plus every MCMC proposal,
accepted or not (prompt tokens excluded). Two rules keep the total under it:

* Planning. At the start of each block, the steps still wanted (N per remaining block, each costing
  (L+1)/2 tokens on average at block length L) are scaled down to what the budget has left after
  reserving the worst case of the remaining initial extensions.
* Enforcement. A step that resamples from position m can generate at most target - m tokens. If that
  bound does not fit what is left (minus the same reserve), the step is skipped: the chain stays put.
  The bound depends on m alone, the same for the forward and the reverse move, so a skipped step is a
  Metropolis-Hastings kernel that still leaves p^alpha invariant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from powersampling.params import SamplingParams


@dataclass(frozen=True, slots=True)
class BudgetPlan:
    max_new_tokens: int
    block_size: int
    mcmc_steps: int
    token_budget: int | None

    @classmethod
    def from_params(cls, params: SamplingParams) -> BudgetPlan:
        return cls(
            max_new_tokens=params.max_new_tokens,
            block_size=params.effective_block_size,
            mcmc_steps=params.effective_mcmc_steps,
            token_budget=params.token_budget,
        )

    @property
    def num_blocks(self) -> int:
        return math.ceil(self.max_new_tokens / self.block_size)

    def block_target(self, block_index: int) -> int:
        """Length the chain reaches at the end of block `block_index` unless it stops earlier."""
        return min(self.max_new_tokens, (block_index + 1) * self.block_size)

    def reserve_after(self, block_index: int) -> int:
        """Worst-case tokens the initial extensions of the later blocks may still need."""
        return self.max_new_tokens - self.block_target(block_index)

    def steps_for_block(self, block_index: int, tokens_spent: int) -> int:
        """MCMC steps planned for this block, given what the chain has spent so far."""
        if self.mcmc_steps == 0 or self.token_budget is None:
            return self.mcmc_steps
        available = self.token_budget - tokens_spent - self.reserve_after(block_index)
        if available <= 0:
            return 0
        wanted = sum(
            self.mcmc_steps * (self.block_target(j) + 1) / 2 for j in range(block_index, self.num_blocks)
        )
        if wanted <= available:
            return self.mcmc_steps
        return math.floor(self.mcmc_steps * available / wanted)

    def step_fits(self, block_index: int, tokens_spent: int, cost_bound: int) -> bool:
        """Whether a proposal of at most `cost_bound` tokens keeps the total within budget."""
        if self.token_budget is None:
            return True
        return tokens_spent + cost_bound + self.reserve_after(block_index) <= self.token_budget
