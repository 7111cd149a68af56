"""Sampling parameters: one validated value that every layer (CLI, server, cache, sampler) shares."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from powersampling.errors import InvalidArgument

# Hard limits that keep one request from exhausting the machine; beyond them a value is absurd.
MAX_TOKENS_LIMIT = 1_000_000
MAX_BUDGET_LIMIT = 1_000_000_000
MAX_MCMC_STEPS = 10_000
MAX_ALPHA = 1_000.0
MAX_TEMPERATURE = 100.0
MAX_SAMPLES = 1_000_000  # the server caps n far lower (see config)
MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256
MAX_SEED = 2**63 - 1


class Method(StrEnum):
    """How to sample: power sampling (Metropolis-Hastings over p^alpha) or a plain baseline."""

    POWER = "power"
    SAMPLE = "sample"  # plain sampling at temperature 1
    LOW_TEMP = "low-temp"  # plain sampling at the proposal temperature (1/alpha by default)
    GREEDY = "greedy"


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Every knob of one request. Construction validates; an invalid value raises InvalidArgument.

    Defaults are the paper's: alpha = 4, proposal temperature 1/alpha, N = 10 MCMC steps per block,
    T = 3072 max new tokens, B = 192 tokens per block.
    """

    method: Method = Method.POWER
    alpha: float = 4.0
    proposal_temperature: float | None = None  # None: 1/alpha
    block_size: int = 192
    max_new_tokens: int = 3072
    mcmc_steps: int = 10
    token_budget: int | None = None  # None: no cap beyond what the plan needs
    seed: int | None = None  # None: a fresh random seed, reported with the result
    stop: tuple[str, ...] = field(default=())
    n: int = 1

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "method", Method(self.method))
        except ValueError:
            raise InvalidArgument(
                "method", f"unknown method {self.method!r}; use one of {', '.join(m.value for m in Method)}"
            ) from None
        object.__setattr__(self, "stop", tuple(self.stop))
        _check_float("alpha", self.alpha, low=1.0, high=MAX_ALPHA)
        if self.proposal_temperature is not None:
            _check_float("proposal_temperature", self.proposal_temperature, low=0.0, high=MAX_TEMPERATURE)
            if self.proposal_temperature <= 0.0:
                raise InvalidArgument("proposal_temperature", "must be greater than 0")
        _check_int("block_size", self.block_size, low=1, high=MAX_TOKENS_LIMIT)
        _check_int("max_new_tokens", self.max_new_tokens, low=1, high=MAX_TOKENS_LIMIT)
        _check_int("mcmc_steps", self.mcmc_steps, low=0, high=MAX_MCMC_STEPS)
        _check_int("n", self.n, low=1, high=MAX_SAMPLES)
        if self.seed is not None:
            _check_int("seed", self.seed, low=0, high=MAX_SEED)
        if self.token_budget is not None:
            _check_int("token_budget", self.token_budget, low=1, high=MAX_BUDGET_LIMIT)
            if self.token_budget < self.max_new_tokens:
                raise InvalidArgument(
                    "token_budget",
                    f"{self.token_budget} is below max_new_tokens ({self.max_new_tokens}); the budget must "
                    "cover at least one full generation",
                )
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidArgument("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise InvalidArgument("stop", "stop strings must be non-empty strings")
            if len(s) > MAX_STOP_LENGTH:
                raise InvalidArgument("stop", f"a stop string is longer than {MAX_STOP_LENGTH} characters")

    @property
    def temperature(self) -> float:
        """The temperature of the proposal (or of the baseline's sampling); 0 means greedy."""
        if self.method is Method.GREEDY:
            return 0.0
        if self.method is Method.SAMPLE:
            return 1.0
        if self.proposal_temperature is not None:
            return self.proposal_temperature
        return 1.0 / self.alpha

    @property
    def effective_block_size(self) -> int:
        """Baselines run as one block; power sampling's blocks never exceed max_new_tokens."""
        if self.method is not Method.POWER:
            return self.max_new_tokens
        return min(self.block_size, self.max_new_tokens)

    @property
    def effective_mcmc_steps(self) -> int:
        return self.mcmc_steps if self.method is Method.POWER else 0

    def with_seed(self, seed: int) -> SamplingParams:
        return replace(self, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["method"] = self.method.value
        d["stop"] = list(self.stop)
        return d


def _check_float(name: str, value: object, *, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(name, f"must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise InvalidArgument(name, f"must be finite, got {value}")
    if not low <= value <= high:
        raise InvalidArgument(name, f"must be between {low:g} and {high:g}, got {value:g}")


def _check_int(name: str, value: object, *, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(name, f"must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidArgument(name, f"must be between {low} and {high}, got {value}")
