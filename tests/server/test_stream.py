"""The Reason stream against a real server: event order and content, determinism, cache, Describe."""

from __future__ import annotations

import itertools

import grpc
from powersampling._proto.v1 import reasoning_pb2 as pb
from powersampling._proto.v1 import reasoning_pb2_grpc as pb_grpc
from powersampling.server.app import RunningServer

from tests.server.support import MemoryCache, StartServer, collect, small_request


def _kinds(events: list[pb.ReasonEvent]) -> list[str]:
    return [e.WhichOneof("event") for e in events]


async def test_started_then_progress_per_block_then_final(stub: pb_grpc.ReasoningServiceStub) -> None:
    events = await collect(stub, small_request())
    kinds = _kinds(events)
    assert kinds[0] == "started" and kinds[-1] == "final"
    assert set(kinds[1:-1]) == {"progress"}

    started = events[0].started
    assert started.request_id and started.cache_status == pb.CACHE_STATUS_DISABLED
    assert started.prompt_tokens == 4  # "abc?"
    assert started.num_blocks == 3 and started.seed == 7 and started.HasField("seed")
    assert started.params.method == pb.METHOD_POWER and started.params.block_size == 4
    assert started.params.mcmc_steps == 3 and started.params.alpha == 4.0 and started.params.n == 1
    assert started.temperature == 0.25  # 1/alpha
    assert (started.model, started.engine) == ("toy-test", "toy")

    final = events[-1].final
    assert final.request_id == started.request_id
    assert final.cache_status == pb.CACHE_STATUS_DISABLED and not final.cache_hit
    assert (final.model, final.engine, final.prompt_tokens) == ("toy-test", "toy", 4)
    assert final.latency_ms > 0
    (answer,) = final.answers
    assert answer.seed == 7 and answer.chain_index == 0
    assert answer.finish_reason in (pb.FINISH_REASON_EOS, pb.FINISH_REASON_LENGTH)
    assert 0 < len(answer.token_ids) <= 12
    stats = answer.stats
    assert stats.mcmc_steps == stats.accepted + (stats.mcmc_steps - stats.accepted)
    assert 0 <= stats.changed <= stats.accepted <= stats.mcmc_steps
    assert stats.acceptance_rate == (stats.accepted / stats.mcmc_steps if stats.mcmc_steps else 0.0)
    assert stats.tokens_spent >= len(answer.token_ids) and stats.log_prob < 0

    # One progress per finished block, in order; the last one shows the final text and stats.
    progress = [e.progress for e in events[1:-1]]
    assert [p.block_index for p in progress] == list(range(len(progress)))
    assert 1 <= len(progress) <= 3
    assert all(p.num_blocks == 3 and p.chain_index == 0 for p in progress)
    assert [p.mcmc_steps for p in progress] == sorted(p.mcmc_steps for p in progress)
    assert [p.tokens_spent for p in progress] == sorted(p.tokens_spent for p in progress)
    last = progress[-1]
    assert last.text == answer.text and last.num_tokens == len(answer.token_ids)
    assert last.mcmc_steps == stats.mcmc_steps and last.tokens_spent == stats.tokens_spent
    assert last.acceptance_rate == stats.acceptance_rate and last.change_rate == stats.change_rate
    for earlier, later in itertools.pairwise(progress):
        if not later.revised:  # unrevised text only grows
            assert later.text.startswith(earlier.text)


async def test_a_seeded_request_gives_the_same_answer_twice(stub: pb_grpc.ReasoningServiceStub) -> None:
    first = (await collect(stub, small_request(seed=123)))[-1].final.answers[0]
    second = (await collect(stub, small_request(seed=123)))[-1].final.answers[0]
    assert (first.text, list(first.token_ids)) == (second.text, list(second.token_ids))
    assert first.stats.log_prob == second.stats.log_prob
    other = (await collect(stub, small_request(seed=124, max_new_tokens=24)))[-1].final.answers[0]
    assert list(other.token_ids) != list(first.token_ids)


async def test_an_unseeded_request_reports_the_seed_it_drew(stub: pb_grpc.ReasoningServiceStub) -> None:
    request = small_request()
    request.ClearField("seed")
    events = await collect(stub, request)
    assert not events[0].started.HasField("seed")
    answer = events[-1].final.answers[0]
    again = (await collect(stub, small_request(seed=answer.seed)))[-1].final.answers[0]
    assert list(again.token_ids) == list(answer.token_ids)


