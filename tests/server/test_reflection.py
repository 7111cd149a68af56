"""Reflection: a client that knows nothing but the server's address can find and call the service."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from powersampling.server.app import RunningServer


def call_through_reflection(target: str) -> tuple[list[str], list[str], str]:
    """Services listed, the Reason stream's event kinds, and Describe's model: no generated code used."""
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = list(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("powersampling.v1.ReasoningService")

        reason = service.methods_by_name["Reason"]
        request_class = message_factory.GetMessageClass(reason.input_type)
        event_class = message_factory.GetMessageClass(reason.output_type)
        request = request_class(text="abc?", seed=1, max_new_tokens=8, block_size=4, mcmc_steps=1)
        call = channel.unary_stream(
            f"/{service.full_name}/{reason.name}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=event_class.FromString,
        )
        kinds = [event.WhichOneof("event") for event in call(request, timeout=10)]

        describe = service.methods_by_name["Describe"]
        describe_call = channel.unary_unary(
            f"/{service.full_name}/{describe.name}",
            request_serializer=message_factory.GetMessageClass(describe.input_type).SerializeToString,
            response_deserializer=message_factory.GetMessageClass(describe.output_type).FromString,
        )
        model = describe_call(message_factory.GetMessageClass(describe.input_type)(), timeout=10).model
    return services, kinds, model


async def test_reflection_lists_the_services_and_builds_requests(server: RunningServer) -> None:
    # The reflection client is synchronous; run it off the loop that serves it.
    services, kinds, model = await asyncio.to_thread(call_through_reflection, server.target)
    assert {"powersampling.v1.ReasoningService", "grpc.health.v1.Health"} <= set(services)
    assert "grpc.reflection.v1alpha.ServerReflection" in services
    assert kinds[0] == "started" and kinds[-1] == "final" and "progress" in kinds
    assert model == "toy-test"
