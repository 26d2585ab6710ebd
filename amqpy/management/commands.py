"""`amqpy OBJECT VERB [ARGS]`: the broker's objects through the management
HTTP API, as aligned tables for a person or `--format json` for scripts.

The commands use only RabbitMQ's documented API paths and fields, so they
work against a RabbitMQ with its management plugin too.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from amqpy.management.client import (
    DEFAULT_TIMEOUT_S,
    DEFAULT_URL,
    ClientError,
    ManagementClient,
    UsageError,
    api_path,
)

DEFAULT_USER = "guest"
DEFAULT_PASSWORD = "guest"
DEFAULT_VHOST = "/"
ACKMODES = (
    "ack_requeue_true",
    "ack_requeue_false",
    "reject_requeue_true",
    "reject_requeue_false",
)

Subparsers = argparse._SubParsersAction
Handler = Callable[["Cli", argparse.Namespace], int | None]


class Cli:
    """What a command needs: the API client and how to print."""

    def __init__(self, args: argparse.Namespace) -> None:
        timeout = getattr(args, "timeout", DEFAULT_TIMEOUT_S)
        if not timeout > 0:
            raise UsageError("--timeout must be a positive number of seconds")
        self.client = ManagementClient(
            _option(args, "url", "AMQPY_URL", DEFAULT_URL),
            _option(args, "user", "AMQPY_USER", DEFAULT_USER),
            _option(args, "password", "AMQPY_PASSWORD", DEFAULT_PASSWORD),
            timeout=timeout,
        )
        self.json = getattr(args, "format", "table") == "json"
        self.columns: list[str] | None = None
        if getattr(args, "columns", None):
            self.columns = [c.strip() for c in args.columns.split(",") if c.strip()]

    def out(self, text: str) -> None:
        sys.stdout.write(text + "\n")

    def note(self, text: str) -> None:
        """A confirmation for a person; scripts asking for JSON get none."""
        if not self.json:
            sys.stdout.write(text + "\n")

    def dump(self, data: Any) -> None:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _option(args: argparse.Namespace, name: str, env: str, default: str) -> str:
    value = getattr(args, name, None)
    if value is None:
        value = os.environ.get(env) or default
    return str(value)


def run(args: argparse.Namespace) -> int:
    """Run the command `args.handler`; its exit status."""
    try:
        cli = Cli(args)
        return args.handler(cli, args) or 0
    except UsageError as error:
        sys.stderr.write(f"amqpy: {error}\n")
        return 2
    except ClientError as error:
        sys.stderr.write(f"amqpy: {error}\n")
        return 1
    except BrokenPipeError:
        # The reader went away (`amqpy queues list | head`): not an error
        # worth a traceback; stdout goes to /dev/null so the exit flush is
        # quiet too.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


# --- arguments ---------------------------------------------------------------


def add_api_options(parser: argparse.ArgumentParser, *, password: bool = True) -> None:
    """--url, --user, --password, --format, --timeout; accepted before the
    object and after the verb (SUPPRESS: only a given one is set)."""
    group = parser.add_argument_group("management API")
    group.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"management API base URL (env AMQPY_URL; default {DEFAULT_URL})",
    )
    group.add_argument(
        "--user",
        default=argparse.SUPPRESS,
        help=f"user name (env AMQPY_USER; default {DEFAULT_USER})",
    )
    if password:
        group.add_argument(
            "--password",
            default=argparse.SUPPRESS,
            help=f"password (env AMQPY_PASSWORD; default {DEFAULT_PASSWORD})",
        )
    group.add_argument(
        "--format",
        choices=("table", "json"),
        default=argparse.SUPPRESS,
        help="aligned table (default) or the API's JSON",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS,
        help=f"seconds to wait for the API (default {DEFAULT_TIMEOUT_S:g})",
    )


def _vhost(parser: argparse.ArgumentParser, *, every: bool = False) -> None:
    if every:
        parser.add_argument(
            "--vhost", help="only this virtual host (default: all of them)"
        )
    else:
        parser.add_argument(
            "--vhost",
            default=DEFAULT_VHOST,
            help=f"virtual host (default {DEFAULT_VHOST!r})",
        )


def _verb(
    verbs: Subparsers,
    name: str,
    text: str,
    handler: Handler,
    *,
    password: bool = True,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = verbs.add_parser(
        name, help=text, description=text
    )
    parser.set_defaults(handler=handler)
    add_api_options(parser, password=password)
    return parser


def _list_verb(verbs: Subparsers, noun: str, *, per_vhost: bool = True) -> None:
    parser = _verb(verbs, "list", f"list {noun}", _list_handler(noun))
    if per_vhost:
        _vhost(parser, every=True)
    parser.add_argument(
        "--columns",
        metavar="A,B,...",
        help="table columns: the API's field names (a.b for nested ones)",
    )


def _object(commands: Subparsers, name: str, text: str) -> Subparsers:
    parser = commands.add_parser(name, help=text, description=text)
    return parser.add_subparsers(dest="verb", required=True, metavar="VERB")


def add_parsers(commands: Subparsers) -> None:
    """The management subcommands, beside `server` and `definitions`."""
    verbs = _object(commands, "queues", "list, declare, delete, purge, get queues")
    _list_verb(verbs, "queues")
    declare = _verb(verbs, "declare", "declare a queue", _queue_declare)
    declare.add_argument("name", metavar="NAME")
    _vhost(declare)
    declare.add_argument(
        "--durable",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="survives a broker restart (default: yes)",
    )
    declare.add_argument("--auto-delete", action="store_true")
    declare.add_argument(
        "--type", choices=("classic", "quorum", "stream"), help="x-queue-type"
    )
    declare.add_argument("--arguments", metavar="JSON", help="queue arguments")
    delete = _verb(verbs, "delete", "delete a queue", _queue_delete)
    delete.add_argument("name", metavar="NAME")
    _vhost(delete)
    delete.add_argument("--if-empty", action="store_true")
    delete.add_argument("--if-unused", action="store_true")
    purge = _verb(verbs, "purge", "drop a queue's ready messages", _queue_purge)
    purge.add_argument("name", metavar="NAME")
    _vhost(purge)
    get = _verb(verbs, "get", "fetch messages from a queue, print payloads", _get)
    get.add_argument("name", metavar="NAME")
    _vhost(get)
    get.add_argument("--count", type=int, default=1, help="messages (default 1)")
    get.add_argument(
        "--ackmode",
        choices=ACKMODES,
        default="ack_requeue_true",
        help="ack_requeue_true (default) puts them back, ack_requeue_false "
        "removes them",
    )
    get.add_argument(
        "--encoding",
        choices=("auto", "base64"),
        default="auto",
        help="payloads as text when UTF-8 (auto), or always base64",
    )
    get.add_argument("--truncate", type=int, help="cut payloads to this many bytes")

    verbs = _object(commands, "exchanges", "list, declare, delete exchanges")
    _list_verb(verbs, "exchanges")
    declare = _verb(verbs, "declare", "declare an exchange", _exchange_declare)
    declare.add_argument("name", metavar="NAME")
    _vhost(declare)
    declare.add_argument(
        "--type", default="direct", help="direct (default), fanout, topic, headers..."
    )
    declare.add_argument(
        "--durable", action=argparse.BooleanOptionalAction, default=True
    )
    declare.add_argument("--auto-delete", action="store_true")
    declare.add_argument("--internal", action="store_true")
    declare.add_argument("--arguments", metavar="JSON", help="exchange arguments")
    delete = _verb(verbs, "delete", "delete an exchange", _exchange_delete)
    delete.add_argument("name", metavar="NAME")
    _vhost(delete)
    delete.add_argument("--if-unused", action="store_true")

    verbs = _object(commands, "bindings", "list, declare, delete bindings")
    _list_verb(verbs, "bindings")
    for verb, text, handler in (
        ("declare", "bind a queue (or exchange) to an exchange", _binding_declare),
        ("delete", "remove a binding", _binding_delete),
    ):
        parser = _verb(verbs, verb, text, handler)
        parser.add_argument("source", metavar="SOURCE", help="the exchange")
        parser.add_argument("destination", metavar="DESTINATION")
        _vhost(parser)
        parser.add_argument(
            "--destination-type", choices=("queue", "exchange"), default="queue"
        )
        parser.add_argument("--routing-key", default="", help="(default empty)")
        parser.add_argument("--arguments", metavar="JSON", help="binding arguments")

    verbs = _object(commands, "connections", "list and close client connections")
    _list_verb(verbs, "connections")
    close = _verb(verbs, "close", "close a connection", _connection_close)
    close.add_argument("name", metavar="NAME", help="its name, as `list` shows it")
    close.add_argument("--reason", help="text the client is given")

    verbs = _object(commands, "channels", "list channels")
    _list_verb(verbs, "channels")
    verbs = _object(commands, "consumers", "list consumers")
    _list_verb(verbs, "consumers")

    verbs = _object(commands, "vhosts", "list, add, delete virtual hosts")
    _list_verb(verbs, "vhosts", per_vhost=False)
    add = _verb(verbs, "add", "add a virtual host", _vhost_add)
    add.add_argument("name", metavar="NAME")
    add.add_argument("--description")
    add.add_argument("--tags", metavar="A,B")
    delete = _verb(verbs, "delete", "delete a vhost and all in it", _vhost_delete)
    delete.add_argument("name", metavar="NAME")

    verbs = _object(commands, "users", "list, add, delete users")
    _list_verb(verbs, "users", per_vhost=False)
    # `users add --password` is the new user's: the API's password goes
    # before `users` or in AMQPY_PASSWORD.
    add = _verb(verbs, "add", "add (or update) a user", _user_add, password=False)
    add.add_argument("name", metavar="NAME")
    secret = add.add_mutually_exclusive_group()
    secret.add_argument(
        "--password",
        dest="new_password",
        help="the new user's password (without one, it cannot log in with a password)",
    )
    secret.add_argument(
        "--password-hash", help="a hash in RabbitMQ's format instead of a password"
    )
    add.add_argument(
        "--tags",
        default="",
        metavar="A,B",
        help="administrator, monitoring, policymaker, management",
    )
    delete = _verb(verbs, "delete", "delete a user", _user_delete)
    delete.add_argument("name", metavar="NAME")

    verbs = _object(commands, "permissions", "list, set, clear permissions")
    parser = _verb(verbs, "list", "list permissions", _permissions_list)
    _vhost(parser, every=True)
    parser.add_argument("--columns", metavar="A,B,...")
    parser = _verb(verbs, "set", "set a user's permissions in a vhost", _perm_set)
    parser.add_argument("user_name", metavar="USER")
    for name in ("configure", "write", "read"):
        parser.add_argument(name, metavar=name.upper(), help="regular expression")
    _vhost(parser)
    parser = _verb(verbs, "clear", "remove a user's access to a vhost", _perm_clear)
    parser.add_argument("user_name", metavar="USER")
    _vhost(parser)

    verbs = _object(commands, "policies", "list, set, clear policies")
    _list_verb(verbs, "policies")
    parser = _verb(verbs, "set", "add or change a policy", _policy_set)
    parser.add_argument("name", metavar="NAME")
    _vhost(parser)
    parser.add_argument("--pattern", required=True, help="regex of object names")
    parser.add_argument(
        "--definition",
        required=True,
        metavar="JSON",
        help="keys and values, as '{\"max-length\": 100}'",
    )
    parser.add_argument("--priority", type=int, default=0)
    parser.add_argument(
        "--apply-to", choices=("all", "queues", "exchanges"), default="all"
    )
    parser = _verb(verbs, "clear", "remove a policy", _policy_clear)
    parser.add_argument("name", metavar="NAME")
    _vhost(parser)

    parser = commands.add_parser(
        "publish",
        help="publish a message through the API",
        description="publish a message through the API",
    )
    parser.set_defaults(handler=_publish)
    add_api_options(parser)
    parser.add_argument("exchange", metavar="EXCHANGE", help='"" for the default')
    parser.add_argument("routing_key", metavar="ROUTING_KEY")
    parser.add_argument(
        "payload", metavar="PAYLOAD", nargs="?", help="the body (default: stdin)"
    )
    _vhost(parser)
    parser.add_argument(
        "--properties",
        metavar="JSON",
        help='as \'{"delivery_mode": 2, "headers": {"a": 1}}\'',
    )

    for name, text, handler in (
        ("overview", "show the broker's overview", _overview),
        ("alarms", "show resource alarms (exit 1 when any is in effect)", _alarms),
    ):
        parser = commands.add_parser(name, help=text, description=text)
        parser.set_defaults(handler=handler)
        parser.add_argument("verb", nargs="?", choices=("show",), default="show")
        add_api_options(parser)


def add_definitions_api(parser: argparse.ArgumentParser, verb: str) -> None:
    """`definitions export|import FILE` through the API (when neither
    --data-dir nor --config says to work on a stopped broker's folder)."""
    parser.set_defaults(
        handler=_definitions_export if verb == "export" else _definitions_import
    )
    add_api_options(parser)


# --- tables ------------------------------------------------------------------

# Default table columns: what a person looks at first.
COLUMNS: dict[str, list[str]] = {
    "queues": [
        "vhost",
        "name",
        "type",
        "durable",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
    ],
    "exchanges": ["vhost", "name", "type", "durable", "auto_delete", "internal"],
    "bindings": [
        "vhost",
        "source",
        "destination",
        "destination_type",
        "routing_key",
        "arguments",
    ],
    "connections": ["name", "user", "vhost", "channels", "user_provided_name"],
    "channels": [
        "name",
        "user",
        "vhost",
        "consumer_count",
        "messages_unacknowledged",
        "prefetch_count",
    ],
    "consumers": [
        "queue.vhost",
        "queue.name",
        "consumer_tag",
        "ack_required",
        "prefetch_count",
        "channel_details.name",
    ],
    "vhosts": ["name", "description", "tags", "messages"],
    "users": ["name", "tags"],
    "permissions": ["user", "vhost", "configure", "write", "read"],
    "policies": ["vhost", "name", "pattern", "apply-to", "priority", "definition"],
}
# The default exchange's name is "": shown as RabbitMQ's UI shows it.
DEFAULT_EXCHANGE_LABEL = "(AMQP default)"
UNNAMED = {"exchanges": "name", "bindings": "source"}


def _field(row: Any, path: str) -> Any:
    value = row
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value.replace("\n", "\\n")
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False) if value else ""
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def table(rows: Sequence[Any], columns: Sequence[str], *, header: bool = True) -> str:
    """Rows as aligned columns; numbers right-aligned."""
    values = [[_field(row, column) for column in columns] for row in rows]
    cells = [[_cell(value) for value in row] for row in values]
    if header:
        cells.insert(0, list(columns))
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    numeric = [
        any(_is_number(row[i]) for row in values)
        and all(row[i] is None or _is_number(row[i]) for row in values)
        for i in range(len(columns))
    ]
    lines = []
    for row in cells:
        parts = [
            text.rjust(width) if right else text.ljust(width)
            for text, width, right in zip(row, widths, numeric, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _show_list(cli: Cli, noun: str, rows: Any) -> None:
    if not isinstance(rows, list):
        raise ClientError(f"unexpected answer from {cli.client.url}: not a list")
    if cli.json:
        cli.dump(rows)
        return
    unnamed = UNNAMED.get(noun)
    if unnamed:
        rows = [
            {**row, unnamed: row.get(unnamed) or DEFAULT_EXCHANGE_LABEL}
            if isinstance(row, dict)
            else row
            for row in rows
        ]
    cli.out(table(rows, cli.columns or COLUMNS[noun]))


# --- helpers -----------------------------------------------------------------


def _json_option(text: str | None, option: str) -> dict[str, Any]:
    """A JSON-object option (--arguments, --definition, --properties)."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{option} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{option} must be a JSON object, as '{{\"key\": 1}}'")
    return value


def _exchange_segment(name: str) -> str:
    # The default exchange is "amq.default" in API paths.
    return name or "amq.default"


def _in(vhost: str) -> str:
    return f"in vhost '{vhost}'"


# --- handlers ----------------------------------------------------------------

# Lists whose API has a per-vhost path (/api/queues/{vhost}); the others are
# filtered here by their "vhost" field.
PER_VHOST_PATHS = {"queues", "exchanges", "bindings", "consumers", "policies"}


def _list_handler(noun: str) -> Handler:
    def handler(cli: Cli, args: argparse.Namespace) -> None:
        vhost = getattr(args, "vhost", None)
        if vhost is None:
            rows = cli.client.get(api_path(noun))
        elif noun in PER_VHOST_PATHS:
            rows = cli.client.get(api_path(noun, vhost), what=f"vhost '{vhost}'")
        else:
            rows = cli.client.get(api_path(noun))
            if isinstance(rows, list):
                rows = [row for row in rows if _field(row, "vhost") == vhost]
        _show_list(cli, noun, rows)

    return handler


def _queue_declare(cli: Cli, args: argparse.Namespace) -> None:
    arguments = _json_option(args.arguments, "--arguments")
    if args.type:
        arguments["x-queue-type"] = args.type
    cli.client.request(
        "PUT",
        api_path("queues", args.vhost, args.name),
        {
            "durable": args.durable,
            "auto_delete": args.auto_delete,
            "arguments": arguments,
        },
        vhost=args.vhost,
    )
    cli.note(f"declared queue '{args.name}' {_in(args.vhost)}")


def _queue_delete(cli: Cli, args: argparse.Namespace) -> None:
    query = {}
    if args.if_empty:
        query["if-empty"] = "true"
    if args.if_unused:
        query["if-unused"] = "true"
    cli.client.request(
        "DELETE",
        api_path("queues", args.vhost, args.name),
        query=query,
        what=f"queue '{args.name}' {_in(args.vhost)}",
        vhost=args.vhost,
    )
    cli.note(f"deleted queue '{args.name}' {_in(args.vhost)}")


def _queue_purge(cli: Cli, args: argparse.Namespace) -> None:
    cli.client.request(
        "DELETE",
        api_path("queues", args.vhost, args.name, "contents"),
        what=f"queue '{args.name}' {_in(args.vhost)}",
        vhost=args.vhost,
    )
    cli.note(f"purged queue '{args.name}' {_in(args.vhost)}")


def _get(cli: Cli, args: argparse.Namespace) -> None:
    if args.count < 1:
        raise UsageError("--count must be at least 1")
    body: dict[str, Any] = {
        "count": args.count,
        "ackmode": args.ackmode,
        "encoding": args.encoding,
    }
    if args.truncate is not None:
        body["truncate"] = args.truncate
    messages = cli.client.request(
        "POST",
        api_path("queues", args.vhost, args.name, "get"),
        body,
        what=f"queue '{args.name}' {_in(args.vhost)}",
        vhost=args.vhost,
    )
    if cli.json:
        cli.dump(messages)
        return
    if not messages:
        sys.stderr.write(f"queue '{args.name}' {_in(args.vhost)} has no messages\n")
        return
    for message in messages:
        cli.out(str(message.get("payload", "")))


def _exchange_declare(cli: Cli, args: argparse.Namespace) -> None:
    cli.client.request(
        "PUT",
        api_path("exchanges", args.vhost, args.name),
        {
            "type": args.type,
            "durable": args.durable,
            "auto_delete": args.auto_delete,
            "internal": args.internal,
            "arguments": _json_option(args.arguments, "--arguments"),
        },
        vhost=args.vhost,
    )
    cli.note(f"declared exchange '{args.name}' {_in(args.vhost)}")


def _exchange_delete(cli: Cli, args: argparse.Namespace) -> None:
    cli.client.request(
        "DELETE",
        api_path("exchanges", args.vhost, args.name),
        query={"if-unused": "true"} if args.if_unused else None,
        what=f"exchange '{args.name}' {_in(args.vhost)}",
        vhost=args.vhost,
    )
    cli.note(f"deleted exchange '{args.name}' {_in(args.vhost)}")


def _binding_path(args: argparse.Namespace, *more: str) -> str:
    kind = "q" if args.destination_type == "queue" else "e"
    return api_path(
        "bindings",
        args.vhost,
        "e",
        _exchange_segment(args.source),
        kind,
        args.destination,
        *more,
    )


def _binding_text(args: argparse.Namespace) -> str:
    return (
        f"binding from exchange '{args.source}' to {args.destination_type} "
        f"'{args.destination}' with routing key '{args.routing_key}' {_in(args.vhost)}"
    )


def _binding_declare(cli: Cli, args: argparse.Namespace) -> None:
    cli.client.request(
        "POST",
        _binding_path(args),
        {
            "routing_key": args.routing_key,
            "arguments": _json_option(args.arguments, "--arguments"),
        },
        vhost=args.vhost,
    )
    cli.note(f"declared {_binding_text(args)}")


def _binding_delete(cli: Cli, args: argparse.Namespace) -> None:
    # A binding's path ends with its properties key, which the API computes
    # (RabbitMQ hashes the arguments): look it up rather than guess it.
    arguments = _json_option(args.arguments, "--arguments")
    what = f"exchange '{args.source}' or {args.destination_type} '{args.destination}'"
    found = cli.client.get(_binding_path(args), what=f"{what} {_in(args.vhost)}")
    keys = [
        binding.get("properties_key")
        for binding in found or []
        if binding.get("routing_key") == args.routing_key
        and (binding.get("arguments") or {}) == arguments
    ]
    if not keys or not isinstance(keys[0], str):
        raise ClientError(f"no {_binding_text(args)}", 404)
    cli.client.request(
        "DELETE",
        _binding_path(args, keys[0]),
        what=_binding_text(args),
        vhost=args.vhost,
    )
    cli.note(f"deleted {_binding_text(args)}")


def _connection_close(cli: Cli, args: argparse.Namespace) -> None:
    cli.client.request(
        "DELETE",
        api_path("connections", args.name),
        headers={"X-Reason": args.reason} if args.reason else None,
        what=f"connection '{args.name}'",
    )
    cli.note(f"closed connection '{args.name}'")


def _vhost_add(cli: Cli, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {}
    if args.description is not None:
        body["description"] = args.description
    if args.tags is not None:
        body["tags"] = args.tags
    cli.client.request("PUT", api_path("vhosts", args.name), body)
    cli.note(f"added vhost '{args.name}'")


def _vhost_delete(cli: Cli, args: argparse.Namespace) -> None:
    cli.client.request(
        "DELETE", api_path("vhosts", args.name), what=f"vhost '{args.name}'"
    )
    cli.note(f"deleted vhost '{args.name}'")


def _user_add(cli: Cli, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"tags": args.tags}
    if args.new_password is not None:
        body["password"] = args.new_password
    elif args.password_hash is not None:
        body["password_hash"] = args.password_hash
    cli.client.request("PUT", api_path("users", args.name), body)
    cli.note(f"added user '{args.name}'")


def _user_delete(cli: Cli, args: argparse.Namespace) -> None:
    cli.client.request(
        "DELETE", api_path("users", args.name), what=f"user '{args.name}'"
    )
    cli.note(f"deleted user '{args.name}'")


def _permissions_list(cli: Cli, args: argparse.Namespace) -> None:
    rows = cli.client.get(api_path("permissions"))
    if isinstance(rows, list):
        rows = [
            row
            for row in rows
            if args.vhost is None or _field(row, "vhost") == args.vhost
        ]
    _show_list(cli, "permissions", rows)


def _perm_set(cli: Cli, args: argparse.Namespace) -> None:
    cli.client.request(
        "PUT",
        api_path("permissions", args.vhost, args.user_name),
        {"configure": args.configure, "write": args.write, "read": args.read},
        vhost=args.vhost,
    )
    cli.note(f"set permissions of user '{args.user_name}' {_in(args.vhost)}")


def _perm_clear(cli: Cli, args: argparse.Namespace) -> None:
    cli.client.request(
        "DELETE",
        api_path("permissions", args.vhost, args.user_name),
        what=f"permissions of user '{args.user_name}' {_in(args.vhost)}",
        vhost=args.vhost,
    )
    cli.note(f"cleared permissions of user '{args.user_name}' {_in(args.vhost)}")


def _policy_set(cli: Cli, args: argparse.Namespace) -> None:
    definition = _json_option(args.definition, "--definition")
    cli.client.request(
        "PUT",
        api_path("policies", args.vhost, args.name),
        {
            "pattern": args.pattern,
            "definition": definition,
            "priority": args.priority,
            "apply-to": args.apply_to,
        },
        vhost=args.vhost,
    )
    cli.note(f"set policy '{args.name}' {_in(args.vhost)}")


def _policy_clear(cli: Cli, args: argparse.Namespace) -> None:
    cli.client.request(
        "DELETE",
        api_path("policies", args.vhost, args.name),
        what=f"policy '{args.name}' {_in(args.vhost)}",
        vhost=args.vhost,
    )
    cli.note(f"cleared policy '{args.name}' {_in(args.vhost)}")


def _publish(cli: Cli, args: argparse.Namespace) -> None:
    properties = _json_option(args.properties, "--properties")
    if args.payload is None or args.payload == "-":
        raw = sys.stdin.buffer.read()
        try:
            payload, encoding = raw.decode(), "string"
        except UnicodeDecodeError:
            payload, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    else:
        payload, encoding = args.payload, "string"
    answer = cli.client.request(
        "POST",
        api_path("exchanges", args.vhost, _exchange_segment(args.exchange), "publish"),
        {
            "properties": properties,
            "routing_key": args.routing_key,
            "payload": payload,
            "payload_encoding": encoding,
        },
        what=f"exchange '{args.exchange}' {_in(args.vhost)}",
        vhost=args.vhost,
    )
    if cli.json:
        cli.dump(answer)
        return
    exchange = args.exchange or DEFAULT_EXCHANGE_LABEL
    if isinstance(answer, dict) and answer.get("routed") is False:
        # Not a failure (AMQP drops it too), but a person wants to know.
        sys.stderr.write(
            f"published to exchange '{exchange}' {_in(args.vhost)}, but no queue "
            f"is bound with routing key '{args.routing_key}': the message was "
            "dropped\n"
        )
        return
    cli.out(f"published to exchange '{exchange}' {_in(args.vhost)}")


def _definitions_export(cli: Cli, args: argparse.Namespace) -> None:
    definitions = cli.client.get(api_path("definitions"))
    text = json.dumps(definitions, indent=2, ensure_ascii=False) + "\n"
    if args.file == "-":
        sys.stdout.write(text)
        return
    try:
        Path(args.file).write_text(text)
    except OSError as error:
        raise ClientError(f"cannot write {args.file}: {error.strerror}") from None
    sys.stderr.write(f"exported definitions to {args.file}\n")


def _definitions_import(cli: Cli, args: argparse.Namespace) -> None:
    try:
        raw = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ClientError(f"cannot read {args.file}: {reason}") from None
    try:
        definitions = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ClientError(f"{args.file} is not valid JSON: {error}") from None
    if not isinstance(definitions, dict):
        raise ClientError(f"{args.file} is not a definitions file (not a JSON object)")
    cli.client.request("POST", api_path("definitions"), definitions)
    sys.stderr.write(f"imported definitions from {args.file}\n")


def _overview(cli: Cli, args: argparse.Namespace) -> None:
    overview = cli.client.get(api_path("overview"))
    if cli.json:
        cli.dump(overview)
        return
    if not isinstance(overview, dict):
        raise ClientError(f"unexpected answer from {cli.client.url}: not an object")
    rows: list[tuple[str, Any]] = [
        (
            "product",
            f"{overview.get('product_name', '')} "
            f"{overview.get('product_version', '')}".strip(),
        ),
        ("rabbitmq_version", overview.get("rabbitmq_version")),
        ("cluster_name", overview.get("cluster_name")),
        ("node", overview.get("node")),
    ]
    for group in ("queue_totals", "object_totals"):
        totals = overview.get(group) or {}
        rows += [
            (f"{group}.{key}", value)
            for key, value in totals.items()
            if not key.endswith("_details")
        ]
    listeners = [
        f"{item.get('protocol')} {item.get('ip_address')}:{item.get('port')}"
        for item in overview.get("listeners") or []
        if isinstance(item, dict)
    ]
    rows.append(("listeners", ", ".join(listeners)))
    shown = [{"key": key, "value": value} for key, value in rows if value is not None]
    cli.out(table(shown, ["key", "value"], header=False))


def _alarms(cli: Cli, args: argparse.Namespace) -> int:
    # RabbitMQ answers 503 with the alarms when any is in effect.
    answer = cli.client.request(
        "GET", api_path("health", "checks", "alarms"), accept=(503,)
    )
    if not isinstance(answer, dict):
        raise ClientError(f"unexpected answer from {cli.client.url}: not an object")
    alarms = answer.get("alarms") or []
    failed = answer.get("status") != "ok"
    if cli.json:
        cli.dump(answer)
    elif not failed:
        cli.out("no alarms in effect")
    else:
        cli.out(table(alarms, ["resource", "node"]))
    if failed:
        resources = ", ".join(
            str(alarm.get("resource")) for alarm in alarms if isinstance(alarm, dict)
        )
        reason = answer.get("reason") or "alarms in effect"
        sys.stderr.write(f"amqpy: {reason}: {resources or 'unknown'}\n")
        return 1
    return 0
