"""Events the protocol layer reports to its caller: past-tense facts."""

from __future__ import annotations

from typing import Any

import attrs
from pamqp import base as pamqp_base


@attrs.frozen
class StartOkReceived:
    client_properties: dict[str, Any]
    mechanism: str
    response: bytes
    locale: str


@attrs.frozen
class TuneOkReceived:
    channel_max: int
    frame_max: int
    heartbeat: int


@attrs.frozen
class OpenReceived:
    virtual_host: str


@attrs.frozen
class ConnectionCloseReceived:
    """The peer closed the connection; close-ok is already queued."""

    reply_code: int
    reply_text: str


@attrs.frozen
class ConnectionCloseOkReceived:
    """The peer confirmed our connection.close: the socket may be closed."""


@attrs.frozen
class ChannelOpened:
    channel_id: int


@attrs.frozen
class ChannelClosed:
    """The channel is gone: by the peer's close (close-ok already queued) or
    by the peer's close-ok to ours. Its resources must be released."""

    channel_id: int


@attrs.frozen
class MethodReceived:
    channel_id: int
    method: pamqp_base.Frame


@attrs.define(slots=True)
class ContentReceived:
    """A complete basic.publish: method fields, raw properties and body.

    Not frozen: it is built once per published message on the hot path.
    `properties_raw` is the property flags and values exactly as sent, passed
    through to consumers without decoding.
    """

    channel_id: int
    exchange: str
    routing_key: str
    mandatory: bool
    immediate: bool
    properties_raw: bytes
    body: bytes


@attrs.frozen
class HeartbeatReceived:
    pass


Event = (
    StartOkReceived
    | TuneOkReceived
    | OpenReceived
    | ConnectionCloseReceived
    | ConnectionCloseOkReceived
    | ChannelOpened
    | ChannelClosed
    | MethodReceived
    | ContentReceived
    | HeartbeatReceived
)
