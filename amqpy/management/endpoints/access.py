"""Endpoints of the management API (being written)."""

from __future__ import annotations

from amqpy.management.app import Endpoint

ENDPOINTS: list[Endpoint] = []
