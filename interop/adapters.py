"""Every client adapter of the suite, by name."""

from __future__ import annotations

from typing import Any

from interop.amqp_tools import AmqpToolsAdapter
from interop.amqplib_client import AmqplibAdapter
from interop.clients import AioPikaAdapter, KombuAdapter, PikaAdapter
from interop.pika_async import PikaAsyncAdapter

ADAPTERS: dict[str, Any] = {
    a.name: a
    for a in (
        PikaAdapter(),
        PikaAsyncAdapter(),
        AioPikaAdapter(),
        KombuAdapter(),
        AmqplibAdapter(),
        AmqpToolsAdapter(),
    )
}
