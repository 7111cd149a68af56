"""Method smc on the wire: named errors for its fields, its defaults and limits in Describe, and a
real server on loopback answering it on the toy engine."""

from __future__ import annotations

import math
from typing import Any

import grpc
import pytest
from powersampling._proto.v1 import reasoning_pb2 as pb
from powersampling._proto.v1 import reasoning_pb2_grpc as pb_grpc
from powersampling.config import load_config
from powersampling.errors import InvalidArgument
from powersampling.events import SmcChunkFinished, SmcState, SmcSweepFinished
from powersampling.params import MAX_PARTICLES, MAX_SWEEPS, Method, SamplingParams
from powersampling.server.messages import smc_progress_event
from powersampling.server.validation import RequestLimits, validate_reason_request

from tests.server.support import StartServer, collect, rpc_error


def smc_request(**fields: Any) -> pb.ReasonRequest:
    """A quick smc request: 4 particles, chunks of 4 tokens, at most 12 tokens, seeded."""
    if not {"text", "messages", "token_ids"} & fields.keys():
        fields["text"] = "abc?"
    fields.setdefault("method", pb.METHOD_SMC)
    fields.setdefault("max_new_tokens", 12)
    fields.setdefault("particles", 4)
    fields.setdefault("chunk_size", 4)
    fields.setdefault("seed", 7)
    return pb.ReasonRequest(**fields)


# (request, field named at the start of the status message)
BAD_SMC_REQUESTS: list[tuple[pb.ReasonRequest, str]] = [
    (smc_request(particles=0), "particles"),
    (smc_request(particles=MAX_PARTICLES + 1), "particles"),
    (smc_request(particles=2**32 - 1), "particles"),
    (smc_request(sweeps=0), "sweeps"),
    (smc_request(sweeps=MAX_SWEEPS + 1), "sweeps"),
    (smc_request(resample_threshold=0.0), "resample_threshold"),
    (smc_request(resample_threshold=-0.5), "resample_threshold"),
    (smc_request(resample_threshold=1.01), "resample_threshold"),
    (smc_request(resample_threshold=math.nan), "resample_threshold"),
    (smc_request(resample_threshold=math.inf), "resample_threshold"),
    (smc_request(chunk_size=0), "chunk_size"),
    (smc_request(chunk_size=2_000_000), "chunk_size"),
    (smc_request(ramp_tokens=2_000_000), "ramp_tokens"),
    (smc_request(block_size=4), "block_size"),  # power's knobs are refused with smc, not ignored
    (smc_request(mcmc_steps=0), "mcmc_steps"),
    # SMC fields on another method
    (pb.ReasonRequest(text="abc?", method=pb.METHOD_POWER, particles=4), "particles"),
    (pb.ReasonRequest(text="abc?", sweeps=2), "sweeps"),  # the server's default method is power
    (pb.ReasonRequest(text="abc?", method=pb.METHOD_GREEDY, resample_threshold=0.5), "resample_threshold"),
    (pb.ReasonRequest(text="abc?", method=pb.METHOD_SAMPLE, chunk_size=8), "chunk_size"),
    (pb.ReasonRequest(text="abc?", method=pb.METHOD_LOW_TEMP, ramp_tokens=0), "ramp_tokens"),
]


async def test_every_bad_smc_field_is_named_and_the_server_keeps_serving(
    stub: pb_grpc.ReasoningServiceStub,
) -> None:
    failures = []
    for request, field in BAD_SMC_REQUESTS:
        error = None
        try:
            await collect(stub, request)
        except grpc.aio.AioRpcError as exc:
            error = exc
        if error is None:
            failures.append(f"{request}: accepted")
        elif error.code() != grpc.StatusCode.INVALID_ARGUMENT or not (error.details() or "").startswith(
            f"{field}: "
        ):
            failures.append(f"{field}: {error.code().name} {error.details()!r}")
    assert not failures, "\n".join(failures)
    assert (await collect(stub, pb.ReasonRequest(text="abc?", max_new_tokens=4, seed=1)))[-1].HasField(
        "final"
    )


