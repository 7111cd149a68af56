"""Power-SMC: sequential Monte Carlo over p(x)^alpha, with particle independent MH across sweeps.

Target for a prompt c: pi(x) ∝ p(x | c)^alpha over sequences up to T tokens (or shorter, ending in
EOS or a stop string). N particles start at the prompt. Every open particle is extended by a chunk of
k tokens from q (the model at temperature tau) in ONE engine call per chunk, and its log-weight grows
by Σ_t (alpha·log p(x_t) − log q(x_t)); with tau = 1/alpha each term is log Z(prefix). After each
chunk the effective sample size ESS = 1 / Σ w̄_i² is checked; below threshold·N the particles are
resampled systematically, log Ẑ += logmeanexp(logw) and the weights reset. Finished particles are
frozen (weight unchanged) but still take part in resampling. At the end one particle is drawn with
probability w̄_i and log Ẑ += logmeanexp(logw): Ẑ is an unbiased estimate of Z = Σ_x p(x)^alpha.

The answer's law is biased for finite N. Particle independent Metropolis–Hastings (Andrieu, Doucet &
Holenstein 2010) removes the bias: run R sweeps, keep the current answer with its Ẑ, and accept a new
sweep's answer with probability min(1, Ẑ'/Ẑ); the chain of answers has pi as its stationary law for
any N. That argument needs Ẑ unbiased. ESS-triggered resampling keeps it so: the decision after chunk
c depends only on the particle system after chunk c, the setting of Whiteley, Lee & Heine's αSMC
(Bernoulli 2016), where Ẑ is unbiased for adaptively chosen resampling. The toy tests check both
E[Ẑ] and the PIMH law with the same schedule as plain SMC.

Optional alpha ramp over the first R_len tokens: alpha_t = 1 + (alpha − 1)·min(1, t / R_len), the
increment of token t is (alpha_t − alpha_{t−1})·Σ_{s<t} log p(x_s) + alpha_t·log p(x_t) − log q(x_t),
and a particle that ends at length L < R_len gets the catch-up (alpha − alpha_L)·Σ log p when it ends,
so the final target is still p^alpha.

Token budget (per chain): particles = min(N, budget // T), and a sweep starts only if the chain's
spent tokens plus particles·T fit the budget (a skipped sweep keeps the current answer). Every random
draw of chunk c of sweep r comes from a generator seeded with [chain seed, r, c], so a chain resumed
from a chunk checkpoint continues exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np

from powersampling.engines.base import ExtendRequest, Extension
from powersampling.errors import EngineError
from powersampling.events import (
    ChainFinished,
    ChainStarted,
    Checkpoint,
    SamplerEvent,
    SmcChunkFinished,
    SmcParticle,
    SmcState,
    SmcSweepFinished,
)
from powersampling.params import SamplingParams
from powersampling.results import SmcStats
from powersampling.sampler.base import ChainOutcome, Sampler, chain_seed

_FINAL_DRAW = 2**32  # the third seed word of a sweep's final draw and PIMH test (chunks use 0, 1, ...)
_MAX_SEED = 2**63 - 1


@dataclass(frozen=True, slots=True)
class SmcPlan:
    """How a Power-SMC chain spends its tokens: particles per sweep, sweeps, chunking, resampling."""

    particles: int  # after the budget's cap
    sweeps: int
    chunk_size: int
    max_new_tokens: int
    resample_threshold: float
    ramp_tokens: int
    token_budget: int | None

    @classmethod
    def from_params(cls, params: SamplingParams) -> SmcPlan:
        particles = params.effective_particles
        if params.token_budget is not None:
            # Validation guarantees token_budget >= max_new_tokens, so at least one particle fits.
            particles = max(1, min(particles, params.token_budget // params.max_new_tokens))
        return cls(
            particles=particles,
            sweeps=params.effective_sweeps,
            chunk_size=params.effective_chunk_size,
            max_new_tokens=params.max_new_tokens,
            resample_threshold=params.effective_resample_threshold,
            ramp_tokens=params.effective_ramp_tokens,
            token_budget=params.token_budget,
        )

    @property
    def chunks_per_sweep(self) -> int:
        return math.ceil(self.max_new_tokens / self.chunk_size)

    @property
    def sweep_cost_bound(self) -> int:
        """The most tokens one sweep can generate: every particle runs to T."""
        return self.particles * self.max_new_tokens

    def sweep_fits(self, tokens_spent: int) -> bool:
        return self.token_budget is None or tokens_spent + self.sweep_cost_bound <= self.token_budget

    def alpha_at(self, alpha: float, length: int) -> float:
        """The tempering exponent after `length` tokens (alpha itself without a ramp)."""
        if self.ramp_tokens == 0:
            return alpha
        return 1.0 + (alpha - 1.0) * min(1.0, length / self.ramp_tokens)


def log_mean_exp(values: np.ndarray) -> float:
    top = float(values.max())
    return top + math.log(float(np.exp(values - top).mean()))


def normalised_weights(log_weights: np.ndarray) -> np.ndarray:
    w = np.exp(log_weights - log_weights.max())
    return w / w.sum()  # type: ignore[no-any-return]


def systematic_resample(weights: np.ndarray, u: float) -> np.ndarray:
    """Ancestor indices: one uniform `u` in [0, 1), N evenly spaced points through the weights' CDF."""
    n = len(weights)
    points = (u + np.arange(n)) / n
    cdf = np.cumsum(weights)
    cdf[-1] = 1.0  # rounding must not leave the last point beyond the CDF
    return np.minimum(np.searchsorted(cdf, points, side="right"), n - 1)


