"""The power sampler: pure algorithm, driven through an engine; no I/O of its own."""

from powersampling.sampler.budget import BudgetPlan
from powersampling.sampler.mh import PowerSampler, chain_seed, hastings_length_term, log_acceptance_ratio

__all__ = ["BudgetPlan", "PowerSampler", "chain_seed", "hastings_length_term", "log_acceptance_ratio"]