@pytest.fixture
async def stub(channel: grpc.aio.Channel) -> pb_grpc.ReasoningServiceStub:
    return pb_grpc.ReasoningServiceStub(channel)


# --- validate_reason_request without a server ------------------------------------------------------

LIMITS = RequestLimits(max_samples_per_request=4, max_prompt_chars=100, max_context_tokens=8192)
SERVER_SMC = {"particles": 8, "sweeps": 2, "resample_threshold": 0.25, "chunk_size": 16, "ramp_tokens": 0}


def test_an_smc_request_takes_the_servers_smc_defaults_and_its_own_fields_win() -> None:
    request = pb.ReasonRequest(text="hi", method=pb.METHOD_SMC, particles=3, resample_threshold=1.0)
    params = validate_reason_request(request, SamplingParams(), LIMITS, smc_defaults=SERVER_SMC).params
    assert params.method is Method.SMC
    assert (params.particles, params.sweeps, params.resample_threshold) == (3, 2, 1.0)
    assert (params.chunk_size, params.ramp_tokens) == (16, 0)
    # Without server SMC defaults the method's own apply (the fields stay unset).
    params = validate_reason_request(request, SamplingParams(), LIMITS).params
    assert params.particles == 3 and params.sweeps is None and params.effective_sweeps == 1


def test_a_server_defaulting_to_smc_still_serves_other_methods() -> None:
    defaults = SamplingParams(method=Method.SMC, particles=8, max_new_tokens=20)
    valid = validate_reason_request(pb.ReasonRequest(text="hi"), defaults, LIMITS)
    assert valid.params == defaults
    power = validate_reason_request(pb.ReasonRequest(text="hi", method=pb.METHOD_POWER), defaults, LIMITS)
    assert power.params.method is Method.POWER and power.params.particles is None
    with pytest.raises(InvalidArgument, match=r"^particles: applies to method smc only"):
        validate_reason_request(
            pb.ReasonRequest(text="hi", method=pb.METHOD_POWER, particles=8), defaults, LIMITS
        )


# --- Describe --------------------------------------------------------------------------------------


async def test_describe_shows_smc_defaults_and_limits(start_server: StartServer) -> None:
    server = await start_server(default_particles=8, default_chunk_size=16)
    async with grpc.aio.insecure_channel(server.target) as channel:
        description = await pb_grpc.ReasoningServiceStub(channel).Describe(pb.DescribeRequest())
    defaults = description.defaults
    assert defaults.method == pb.METHOD_POWER  # the default method stays power sampling
    assert (defaults.particles, defaults.sweeps, defaults.chunk_size, defaults.ramp_tokens) == (8, 1, 16, 0)
    assert defaults.resample_threshold == 0.5
    assert (description.limits.max_particles, description.limits.max_sweeps) == (MAX_PARTICLES, MAX_SWEEPS)


async def test_config_smc_defaults_apply_to_smc_requests(start_server: StartServer) -> None:
    server = await start_server(default_particles=3, default_sweeps=2)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        events = await collect(stub, smc_request(particles=None))
        started, final = events[0].started, events[-1].final
        assert (started.params.particles, started.params.sweeps) == (3, 2)
        assert (final.answers[0].stats.smc.particles, final.answers[0].stats.smc.sweeps) == (3, 2)
    with pytest.raises(InvalidArgument, match=r"^default_particles: "):
        load_config(default_particles=0)


# --- a real server answering method smc -------------------------------------------------------------


