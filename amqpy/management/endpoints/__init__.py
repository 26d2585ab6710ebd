"""Every endpoint of the management API, by module."""

from amqpy.management.app import Endpoint
from amqpy.management.endpoints import overview

ENDPOINTS: list[Endpoint] = [
    *overview.ENDPOINTS,
]
