"""/api/overview and /api/whoami."""

from __future__ import annotations

from typing import Any

from amqpy import __version__
from amqpy.management.app import Context, Endpoint
from amqpy.management.endpoints.metrics import overview_message_stats


async def overview(context: Context) -> dict[str, Any]:
    server = context.server
    vhosts = context.visible_vhosts(monitoring=True)
    queues = [queue for vhost in vhosts for queue in vhost.queues.values()]
    ready = sum(queue.message_count for queue in queues)
    unacked = sum(queue.unacked_count for queue in queues)
    connections = [
        connection
        for connection in server.connections
        if connection.opened
        and context.can_see_vhost(connection.vhost.name, monitoring=True)
    ]
    config = server.config
    return {
        "management_version": __version__,
        "product_name": "amqpy",
        "product_version": __version__,
        "rabbitmq_version": "3.10.8",
        "cluster_name": config.server.cluster_name,
        "node": config.server.cluster_name,
        "message_stats": overview_message_stats(context),
        "queue_totals": {
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
        },
        "object_totals": {
            "connections": len(connections),
            "channels": sum(len(c.channels) for c in connections),
            "consumers": sum(queue.consumer_count for queue in queues),
            "exchanges": sum(len(vhost.exchanges) for vhost in vhosts),
            "queues": len(queues),
        },
        "listeners": [
            {
                "node": config.server.cluster_name,
                "protocol": "amqp",
                "ip_address": config.listener.bind,
                "port": server.port,
            },
            {
                "node": config.server.cluster_name,
                "protocol": "http",
                "ip_address": config.management.bind,
                "port": server.management_port,
            },
        ],
    }


async def whoami(context: Context) -> dict[str, Any]:
    return {"name": context.user.name, "tags": list(context.user.tags)}


ENDPOINTS = [
    Endpoint("/api/overview", ("GET",), overview),
    Endpoint("/api/whoami", ("GET",), whoami),
]
