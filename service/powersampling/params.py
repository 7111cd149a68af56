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
MAX_PARTICLES = 256
MAX_SWEEPS = 64

# Power-SMC's defaults (DESIGN.md §1): particles, sweeps (1 = plain SMC), resampling threshold on the
# ESS as a fraction of the particles, tokens between ESS checks, alpha-ramp length (0 = none).
DEFAULT_PARTICLES = 16
DEFAULT_SWEEPS = 1
DEFAULT_RESAMPLE_THRESHOLD = 0.5
DEFAULT_CHUNK_SIZE = 32
DEFAULT_RAMP_TOKENS = 0
SMC_FIELDS = ("particles", "sweeps", "resample_threshold", "chunk_size", "ramp_tokens")


class Method(StrEnum):
    """How to sample: power sampling (Metropolis-Hastings or Power-SMC over p^alpha) or a plain baseline."""

    POWER = "power"
    SMC = "smc"  # Power-SMC: particles over p^alpha, optionally particle independent MH across sweeps
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
    # Power-SMC only (None: the method's default applies; see the effective_* properties).
    particles: int | None = None
    sweeps: int | None = None
    resample_threshold: float | None = None
    chunk_size: int | None = None
    ramp_tokens: int | None = None

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
        self._check_smc_fields()

    def _check_smc_fields(self) -> None:
        if self.method is not Method.SMC:
            for name in SMC_FIELDS:
                if getattr(self, name) is not None:
                    raise InvalidArgument(name, f"applies to method {Method.SMC.value} only")
            return
        if self.particles is not None:
            _check_int("particles", self.particles, low=1, high=MAX_PARTICLES)
        if self.sweeps is not None:
            _check_int("sweeps", self.sweeps, low=1, high=MAX_SWEEPS)
        if self.resample_threshold is not None:
            _check_float("resample_threshold", self.resample_threshold, low=0.0, high=1.0)
            if self.resample_threshold <= 0.0:
                raise InvalidArgument("resample_threshold", "must be greater than 0 and at most 1")
        if self.chunk_size is not None:
            _check_int("chunk_size", self.chunk_size, low=1, high=MAX_TOKENS_LIMIT)
        if self.ramp_tokens is not None:
            _check_int("ramp_tokens", self.ramp_tokens, low=0, high=MAX_TOKENS_LIMIT)

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

    @property
    def effective_particles(self) -> int:
        """Particles per SMC sweep before the token budget caps them (see the SMC plan)."""
        return DEFAULT_PARTICLES if self.particles is None else self.particles

    @property
    def effective_sweeps(self) -> int:
        return DEFAULT_SWEEPS if self.sweeps is None else self.sweeps

    @property
    def effective_resample_threshold(self) -> float:
        return DEFAULT_RESAMPLE_THRESHOLD if self.resample_threshold is None else self.resample_threshold

    @property
    def effective_chunk_size(self) -> int:
        """Tokens between ESS checks, never more than max_new_tokens."""
        chunk = DEFAULT_CHUNK_SIZE if self.chunk_size is None else self.chunk_size
        return min(chunk, self.max_new_tokens)

    @property
    def effective_ramp_tokens(self) -> int:
        return DEFAULT_RAMP_TOKENS if self.ramp_tokens is None else self.ramp_tokens

    def with_seed(self, seed: int) -> SamplingParams:
        return replace(self, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (the cache key hashes them). The SMC fields appear for method smc only, with
        the values in force, so an explicit default and an omitted field give the same dict and the
        other methods' dicts (and cache keys) are as before the SMC fields existed."""
        d = asdict(self)
        d["method"] = self.method.value
        d["stop"] = list(self.stop)
        for name in SMC_FIELDS:
            if self.method is Method.SMC:
                d[name] = getattr(self, f"effective_{name}")
            else:
                del d[name]
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