async def test_several_samples_stream_progress_per_chain(stub: pb_grpc.ReasoningServiceStub) -> None:
    events = await collect(stub, small_request(n=3))
    final = events[-1].final
    assert [a.chain_index for a in final.answers] == [0, 1, 2]
    assert len({tuple(a.token_ids) for a in final.answers}) > 1  # independent chains
    for chain in range(3):
        blocks = [e.progress.block_index for e in events[1:-1] if e.progress.chain_index == chain]
        assert blocks == list(range(len(blocks))) and blocks
        last = next(
            e.progress for e in reversed(events) if e.HasField("progress") and e.progress.chain_index == chain
        )
        assert last.text == final.answers[chain].text


async def test_baselines_and_prompt_kinds(stub: pb_grpc.ReasoningServiceStub) -> None:
    greedy = await collect(stub, small_request(method=pb.METHOD_GREEDY))
    assert greedy[0].started.temperature == 0.0 and greedy[0].started.num_blocks == 1
    assert greedy[-1].final.answers[0].stats.mcmc_steps == 0
    by_ids = await collect(
        stub, small_request(token_ids=pb.TokenIds(ids=[1, 2, 3, 4]), method=pb.METHOD_GREEDY)
    )
    assert by_ids[-1].final.answers[0].text == greedy[-1].final.answers[0].text
    sample = await collect(stub, small_request(method=pb.METHOD_SAMPLE))
    assert sample[0].started.temperature == 1.0


async def test_stop_strings_end_and_trim_the_answer(stub: pb_grpc.ReasoningServiceStub) -> None:
    events = await collect(stub, small_request(stop=["c"], max_new_tokens=40, block_size=8, seed=3))
    answer = events[-1].final.answers[0]
    assert "c" not in answer.text
    if answer.finish_reason == pb.FINISH_REASON_STOP:
        assert events[-2].progress.text == answer.text and events[-2].progress.finished


async def test_cache_hit_replays_the_answer_without_engine_work(start_server: StartServer) -> None:
    cache = MemoryCache()
    server = await start_server(cache=cache)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        first = await collect(stub, small_request(seed=5))
        assert first[0].started.cache_status == pb.CACHE_STATUS_MISS
        engine = server.engine
        assert engine is not None
        work = engine.sequences_run  # type: ignore[attr-defined]
        second = await collect(stub, small_request(seed=5))
        assert _kinds(second) == ["started", "final"]
        assert second[0].started.cache_status == pb.CACHE_STATUS_HIT
        assert second[-1].final.cache_hit and second[-1].final.cache_status == pb.CACHE_STATUS_HIT
        assert list(second[-1].final.answers[0].token_ids) == list(first[-1].final.answers[0].token_ids)
        assert engine.sequences_run == work  # type: ignore[attr-defined]
        bypass = await collect(stub, small_request(seed=5, cache_policy=pb.CACHE_POLICY_BYPASS))
        assert bypass[0].started.cache_status == pb.CACHE_STATUS_BYPASS
        unseeded = small_request()
        unseeded.ClearField("seed")
        assert (await collect(stub, unseeded))[0].started.cache_status == pb.CACHE_STATUS_UNCACHEABLE


async def test_tenants_do_not_share_cache_entries(start_server: StartServer) -> None:
    server = await start_server(cache=MemoryCache())
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        await collect(stub, small_request(seed=9, tenant="alpha"))
        other = await collect(stub, small_request(seed=9, tenant="beta"))
        assert other[0].started.cache_status == pb.CACHE_STATUS_MISS
        same = await collect(stub, small_request(seed=9, tenant="alpha"))
        assert same[0].started.cache_status == pb.CACHE_STATUS_HIT


async def test_describe(stub: pb_grpc.ReasoningServiceStub, server: RunningServer) -> None:
    description = await stub.Describe(pb.DescribeRequest())
    assert (description.model, description.engine, description.fingerprint) == (
        "toy-test",
        "toy",
        "toy-test-v1",
    )
    assert description.max_context_tokens == 4096 and not description.has_chat_template
    assert description.defaults.alpha == 4.0 and description.defaults.block_size == 192
    assert description.defaults.mcmc_steps == 10 and description.defaults.max_new_tokens == 3072
    assert not description.defaults.HasField("seed")
    limits = description.limits
    assert limits.max_samples_per_request == server.config.max_samples_per_request
    assert limits.max_message_bytes == server.config.max_message_bytes
    assert limits.max_concurrent_requests == 4 and limits.max_queue == 16 and limits.max_stop_strings == 16
    assert description.version and not description.cache_enabled


async def test_server_defaults_apply_to_unset_fields(start_server: StartServer) -> None:
    server = await start_server(default_max_new_tokens=6, default_block_size=3, default_mcmc_steps=1)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        events = await collect(stub, pb.ReasonRequest(text="ab", seed=1))
        params = events[0].started.params
        assert (params.max_new_tokens, params.block_size, params.mcmc_steps) == (6, 3, 1)
        assert events[0].started.num_blocks == 2