async def test_a_server_answers_smc_with_progress_and_statistics(stub: pb_grpc.ReasoningServiceStub) -> None:
    request = smc_request(sweeps=2, n=2)
    events = await collect(stub, request)
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "started" and kinds[-1] == "final" and set(kinds[1:-1]) == {"progress"}
    started = events[0].started
    assert started.params.method == pb.METHOD_SMC
    assert (started.params.particles, started.params.sweeps, started.params.chunk_size) == (4, 2, 4)
    assert started.params.resample_threshold == 0.5 and started.params.ramp_tokens == 0
    assert started.num_blocks == 2 * 3  # sweeps x chunks of 4 in 12 tokens
    assert started.temperature == pytest.approx(0.25)

    progress = [e.progress for e in events if e.HasField("progress")]
    for chain in (0, 1):
        mine = [p for p in progress if p.chain_index == chain]
        chunks = [p for p in mine if not p.sweep_finished]
        sweeps = [p for p in mine if p.sweep_finished]
        assert chunks and [p.sweep_index for p in sweeps] == [0, 1]
        assert all(p.num_sweeps == 2 and p.num_blocks == 6 for p in mine)
        assert all(0.0 < p.ess <= 1.0 and 1 <= p.unique_ancestors <= 4 for p in chunks)
        assert all(0 <= p.particles_alive <= 4 and p.block_index < 6 for p in chunks)
        assert all(p.HasField("log_z_hat") and math.isfinite(p.log_z_hat) for p in sweeps)
        assert not any(p.HasField("log_z_hat") for p in chunks)
        assert sweeps[0].sweep_accepted  # the first sweep's answer is always kept
        spent = [p.tokens_spent for p in mine]
        assert spent == sorted(spent)  # spending only grows
        # `revised` says exactly whether the text stopped extending the one shown before.
        shown = ""
        for p in mine:
            assert p.revised == (not p.text.startswith(shown)), (shown, p.text)
            shown = p.text

    final = events[-1].final
    assert [a.chain_index for a in final.answers] == [0, 1]
    for answer in final.answers:
        smc = answer.stats.smc
        assert answer.stats.HasField("smc") and (smc.particles, smc.sweeps) == (4, 2)
        assert 0.0 < smc.ess_min <= 1.0 and 1 <= smc.unique_ancestors <= 4 and math.isfinite(smc.log_z_hat)
        assert answer.stats.mcmc_steps == 1 and smc.accepted_sweeps <= 1
        assert answer.stats.tokens_spent >= len(answer.token_ids)
        last_sweep = [p for p in progress if p.chain_index == answer.chain_index and p.sweep_finished][-1]
        assert last_sweep.text == answer.text  # the kept answer, as the last progress showed it
    again = (await collect(stub, request))[-1].final
    assert _same_answers(final, again)  # the same seed and fields give the same answers


def _same_answers(a: pb.Final, b: pb.Final) -> bool:
    return [(x.text, list(x.token_ids), x.stats.smc) for x in a.answers] == [
        (x.text, list(x.token_ids), x.stats.smc) for x in b.answers
    ]


async def test_other_methods_carry_no_smc_fields(stub: pb_grpc.ReasoningServiceStub) -> None:
    events = await collect(stub, pb.ReasonRequest(text="abc?", max_new_tokens=8, block_size=4, seed=1))
    assert not events[0].started.params.HasField("particles")
    assert all(e.progress.num_sweeps == 0 for e in events if e.HasField("progress"))
    assert not events[-1].final.answers[0].stats.HasField("smc")


async def test_an_unknown_method_names_smc_among_the_known(stub: pb_grpc.ReasoningServiceStub) -> None:
    error = await rpc_error(stub, pb.ReasonRequest(text="abc?", method=99))  # type: ignore[arg-type]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "METHOD_SMC" in (error.details() or "")


# --- the Progress message of an SMC event, from plain values ----------------------------------------


def _state(**fields: Any) -> SmcState:
    values: dict[str, Any] = {
        "chain_index": 0,
        "seed": 1,
        "num_particles": 4,
        "sweep_index": 1,
        "chunks_done": 2,
        "particles": (),
        "sweep_log_z": 0.0,
        "sweep_resamples": 1,
        "sweep_ess_min": 0.5,
        "answer_token_ids": (1, 2, 3),
        "answer_logp": (-1.0, -1.0, -1.0),
        "answer_finish_reason": "eos",
        "answer_log_z": -3.0,
        "tokens_spent": 40,
        "sweeps_done": 3,
        "accepted_sweeps": 1,
        "changed_sweeps": 1,
        "skipped_sweeps": 0,
        "resamples": 2,
        "ess_min": 0.4,
        "unique_ancestors": 2,
        "ended": False,
    }
    return SmcState(**{**values, **fields})