@dataclass(slots=True)
class _Chain:
    """Mutable working state of one Power-SMC chain (events carry frozen SmcState copies)."""

    chain_index: int
    seed: int
    num_particles: int
    sweep_index: int = 0
    chunks_done: int = 0
    particles: list[SmcParticle] = field(default_factory=list)
    sweep_log_z: float = 0.0
    sweep_resamples: int = 0
    sweep_ess_min: float = 1.0
    answer_token_ids: tuple[int, ...] = ()
    answer_logp: tuple[float, ...] = ()
    answer_finish_reason: str | None = None
    answer_log_z: float | None = None
    tokens_spent: int = 0
    sweeps_done: int = 0
    accepted_sweeps: int = 0
    changed_sweeps: int = 0
    skipped_sweeps: int = 0
    resamples: int = 0
    ess_min: float = 1.0
    unique_ancestors: int = 0
    ended: bool = False

    @classmethod
    def from_state(cls, s: SmcState) -> _Chain:
        values = {f.name: getattr(s, f.name) for f in fields(SmcState)}
        return cls(**values | {"particles": list(s.particles)})

    def snapshot(self) -> SmcState:
        values = {f.name: getattr(self, f.name) for f in fields(SmcState)}
        return SmcState(**values | {"particles": tuple(self.particles)})


