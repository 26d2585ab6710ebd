"""The amqps listener: pika and aio-pika over TLS with certificates made at
run time, client-certificate verification as RabbitMQ's ssl_options, the
EXTERNAL mechanism, and a management API over HTTPS."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pika
import pytest
import trustme

from amqpy.config import Config, ConfigError
from amqpy.server.embedded import EmbeddedBroker
from amqpy.server.run import StartupError, tls_context

TIMEOUT_S = 10


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """PEM files: the CA, the server's certificate and key, a client's."""
    folder = tmp_path_factory.mktemp("tls")
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("tls-user", common_name="tls-user")  # EXTERNAL: CN
    paths = {
        "ca": folder / "ca.pem",
        "cert": folder / "server.pem",
        "key": folder / "server.key",
        "client": folder / "client.pem",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(paths["client"]))
    return {name: str(path) for name, path in paths.items()}


@pytest.fixture
def tls_broker(
    make_broker: Callable[..., EmbeddedBroker], files: dict[str, str]
) -> Callable[..., EmbeddedBroker]:
    def make(**tls: Any) -> EmbeddedBroker:
        only = tls.pop("only", False)  # TLS only, no plain listener
        return make_broker(
            tls={
                "enabled": True,
                "port": 0,
                "certfile": files["cert"],
                "keyfile": files["key"],
                **tls,
            },
            **({"listener": {"enabled": False}} if only else {}),
        )

    return make


def client_context(files: dict[str, str], *, certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=files["ca"])
    if certificate:
        context.load_cert_chain(files["client"])
    return context


def pika_tls(
    port: int, context: ssl.SSLContext, **params: Any
) -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1",
            port,
            ssl_options=pika.SSLOptions(context, "localhost"),
            socket_timeout=TIMEOUT_S,
            **params,
        )
    )


def round_trip(connection: pika.BlockingConnection, body: bytes) -> bytes:
    channel = connection.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.confirm_delivery()
    channel.basic_publish("", queue, body)
    method, _, received = channel.basic_get(queue, auto_ack=True)
    assert method is not None
    return received


def test_pika_over_tls(
    tls_broker: Callable[..., EmbeddedBroker], files: dict[str, str]
) -> None:
    broker = tls_broker()
    tls_port = broker.server.tls_port
    assert tls_port and tls_port != broker.port
    connection = pika_tls(tls_port, client_context(files, certificate=False))
    body = bytes(range(256)) * 1000  # several TLS records
    assert round_trip(connection, body) == body
    connection.close()


def test_aio_pika_over_tls(
    tls_broker: Callable[..., EmbeddedBroker], files: dict[str, str]
) -> None:
    broker = tls_broker(only=True)
    context = client_context(files, certificate=False)

    async def main() -> bytes:
        connection = await aio_pika.connect(
            host="127.0.0.1",
            port=broker.server.tls_port,
            ssl=True,
            ssl_context=context,
            timeout=TIMEOUT_S,
        )
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(exclusive=True)
            await channel.default_exchange.publish(
                aio_pika.Message(b"over tls"), routing_key=queue.name
            )
            message = await queue.get(timeout=TIMEOUT_S)
            await message.ack()
            return message.body

    assert asyncio.run(main()) == b"over tls"
    # TLS only: no plain listener was opened.
    assert broker.server.port == 0


def test_client_certificates_verified_when_asked(
    tls_broker: Callable[..., EmbeddedBroker], files: dict[str, str], ca: trustme.CA
) -> None:
    broker = tls_broker(
        cacertfile=files["ca"], verify_peer=True, fail_if_no_peer_cert=True
    )
    port = broker.server.tls_port
    # No certificate: refused in the handshake.
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika_tls(port, client_context(files, certificate=False))
    # A certificate from another CA: refused too.
    stranger = trustme.CA().issue_cert("stranger")
    context = ssl.create_default_context(cafile=files["ca"])
    with stranger.private_key_and_cert_chain_pem.tempfile() as pem:
        context.load_cert_chain(pem)
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika_tls(port, context)
    # Plain AMQP against the TLS port: refused, and nothing else is hurt.
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(
            pika.ConnectionParameters("127.0.0.1", port, socket_timeout=2)
        )
    # The CA's certificate: in, with guest's password as usual.
    connection = pika_tls(port, client_context(files, certificate=True))
    assert round_trip(connection, b"verified") == b"verified"
    connection.close()


def test_external_is_not_offered_by_default(
    tls_broker: Callable[..., EmbeddedBroker], files: dict[str, str]
) -> None:
    # RabbitMQ's default auth_mechanisms are PLAIN and AMQPLAIN.
    broker = tls_broker(cacertfile=files["ca"], verify_peer=True)
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika_tls(
            broker.server.tls_port,
            client_context(files, certificate=True),
            credentials=pika.credentials.ExternalCredentials(),
        )


def test_external_login(
    make_broker: Callable[..., EmbeddedBroker], files: dict[str, str]
) -> None:
    broker = make_broker(
        tls={
            "enabled": True,
            "port": 0,
            "certfile": files["cert"],
            "keyfile": files["key"],
            "cacertfile": files["ca"],
            "verify_peer": True,
        },
        auth={"mechanisms": ("EXTERNAL", "PLAIN", "AMQPLAIN")},
    )

    def add_user() -> None:
        model = broker.server.broker
        model.put_user("tls-user")  # no password: only EXTERNAL gets in
        model.set_permissions("tls-user", "/", ".*", ".*", ".*")

    broker.call(add_user)
    port = broker.server.tls_port
    external = pika.credentials.ExternalCredentials()
    connection = pika_tls(
        port, client_context(files, certificate=True), credentials=external
    )
    assert round_trip(connection, b"external") == b"external"
    connection.close()
    # Without a certificate EXTERNAL is not offered, so pika cannot use it.
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika_tls(port, client_context(files, certificate=False), credentials=external)


def test_management_over_https(
    make_broker: Callable[..., EmbeddedBroker], files: dict[str, str]
) -> None:
    broker = make_broker(
        management={
            "enabled": True,
            "certfile": files["cert"],
            "keyfile": files["key"],
        }
    )
    url = f"https://localhost:{broker.server.management_port}/api/whoami"
    verify = ssl.create_default_context(cafile=files["ca"])
    answer = httpx.get(url, auth=("guest", "guest"), verify=verify, timeout=10)
    assert answer.json()["name"] == "guest"


def test_bad_tls_settings_are_refused(tmp_path: Path, files: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"tls\.certfile"):
        Config.from_mapping({"tls": {"enabled": True}})
    with pytest.raises(ConfigError, match="verify_peer needs"):
        Config.from_mapping(
            {
                "tls": {
                    "enabled": True,
                    "certfile": "c",
                    "keyfile": "k",
                    "verify_peer": True,
                }
            }
        )
    config = Config.from_mapping(
        {
            "tls": {
                "enabled": True,
                "certfile": str(tmp_path / "missing.pem"),
                "keyfile": files["key"],
            }
        }
    )
    with pytest.raises(StartupError, match="cannot load the TLS certificates"):
        tls_context(config.tls)


def test_a_silent_tls_client_is_dropped_at_the_handshake_timeout(
    make_broker: Callable[..., EmbeddedBroker], files: dict[str, str]
) -> None:
    broker = make_broker(
        tls={
            "enabled": True,
            "port": 0,
            "certfile": files["cert"],
            "keyfile": files["key"],
        },
        listener={"handshake_timeout_s": 0.5},
    )
    with socket.create_connection(("127.0.0.1", broker.server.tls_port)) as sock:
        sock.settimeout(TIMEOUT_S)  # bounded: the broker closes well before
        assert sock.recv(1) == b""
    # ... and it still serves others.
    context = client_context(files, certificate=False)
    connection = pika_tls(broker.server.tls_port, context)
    connection.close()