def test_smc_progress_counts_chunk_slots_over_sweeps_and_pimh_steps() -> None:
    params = SamplingParams(method=Method.SMC, max_new_tokens=10, chunk_size=4, sweeps=3, token_budget=200)
    chunk = SmcChunkFinished(
        chain_index=1,
        sweep_index=1,
        num_sweeps=3,
        chunk_index=2,
        ess=0.75,
        resampled=True,
        unique_ancestors=2,
        particles_alive=0,
        tokens_spent=40,
        leader_token_ids=(1, 2, 3, 4, 5),
        state=_state(),
    )
    p = smc_progress_event(chunk, params=params, text="abcab", revised=False).progress
    assert (p.chain_index, p.block_index, p.num_blocks) == (1, 1 * 3 + 2, 3 * 3)  # 3 chunks of 4 in 10
    assert (p.sweep_index, p.num_sweeps, p.ess, p.resampled) == (1, 3, 0.75, True)
    assert (p.unique_ancestors, p.particles_alive, p.finished, p.num_tokens) == (2, 0, True, 5)
    assert (p.mcmc_steps, p.acceptance_rate, p.change_rate) == (2, 0.5, 0.5)  # 3 sweeps done: 2 PIMH steps
    assert (p.tokens_spent, p.token_budget, p.text) == (40, 200, "abcab")
    assert not p.sweep_finished and not p.HasField("log_z_hat")
    sweep = SmcSweepFinished(
        chain_index=1,
        sweep_index=1,
        num_sweeps=3,
        log_z_hat=-2.5,
        accepted=False,
        answer_token_ids=(4, 4),
        state=_state(),
    )
    p = smc_progress_event(sweep, params=params, text="abc", revised=True).progress
    assert p.sweep_finished and not p.sweep_accepted and p.log_z_hat == -2.5 and p.revised
    assert (p.block_index, p.num_tokens, p.finished) == (5, 3, True)  # the kept answer's tokens


async def test_a_server_whose_default_method_is_smc(start_server: StartServer) -> None:
    config = load_config(default_method="smc", default_particles=4, default_chunk_size=4)
    assert config.default_params().method is Method.SMC and config.default_params().particles == 4
    server = await start_server(default_method="smc", default_particles=3, default_chunk_size=4)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        events = await collect(stub, pb.ReasonRequest(text="abc?", max_new_tokens=8, seed=2))
        assert events[0].started.params.method == pb.METHOD_SMC
        assert events[-1].final.answers[0].stats.smc.particles == 3
        # Power sampling still works there, without the SMC defaults leaking into it.
        power = await collect(stub, pb.ReasonRequest(text="abc?", method=pb.METHOD_POWER, max_new_tokens=8))
        assert not power[0].started.params.HasField("particles")
        assert not power[-1].final.answers[0].stats.HasField("smc")
        description = await stub.Describe(pb.DescribeRequest())
        assert description.defaults.method == pb.METHOD_SMC and description.defaults.particles == 3


def test_smc_plans_every_particle_of_every_sweep_to_the_end() -> None:
    from powersampling.server.limits import WorkLimits, check_work, planned_tokens_per_chain

    params = SamplingParams(method=Method.SMC, particles=8, sweeps=3, max_new_tokens=100)
    assert planned_tokens_per_chain(params) == 8 * 3 * 100
    assert (
        planned_tokens_per_chain(SamplingParams(method=Method.SMC, max_new_tokens=100, token_budget=500))
        == 500
    )
    limits = WorkLimits(max_new_tokens=1000, max_token_budget=10**6, max_samples=4, max_planned_tokens=2000)
    with pytest.raises(InvalidArgument, match=r"^token_budget: .*particles=8, sweeps=3"):
        check_work(params, limits)