class SmcSampler(Sampler):
    """Runs the Power-SMC chains of one prompt against an engine; pure: it only awaits the engine."""

    plan: SmcPlan

    def _plan(self, params: SamplingParams) -> SmcPlan:
        return SmcPlan.from_params(params)

    @property
    def progress_slots(self) -> int:
        return self.plan.sweeps * self.plan.chunks_per_sweep

    # -- the interface

    def fresh_state(self, chain_index: int) -> SmcState:
        assert self.params.seed is not None
        return _Chain(chain_index, chain_seed(self.params.seed, chain_index), self.plan.particles).snapshot()

    async def run(self, resume: Mapping[int, Checkpoint] | None = None) -> list[SmcState]:
        """Run the request's n chains concurrently (their chunks meet in the engine's batches)."""
        resume = resume or {}
        starts = []
        for i in range(self.params.n):
            state = resume.get(i)
            starts.append(state if isinstance(state, SmcState) else self.fresh_state(i))
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self.run_chain(s)) for s in starts]
        except BaseExceptionGroup as failed:
            # The chains fail together: report the first cause as itself (an EngineError, say).
            raise failed.exceptions[0] from None
        return [t.result() for t in tasks]

    def outcome(self, state: Checkpoint) -> ChainOutcome:
        assert isinstance(state, SmcState)
        return ChainOutcome(
            chain_index=state.chain_index,
            token_ids=state.answer_token_ids,
            text=self.text(state),
            finish_reason=state.answer_finish_reason or "length",
            tokens_spent=state.tokens_spent,
            mcmc_steps=max(0, state.sweeps_done - 1),
            accepted_steps=state.accepted_sweeps,
            changed_steps=state.changed_sweeps,
            skipped_steps=state.skipped_sweeps,
            log_prob=math.fsum(state.answer_logp),
            smc=SmcStats(
                particles=state.num_particles,
                sweeps=state.sweeps_done,
                accepted_sweeps=state.accepted_sweeps,
                resamples=state.resamples,
                ess_min=state.ess_min,
                unique_ancestors=state.unique_ancestors,
                log_z_hat=state.answer_log_z if state.answer_log_z is not None else 0.0,
            ),
        )

    def checkpoint_of(self, event: SamplerEvent) -> Checkpoint | None:
        if isinstance(event, SmcChunkFinished | SmcSweepFinished):
            return event.state
        return None

    def resume_position(self, state: Checkpoint) -> int:
        assert isinstance(state, SmcState)
        return state.sweep_index * self.plan.chunks_per_sweep + state.chunks_done

    def fits_checkpoint(self, index: int, state: object) -> bool:
        """Whether a stored checkpoint can continue chain `index`: this chain's seed and plan, particle
        lengths the chunks done allow, spend within the budget, known token ids, finite weights."""
        params, plan = self.params, self.plan
        assert params.seed is not None
        if not isinstance(state, SmcState) or state.ended:
            return False
        if not (0 <= index < params.n and state.chain_index == index):
            return False
        if state.seed != chain_seed(params.seed, index) or state.num_particles != plan.particles:
            return False
        if not 0 <= state.sweep_index < plan.sweeps or state.sweeps_done != state.sweep_index:
            return False
        if state.chunks_done == 0:
            if state.particles:
                return False
        elif len(state.particles) != plan.particles or state.chunks_done > plan.max_new_tokens:
            return False
        if (state.answer_log_z is None) != (state.sweep_index == 0):
            return False
        if state.tokens_spent < sum(len(p.token_ids) for p in state.particles):
            return False
        if params.token_budget is not None and state.tokens_spent > params.token_budget:
            return False
        if not state.accepted_sweeps <= max(0, state.sweeps_done - 1) or (
            state.changed_sweeps > state.accepted_sweeps
        ):
            return False
        vocab = self.engine.vocab_size
        limit = min(plan.max_new_tokens, state.chunks_done * plan.chunk_size)
        for p in (*state.particles, None):
            ids, logp = (state.answer_token_ids, state.answer_logp) if p is None else (p.token_ids, p.logp)
            if len(ids) != len(logp) or not all(0 <= t < vocab for t in ids):
                return False
            if p is not None and (
                len(ids) > limit or not math.isfinite(p.log_weight) or not 0 <= p.ancestor < plan.particles
            ):
                return False
        return len(state.answer_token_ids) <= plan.max_new_tokens

    # -- one chain

    async def run_chain(self, start: SmcState) -> SmcState:
        """Advance one chain from `start` (fresh or a checkpoint) to its end."""
        chain = _Chain.from_state(start)
        plan = self.plan
        self._emit(
            ChainStarted(
                chain.chain_index,
                chain.seed,
                self.progress_slots,
                chain.sweep_index * plan.chunks_per_sweep + chain.chunks_done,
            )
        )
        while not chain.ended and chain.sweep_index < plan.sweeps:
            if chain.chunks_done == 0 and not plan.sweep_fits(chain.tokens_spent):
                # Spend only grows, so no later sweep fits either: keep the current answer.
                chain.skipped_sweeps = plan.sweeps - chain.sweep_index
                break
            await self._run_sweep(chain)
        chain.ended = True
        final = chain.snapshot()
        self._emit(ChainFinished(chain.chain_index, final, chain.answer_finish_reason or "length"))
        return final

    async def _run_sweep(self, chain: _Chain) -> None:
        plan = self.plan
        r = chain.sweep_index
        if chain.chunks_done == 0:
            chain.particles = [SmcParticle((), (), 0.0, None, i) for i in range(plan.particles)]
            chain.sweep_log_z, chain.sweep_resamples, chain.sweep_ess_min = 0.0, 0, 1.0
        while any(p.finish_reason is None for p in chain.particles):
            await self._run_chunk(chain, r, chain.chunks_done)

        # The sweep's answer: one particle drawn by weight; log Ẑ gets the last weights' mean.
        log_w = np.array([p.log_weight for p in chain.particles])
        log_z = chain.sweep_log_z + log_mean_exp(log_w)
        rng = np.random.default_rng([chain.seed, r, _FINAL_DRAW])
        pick = int(rng.choice(len(log_w), p=normalised_weights(log_w)))
        answer = chain.particles[pick]
        if chain.answer_log_z is None:
            accepted = True  # the first sweep's answer starts the chain
        else:
            # Particle independent MH: accept with probability min(1, Ẑ'/Ẑ).
            log_ratio = log_z - chain.answer_log_z
            accepted = log_ratio >= 0.0 or math.log(rng.random()) < log_ratio
            if accepted:
                chain.accepted_sweeps += 1
                chain.changed_sweeps += answer.token_ids != chain.answer_token_ids
        if accepted:
            chain.answer_token_ids = answer.token_ids
            chain.answer_logp = answer.logp
            chain.answer_finish_reason = answer.finish_reason
            chain.answer_log_z = log_z
        chain.unique_ancestors = len({p.ancestor for p in chain.particles})
        chain.sweeps_done += 1
        chain.sweep_index += 1
        chain.chunks_done = 0
        chain.particles = []
        self._emit(
            SmcSweepFinished(
                chain_index=chain.chain_index,
                sweep_index=r,
                num_sweeps=plan.sweeps,
                log_z_hat=log_z,
                accepted=accepted,
                answer_token_ids=answer.token_ids,
                state=chain.snapshot(),
            )
        )

    async def _run_chunk(self, chain: _Chain, r: int, c: int) -> None:
        plan = self.plan
        rng = np.random.default_rng([chain.seed, r, c])
        open_ = [i for i, p in enumerate(chain.particles) if p.finish_reason is None]
        requests = [
            ExtendRequest(
                prefix=self.prompt + chain.particles[i].token_ids,
                max_new_tokens=min(plan.chunk_size, plan.max_new_tokens - len(chain.particles[i].token_ids)),
                temperature=self.temperature,
                seed=int(rng.integers(0, _MAX_SEED)),
                stop=self.params.stop,
            )
            for i in open_
        ]
        extensions = await self.engine.extend(requests)
        if len(extensions) != len(requests):
            raise EngineError(f"engine answered {len(extensions)} of {len(requests)} requests")
        for i, request, ext in zip(open_, requests, extensions, strict=True):
            chain.particles[i] = self._extended(chain.particles[i], request, ext)
            chain.tokens_spent += len(ext.token_ids)

        log_w = np.array([p.log_weight for p in chain.particles])
        weights = normalised_weights(log_w)
        ess = float(1.0 / np.square(weights).sum()) / plan.particles
        chain.sweep_ess_min = min(chain.sweep_ess_min, ess)
        chain.ess_min = min(chain.ess_min, ess)
        leader = chain.particles[int(np.argmax(log_w))].token_ids
        alive = sum(p.finish_reason is None for p in chain.particles)
        resampled = False
        # After the last chunk the final draw by weight follows: resampling there would only add noise.
        if alive and ess < plan.resample_threshold:
            chain.sweep_log_z += log_mean_exp(log_w)
            ancestors = systematic_resample(weights, float(rng.random()))
            chain.particles = [replace(chain.particles[a], log_weight=0.0) for a in ancestors]
            chain.sweep_resamples += 1
            chain.resamples += 1
            resampled = True
        chain.chunks_done = c + 1
        self._emit(
            SmcChunkFinished(
                chain_index=chain.chain_index,
                sweep_index=r,
                num_sweeps=plan.sweeps,
                chunk_index=c,
                ess=ess,
                resampled=resampled,
                unique_ancestors=len({p.ancestor for p in chain.particles}),
                particles_alive=alive,
                tokens_spent=chain.tokens_spent,
                leader_token_ids=leader,
                state=chain.snapshot(),
            )
        )

    def _extended(self, particle: SmcParticle, request: ExtendRequest, ext: Extension) -> SmcParticle:
        """The particle after its chunk: new tokens (cut at a stop string), weight, finish reason."""
        draw = self._draw(particle.token_ids, request, ext)
        tokens, logp, logq, finish_reason = draw.tokens, draw.logp, draw.logq, draw.finish_reason
        all_logp = particle.logp + tuple(logp)
        length = len(all_logp)
        if finish_reason is None and length >= self.plan.max_new_tokens:
            finish_reason = "length"
        return SmcParticle(
            token_ids=particle.token_ids + tuple(tokens),
            logp=all_logp,
            log_weight=particle.log_weight
            + self._log_weight_increment(particle.logp, logp, logq, finish_reason),
            finish_reason=finish_reason,
            ancestor=particle.ancestor,
        )

    def _log_weight_increment(
        self,
        kept_logp: Sequence[float],
        new_logp: Sequence[float],
        new_logq: Sequence[float],
        finish_reason: str | None,
    ) -> float:
        """Σ over the new tokens of the incremental log-weight (ramp-aware), plus the catch-up to the
        full alpha when the particle ends."""
        alpha, plan = self.params.alpha, self.plan
        if plan.ramp_tokens == 0:
            return alpha * math.fsum(new_logp) - math.fsum(new_logq)
        terms = []
        prefix_logp = math.fsum(kept_logp)
        t = len(kept_logp)
        for lp, lq in zip(new_logp, new_logq, strict=True):
            a_prev, a_now = plan.alpha_at(alpha, t), plan.alpha_at(alpha, t + 1)
            terms.append((a_now - a_prev) * prefix_logp + a_now * lp - lq)
            prefix_logp += lp
            t += 1
        if finish_reason is not None:
            terms.append((alpha - plan.alpha_at(alpha, t)) * prefix_logp)
        return math.fsum(terms)

    # -- the answer

    def text(self, state: SmcState) -> str:
        """The answer's text: generated tokens without special tokens, cut before a stop string."""
        return self.answer_text(state.answer_token_ids)
