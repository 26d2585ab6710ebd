"""Every endpoint of the management API, by module."""

from amqpy.management.app import Endpoint
from amqpy.management.endpoints import access, metrics, objects, overview

ENDPOINTS: list[Endpoint] = [
    *overview.ENDPOINTS,
    *access.ENDPOINTS,
    *objects.ENDPOINTS,
    *metrics.ENDPOINTS,
]
