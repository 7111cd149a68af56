"""The operator's caps on one request's work: max_new_tokens, token_budget, n and the planned work.

The planned work is the worst case of proposal tokens a request may generate, over all its chains:
what a slot can be held for. `planned_tokens_per_chain` is the one place that knows each method's
cost; a new method adds its term there.
"""

from __future__ import annotations

from dataclasses import dataclass

from powersampling.config import ServerConfig
from powersampling.errors import InvalidArgument
from powersampling.params import Method, SamplingParams
from powersampling.sampler.budget import BudgetPlan
from powersampling.sampler.smc import SmcPlan


@dataclass(frozen=True, slots=True)
class WorkLimits:
    """The server's caps on what one request may ask for (see ServerConfig)."""

    max_new_tokens: int
    max_token_budget: int
    max_samples: int
    max_planned_tokens: int

    @classmethod
    def from_config(cls, config: ServerConfig) -> WorkLimits:
        return cls(
            max_new_tokens=config.max_new_tokens_limit,
            max_token_budget=config.max_token_budget,
            max_samples=config.max_samples_per_request,
            max_planned_tokens=config.max_planned_tokens,
        )


def planned_tokens_per_chain(params: SamplingParams) -> int:
    """Worst-case proposal tokens of one chain: its initial extensions plus every MCMC proposal.

    A proposal in block k regenerates at most the block's target length, so the worst case is
    T + N * sum_k target_k; a token_budget caps the chain's total (the sampler enforces it).
    Baselines (sample, low-temp, greedy) plan T tokens and no steps; smc plans every particle of
    every sweep running to T.
    """
    if params.method is Method.SMC:
        smc = SmcPlan.from_params(params)
        worst = smc.sweeps * smc.sweep_cost_bound
    else:
        plan = BudgetPlan.from_params(params)
        worst = plan.max_new_tokens + plan.mcmc_steps * sum(
            plan.block_target(k) for k in range(plan.num_blocks)
        )
    if params.token_budget is not None:
        return min(worst, params.token_budget)
    return worst


def planned_tokens(params: SamplingParams) -> int:
    """Worst-case proposal tokens of the whole request (all n chains)."""
    return params.n * planned_tokens_per_chain(params)


def check_work(params: SamplingParams, limits: WorkLimits) -> None:
    """Raise InvalidArgument naming the field when `params` ask for more than the server's caps."""
    if params.max_new_tokens > limits.max_new_tokens:
        raise InvalidArgument(
            "max_new_tokens",
            f"at most {limits.max_new_tokens} (the server's max_new_tokens_limit), "
            f"got {params.max_new_tokens}",
        )
    if params.token_budget is not None and params.token_budget > limits.max_token_budget:
        raise InvalidArgument(
            "token_budget",
            f"at most {limits.max_token_budget} (the server's max_token_budget), got {params.token_budget}",
        )
    if params.n > limits.max_samples:
        raise InvalidArgument("n", f"at most {limits.max_samples} samples per request, got {params.n}")
    planned = planned_tokens(params)
    if planned > limits.max_planned_tokens:
        per_chain = max(limits.max_planned_tokens // params.n, 1)
        if params.method is Method.SMC:
            knobs = f"particles={params.effective_particles}, sweeps={params.effective_sweeps}"
        else:
            knobs = f"block_size={params.block_size}, mcmc_steps={params.mcmc_steps}"
        raise InvalidArgument(
            "token_budget",
            f"the request plans up to {planned} proposal tokens (max_new_tokens={params.max_new_tokens}, "
            f"{knobs}, n={params.n}), over the "
            f"server's max_planned_tokens of {limits.max_planned_tokens}; set a token_budget of at most "
            f"{per_chain} or ask for less",
        )


__all__ = ["WorkLimits", "check_work", "planned_tokens", "planned_tokens_per_chain"]
