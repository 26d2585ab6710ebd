"""Durable definitions (vhosts, exchanges, queues, bindings) as a JSON file in
RabbitMQ's definitions format, plus our own format marker.

The file is rewritten whole on every change, atomically. RabbitMQ's format
is kept so that an operator can read it, and so that exports and imports
(issue 3's definitions import) share one shape.
"""

from __future__ import annotations

import datetime
import decimal
import json
from pathlib import Path
from typing import Any

from amqpy.store.atomic import write_atomically

DEFINITIONS_FILE = "definitions.json"
FORMAT_KEY = "amqpy_definitions_format"
FORMAT_VERSION = 1
# Our addition to a queue's entry: the folder of its message log.
STORE_ID_KEY = "amqpy_store_id"


class StoreFormatError(Exception):
    """A store file is of an unknown format or a newer version."""


def empty_definitions() -> dict[str, Any]:
    return {
        FORMAT_KEY: FORMAT_VERSION,
        "vhosts": [],
        "exchanges": [],
        "queues": [],
        "bindings": [],
    }


def json_value(value: Any) -> Any:
    """An AMQP field value as JSON (bytes become text, decimals numbers)."""
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.datetime):
        return int(value.timestamp())
    return value


def read_definitions_file(path: Path) -> dict[str, Any]:
    """A definitions file as RabbitMQ exports it (or as amqpy does).

    Raises:
        OSError: it cannot be read.
        ValueError: it is not a JSON object.
    """
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a definitions object")
    return data


def to_rabbitmq_format(definitions: dict[str, Any], product_version: str) -> bytes:
    """Our definitions as a file RabbitMQ's import accepts."""
    document = {key: value for key, value in definitions.items() if key != FORMAT_KEY}
    for kind in ("queues", "exchanges"):
        document[kind] = [
            {key: value for key, value in entry.items() if key != STORE_ID_KEY}
            for entry in document.get(kind, [])
        ]
    document = {
        "product_name": "amqpy",
        "product_version": product_version,
        "users": [],
        "permissions": [],
        "policies": [],
        "parameters": [],
        "global_parameters": [],
        **document,
    }
    return json.dumps(json_value(document), indent=2, sort_keys=True).encode()


class DefinitionsStore:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / DEFINITIONS_FILE

    def load(self) -> dict[str, Any]:
        """The saved definitions, or empty ones when there is no file yet.

        Raises:
            StoreFormatError: the file is not ours, corrupt, or from a newer
                version of amqpy.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return empty_definitions()
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise StoreFormatError(f"{self.path} is not valid JSON: {error}") from error
        if not isinstance(data, dict) or FORMAT_KEY not in data:
            raise StoreFormatError(f"{self.path} is not an amqpy definitions file")
        version = data[FORMAT_KEY]
        if (
            isinstance(version, bool)
            or not isinstance(version, int)
            or (version > FORMAT_VERSION)
        ):
            raise StoreFormatError(
                f"{self.path} has format version {version!r}; this amqpy reads "
                f"up to {FORMAT_VERSION}"
            )
        for key in ("vhosts", "exchanges", "queues", "bindings"):
            if not isinstance(data.get(key, []), list):
                raise StoreFormatError(f"{self.path}: '{key}' is not a list")
        return data

    def save(self, definitions: dict[str, Any]) -> None:
        """Replace the file atomically. Raises OSError on failure."""
        document = {**definitions, FORMAT_KEY: FORMAT_VERSION}
        data = json.dumps(json_value(document), indent=1, sort_keys=True).encode()
        write_atomically(self.path, data)
