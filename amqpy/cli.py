"""The `amqpy` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from amqpy import __version__
from amqpy.config import Config, ConfigError
from amqpy.management import commands as management_commands
from amqpy.perf import add_parser as add_perf_parser

LOGGER = logging.getLogger("amqpy")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amqpy", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    management_commands.add_api_options(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server = commands.add_parser("server", help="run the broker")
    server.add_argument("--config", help="TOML config file (conf/amqpy.toml)")
    server.add_argument("--bind", help="address to listen on")
    server.add_argument("--port", type=int, help="AMQP port; 0 picks a free one")
    server.add_argument("--data-dir", help="folder for the broker's data")
    server.add_argument(
        "--management-port",
        type=int,
        help="management HTTP API port (15672); 0 picks a free one",
    )
    server.add_argument("--management-bind", help="address of the management API")
    server.add_argument(
        "--no-management", action="store_true", help="run without the HTTP API"
    )
    server.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="log level",
    )
    server.add_argument(
        "--load-definitions",
        metavar="FILE",
        help="definitions file (RabbitMQ's format) to apply at start",
    )
    definitions = commands.add_parser(
        "definitions", help="export or import definitions (RabbitMQ's JSON format)"
    )
    verbs = definitions.add_subparsers(dest="verb", required=True)
    for verb, text in (
        ("export", "write the broker's definitions to FILE (- for stdout)"),
        ("import", "add FILE's definitions to the broker"),
    ):
        parser_ = verbs.add_parser(
            verb,
            help=text,
            description=f"{text}: through the management API, or with --data-dir "
            "(or --config) in a broker's data folder (import: a stopped broker's)",
        )
        parser_.add_argument("file", metavar="FILE")
        parser_.add_argument("--config", help="TOML config file")
        parser_.add_argument("--data-dir", help="the broker's data folder")
        management_commands.add_definitions_api(parser_, verb)
    management_commands.add_parsers(commands)
    add_perf_parser(commands)
    return parser


def _config(args: argparse.Namespace) -> Config:
    config = Config.from_toml(args.config) if args.config else Config()
    if args.data_dir:
        config = config.with_overrides(store={"data_dir": args.data_dir})
    return config


def _definitions(args: argparse.Namespace) -> int:
    from amqpy.broker.broker import Broker
    from amqpy.server.run import StartupError
    from amqpy.store.definitions import (
        DefinitionsStore,
        read_definitions_file,
        to_rabbitmq_format,
    )
    from amqpy.store.lock import DataDirLock, DataDirLockedError

    data_dir = Path(_config(args).store.data_dir)
    store = DefinitionsStore(data_dir)
    if args.verb == "export":
        data = to_rabbitmq_format(store.load(), __version__)
        if args.file == "-":
            sys.stdout.write(data.decode() + "\n")
        else:
            Path(args.file).write_bytes(data + b"\n")
        return 0
    if not data_dir.is_dir():
        raise StartupError(f"no data folder at {data_dir}")
    lock = DataDirLock(data_dir)
    try:
        lock.acquire()
    except DataDirLockedError as error:
        raise StartupError(
            f"{error}; stop it first, or give the file to the running broker's "
            "next start with --load-definitions"
        ) from error
    try:
        broker = Broker()
        broker.import_definitions(store.load())
        broker.import_definitions(read_definitions_file(Path(args.file)))
        store.save(broker.export_definitions())
    finally:
        lock.release()
    return 0


def _server(args: argparse.Namespace) -> int:
    import trio

    from amqpy.log import setup_logging
    from amqpy.server.run import run_broker

    config = Config.from_toml(args.config) if args.config else Config()
    listener: dict[str, Any] = {}
    if args.bind is not None:
        listener["bind"] = args.bind
    if args.port is not None:
        listener["port"] = args.port
    store: dict[str, Any] = {}
    if args.data_dir:
        store["data_dir"] = args.data_dir
    if args.load_definitions:
        store["load_definitions"] = args.load_definitions
    management: dict[str, Any] = {}
    if args.management_port is not None:
        management["port"] = args.management_port
    if args.management_bind is not None:
        management["bind"] = args.management_bind
    if args.no_management:
        management["enabled"] = False
    config = config.with_overrides(
        listener=listener,
        store=store,
        management=management,
        log={"level": args.log_level} if args.log_level else {},
    )
    setup_logging(config.log.level)
    trio.run(lambda: run_broker(config, handle_signals=True))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "server" or (
        args.command == "definitions" and (args.data_dir or args.config)
    ):
        return _run_local(args)
    if args.command == "perf":
        from amqpy.perf import main as perf_main

        return perf_main(args)
    # Every other command talks to the management API (and starts quickly:
    # the broker's modules are not imported for it).
    return management_commands.run(args)


def _run_local(args: argparse.Namespace) -> int:
    """`server`, and `definitions` on a data folder."""
    from amqpy.server.run import StartupError, StoreFailedError
    from amqpy.store.definitions import StoreFormatError

    try:
        if args.command == "server":
            return _server(args)
        return _definitions(args)
    except ConfigError as error:
        print(f"amqpy: {error}", file=sys.stderr)  # noqa: T201
        return 2
    except (
        OSError,
        StartupError,
        StoreFailedError,
        StoreFormatError,
        ValueError,
    ) as error:
        print(f"amqpy: {error}", file=sys.stderr)  # noqa: T201
        return 1
    except ExceptionGroup as group:
        # Start-up errors raised inside the broker's nurseries arrive grouped.
        errors = _leaf_errors(group)
        if not all(
            isinstance(error, ConfigError | OSError | StartupError | StoreFailedError)
            for error in errors
        ):
            raise
        for error in errors:
            print(f"amqpy: {error}", file=sys.stderr)  # noqa: T201
        return 2 if isinstance(errors[0], ConfigError) else 1


def _leaf_errors(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            leaves += _leaf_errors(error)
        else:
            leaves.append(error)
    return leaves
