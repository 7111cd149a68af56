"""Bearer-token auth and TLS on a real server."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from powersampling._proto.v1 import reasoning_pb2 as pb
from powersampling._proto.v1 import reasoning_pb2_grpc as pb_grpc
from powersampling.server.auth import Authenticator, bearer_token

from tests.server.support import MemoryCache, StartServer, collect, rpc_error, small_request

TOKEN = "s3cret-token"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_calls_without_a_valid_token_are_unauthenticated(start_server: StartServer) -> None:
    server = await start_server(auth_token=TOKEN)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        for metadata in (None, bearer("wrong"), bearer(""), (("authorization", f"Basic {TOKEN}"),)):
            error = await rpc_error(stub, small_request(), metadata=metadata)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Describe(pb.DescribeRequest(), metadata=metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

        events = await collect(stub, small_request(), metadata=bearer(TOKEN))
        assert events[-1].HasField("final")
        lower_case_scheme = (("authorization", f"bearer {TOKEN}"),)
        assert (await stub.Describe(pb.DescribeRequest(), metadata=lower_case_scheme)).model == "toy-test"

        # Health checks stay open to probes without credentials.
        health = health_pb2_grpc.HealthStub(channel)
        response = await health.Check(health_pb2.HealthCheckRequest())
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_token_bound_to_a_tenant_fixes_the_tenant(start_server: StartServer) -> None:
    cache = MemoryCache()
    server = await start_server(cache=cache, auth_tokens={"acme-token": "acme"})
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        await collect(stub, small_request(), metadata=bearer("acme-token"))
        assert {key.tenant for key in cache.completed} == {"acme"}
        error = await rpc_error(stub, small_request(tenant="other"), metadata=bearer("acme-token"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (error.details() or "").startswith("tenant: ")
        assert (await rpc_error(stub, small_request())).code() == grpc.StatusCode.UNAUTHENTICATED


def test_authenticator_matches_every_configured_token() -> None:
    auth = Authenticator("plain", {"t1": "one", "t2": "two"})
    # Beside tenant tokens the shared token is bound to the default tenant; alone it carries none.
    assert auth.identify(bearer("plain")).tenant == ""  # type: ignore[union-attr]
    assert Authenticator("plain").identify(bearer("plain")).tenant is None  # type: ignore[union-attr]
    assert auth.identify(bearer("t2")).tenant == "two"  # type: ignore[union-attr]
    assert auth.identify(bearer("t3")) is None
    assert auth.identify([("x-other", "Bearer plain")]) is None
    assert Authenticator().identify(None) is not None  # auth off: everyone passes
    assert bearer_token([("Authorization", b"BEARER  abc ")]) == "abc"


def write_self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "server.pem", folder / "server.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


async def test_tls_works_with_the_root_certificate_and_refuses_plaintext(
    start_server: StartServer, tmp_path: Path
) -> None:
    cert_file, key_file = write_self_signed_certificate(tmp_path)
    server = await start_server(tls_cert_file=cert_file, tls_key_file=key_file, auth_token=TOKEN)
    credentials = grpc.ssl_channel_credentials(root_certificates=cert_file.read_bytes())
    async with grpc.aio.secure_channel(server.target, credentials) as channel:
        stub = pb_grpc.ReasoningServiceStub(channel)
        events = await collect(stub, small_request(), metadata=bearer(TOKEN))
        assert events[-1].HasField("final")
    async with grpc.aio.insecure_channel(server.target) as plaintext:
        error = await rpc_error(pb_grpc.ReasoningServiceStub(plaintext), small_request(), timeout=3)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    untrusted = grpc.ssl_channel_credentials()  # system roots do not know the self-signed certificate
    async with grpc.aio.secure_channel(server.target, untrusted) as channel:
        error = await rpc_error(pb_grpc.ReasoningServiceStub(channel), small_request(), timeout=3)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
