"""The `amqpy` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import trio

from amqpy import __version__
from amqpy.config import Config, ConfigError
from amqpy.log import setup_logging
from amqpy.server.run import StartupError, StoreFailedError, run_broker

LOGGER = logging.getLogger("amqpy")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amqpy", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("server", help="run the broker")
    server.add_argument("--config", help="TOML config file (conf/amqpy.toml)")
    server.add_argument("--bind", help="address to listen on")
    server.add_argument("--port", type=int, help="AMQP port; 0 picks a free one")
    server.add_argument("--data-dir", help="folder for the broker's data")
    server.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="log level",
    )
    return parser


def _server(args: argparse.Namespace) -> int:
    config = Config.from_toml(args.config) if args.config else Config()
    listener: dict[str, Any] = {}
    if args.bind is not None:
        listener["bind"] = args.bind
    if args.port is not None:
        listener["port"] = args.port
    config = config.with_overrides(
        listener=listener,
        store={"data_dir": args.data_dir} if args.data_dir else {},
        log={"level": args.log_level} if args.log_level else {},
    )
    setup_logging(config.log.level)
    trio.run(lambda: run_broker(config, handle_signals=True))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "server":
            return _server(args)
    except ConfigError as error:
        print(f"amqpy: {error}", file=sys.stderr)  # noqa: T201
        return 2
    except (OSError, StartupError, StoreFailedError) as error:
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
    return 2


def _leaf_errors(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            leaves += _leaf_errors(error)
        else:
            leaves.append(error)
    return leaves
