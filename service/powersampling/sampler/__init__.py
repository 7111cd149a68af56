"""The samplers of p^alpha: pure algorithms, driven through an engine; no I/O of their own."""

from powersampling.sampler.base import ChainOutcome, Sampler, chain_seed, make_sampler
from powersampling.sampler.budget import BudgetPlan
from powersampling.sampler.mh import PowerSampler, hastings_length_term, log_acceptance_ratio
from powersampling.sampler.smc import SmcPlan, SmcSampler

__all__ = [
    "BudgetPlan",
    "ChainOutcome",
    "PowerSampler",
    "Sampler",
    "SmcPlan",
    "SmcSampler",
    "chain_seed",
    "hastings_length_term",
    "log_acceptance_ratio",
    "make_sampler",
]
