"""What every client adapter shares: message types, errors, time limits.

Nothing here imports amqpy or a client library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OP_TIMEOUT_S = 10.0
PUMP_SLICE_S = 0.05

# What an adapter may be able to do beyond the basic interface (see
# interop/clients.py); adapter.features lists what it can.
ALL_FEATURES = frozenset(
    (
        "confirms",
        "exclusive",
        "passive",
        "arguments",
        "exchanges",
        "props",
        "returns",
        "reject",
        "nack",
        "tx",
        "one_channel",
        "consumer_arguments",
        "cancel_notify",
        "qos_global",
    )
)


class NotExpressible(Exception):  # noqa: N818 (reads as the case's outcome)
    """The client cannot express this step of a scenario (the table says
    "n/a: <reason>" for it instead of pass or fail)."""


class ReportedError(Exception):
    """An error a client reported as data (amqplib over JSON, the amqp-tools
    on stderr): its AMQP reply code when it has one, and its text."""

    def __init__(self, code: int | None, text: str, native: str = "") -> None:
        super().__init__(f"{code} {text}" if code is not None else text)
        self.code = code
        self.text = text
        # The client's own error class ("Error", "IllegalOperationError"...).
        self.native = native


class PublishNacked(Exception):  # noqa: N818 (named as the broker's method)
    """The broker nacked a confirmed publish (for adapters whose client only
    calls back)."""


class ReportedNack(ReportedError):  # noqa: N818 (named as the broker's method)
    """amqplib's confirm callback got a nack."""


class ReportedChannelError(ReportedError):
    """The broker closed the channel."""


class ReportedConnectionError(ReportedError):
    """The connection failed or the broker closed it."""


@dataclass
class Props:
    content_type: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    message_id: str | None = None
    type: str | None = None
    app_id: str | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    expiration: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)


@dataclass
class Returned:
    """A message the broker handed back with basic.return."""

    reply_code: int
    reply_text: str
    exchange: str
    routing_key: str
    body: bytes
    props: Props


@dataclass
class Delivery:
    body: bytes
    exchange: str
    routing_key: str
    redelivered: bool
    props: Props
    native: Any = None


class BodyOnlyDelivery(Delivery):
    """A delivery from a client that hands over only the body (amqp-consume,
    amqp-get): asking for anything else is a step the client cannot express."""

    def __getattribute__(self, name: str) -> Any:
        if name in ("exchange", "routing_key", "redelivered", "props"):
            raise NotExpressible(f"the client gives only the body, not {name}")
        return object.__getattribute__(self, name)

    def __repr__(self) -> str:
        return f"BodyOnlyDelivery(body={self.body!r})"


def require(adapter: Any, *features: str) -> None:
    """The scenario needs these features (see ALL_FEATURES): NotExpressible,
    with the adapter's reason, if the client lacks one."""
    for feature in features:
        if feature not in adapter.features:
            why = getattr(adapter, "cannot", {}).get(feature, f"no {feature}")
            raise NotExpressible(why)


def describe_error(exc: BaseException) -> str:
    """Short text for the table: the exception's class and reply code."""
    if isinstance(exc, PublishNacked):
        return "Basic.Nack passed to the confirm callback"
    if isinstance(exc, ReportedError) and exc.native:
        return exc.native
    return type(exc).__name__
