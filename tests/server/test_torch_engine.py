"""The server on a real (tiny, random) transformers model: chat template, tokenizer, torch engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from powersampling._proto.v1 import reasoning_pb2 as pb
from powersampling._proto.v1 import reasoning_pb2_grpc as pb_grpc

from tests.server.support import StartServer, collect


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Imported here, not at collection: torch and transformers take seconds to import.
    tiny = pytest.importorskip("tests.engines.conftest")  # the engine tests' tiny Qwen2 and BPE tokenizer
    tokenizer = tiny.build_tiny_tokenizer()
    eos = tokenizer.convert_tokens_to_ids(tiny.TINY_EOS)
    model = tiny.build_tiny_model(len(tokenizer) + 8, eos, tokenizer.convert_tokens_to_ids("<pad>"))
    folder = tmp_path_factory.mktemp("tiny-qwen2-server")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow  # builds and loads a model: about 15 s on two cores
async def test_a_tiny_torch_model_answers_a_conversation(
    start_server: StartServer, tiny_model_dir: Path
) -> None:
    torch_engine = pytest.importorskip("powersampling.engines.torch_engine")
    engine: Any = torch_engine.TorchEngine(tiny_model_dir, device="cpu", dtype="float32")
    server = await start_server(engine)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        description = await stub.Describe(pb.DescribeRequest())
        assert description.engine == "torch" and description.has_chat_template
        conversation = pb.ChatMessages(
            messages=[
                pb.ChatMessage(role="system", content="Answer briefly."),
                pb.ChatMessage(role="user", content="What is 12 + 30?"),
            ]
        )
        request = pb.ReasonRequest(
            messages=conversation, seed=3, max_new_tokens=16, block_size=8, mcmc_steps=2
        )
        events = await collect(stub, request)
        again = await collect(stub, request)
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "started" and kinds[-1] == "final" and "progress" in kinds
    assert events[0].started.prompt_tokens > 10  # the chat template's turns are in the prompt
    answer = events[-1].final.answers[0]
    assert 0 < len(answer.token_ids) <= 16 and answer.stats.tokens_spent >= len(answer.token_ids)
    assert answer.text == engine.detokenize(list(answer.token_ids))
    assert list(again[-1].final.answers[0].token_ids) == list(answer.token_ids)  # seeded: reproducible
