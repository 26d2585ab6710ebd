"""Configuration: one typed, frozen object, loaded from TOML and overridden
by command-line flags. Every bound the broker keeps is a value here; the
defaults are RabbitMQ's where RabbitMQ has one. conf/amqpy.toml lists them
all, and a test checks the two agree."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs


class ConfigError(Exception):
    """The configuration file or a flag is not valid."""


@attrs.frozen
class ListenerConfig:
    # The plain AMQP listener; false for TLS only.
    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = 5672
    # Time to finish the handshake (header to connection.open), as RabbitMQ's
    # handshake_timeout.
    handshake_timeout_s: float = 10.0
    # On SIGTERM/SIGINT, how long clients get to answer connection.close.
    shutdown_grace_s: float = 5.0
    # After we send connection.close, how long to wait for close-ok.
    close_timeout_s: float = 3.0


@attrs.frozen
class TlsConfig:
    # The amqps listener, as RabbitMQ's listeners.ssl and ssl_options. It
    # shares listener.handshake_timeout_s (TLS and AMQP handshakes together).
    enabled: bool = False
    bind: str = "127.0.0.1"
    port: int = 5671
    certfile: str = ""
    keyfile: str = ""
    # CA certificates that client certificates are checked against.
    cacertfile: str = ""
    # Ask clients for a certificate and check it (RabbitMQ's verify_peer);
    # with fail_if_no_peer_cert, a client without one is refused.
    verify_peer: bool = False
    fail_if_no_peer_cert: bool = False


@attrs.frozen
class StoreConfig:
    data_dir: str = "./amqpy-data"
    # A queue's message log rolls to a new segment file past this size; a
    # segment whose messages are all acked is deleted.
    segment_max_bytes: int = 8388608
    # Group commit: after the first write of a batch, wait this long for more
    # before the fsync (0: as soon as the previous fsync is done).
    commit_interval_ms: float = 0.0
    # Bytes waiting for the next fsync above which publishing connections
    # are not read until a commit finishes.
    max_pending_bytes: int = 67108864
    # RabbitMQ's disk_free_limit: below this many free bytes on the data
    # folder's file system, publishers are blocked (connection.blocked).
    disk_free_limit_bytes: int = 50000000
    disk_check_interval_s: float = 5.0
    # A definitions file (RabbitMQ's export format) applied at every start,
    # as RabbitMQ's load_definitions; "" for none.
    load_definitions: str = ""
    # Durable declares and deletes are appended to definitions.log; the
    # snapshot (definitions.json) is rewritten when the log grows past the
    # snapshot's size or this many bytes, whichever is larger.
    definitions_log_min_bytes: int = 1048576


@attrs.frozen
class LimitsConfig:
    # Open connections on the node (RabbitMQ's connection_max); more are
    # refused at connection.open with 530.
    max_connections: int = 65536
    channel_max: int = 2047
    frame_max: int = 131072
    max_message_size: int = 134217728
    # RabbitMQ's consumer_timeout: a channel whose oldest unacknowledged
    # delivery is older than this is closed with 406 (its messages are
    # requeued); checked every min(timeout / 2, 60 s). 0 disables it.
    consumer_timeout_ms: int = 1800000
    # Per-connection outbound buffer: above the high mark, the connection's
    # consumers stop receiving (messages stay in their queues) and its reader
    # waits; below the low mark they resume.
    outbox_high_water_bytes: int = 1048576
    outbox_low_water_bytes: int = 262144
    # Bytes read from a socket in one receive call.
    receive_size_bytes: int = 262144


@attrs.frozen
class HeartbeatConfig:
    # Proposed in connection.tune; 0 disables. The lower non-zero value wins.
    interval_s: int = 60


@attrs.frozen
class AuthConfig:
    # Created when the data folder is new, as RabbitMQ's default_user,
    # default_pass, default_vhost, default_user_tags, default_permissions.
    # Once the broker has run, its users and vhosts are what was defined.
    default_user: str = "guest"
    default_pass: str = "guest"
    default_vhost: str = "/"
    default_user_tags: tuple[str, ...] = ("administrator",)
    # configure, write, read
    default_permissions: tuple[str, ...] = (".*", ".*", ".*")
    # Users that may only connect from a loopback address (RabbitMQ's
    # loopback_users).
    loopback_users: tuple[str, ...] = ("guest",)
    # SASL mechanisms offered, in order (RabbitMQ's auth_mechanisms). EXTERNAL
    # is offered only on TLS connections with a verified client certificate;
    # the user is the certificate's CN.
    mechanisms: tuple[str, ...] = ("PLAIN", "AMQPLAIN")


@attrs.frozen
class ServerConfig:
    # Reported in connection.start. kombu/celery read `product` and `version`
    # to pick qos semantics: "RabbitMQ" >= 3.3 means RabbitMQ's, anything
    # else the spec's (see docs/compatibility.md).
    product: str = "amqpy"
    cluster_name: str = "amqpy@localhost"


@attrs.frozen
class MemoryConfig:
    # RabbitMQ's vm_memory_high_watermark: above this fraction of the
    # machine's RAM (or high_watermark_bytes when > 0), publishers are
    # blocked (connection.blocked "low on memory") until usage falls.
    high_watermark: float = 0.4
    high_watermark_bytes: int = 0
    check_interval_s: float = 1.0


@attrs.frozen
class ManagementConfig:
    # The HTTP API in the shape of RabbitMQ's management plugin, and /metrics.
    enabled: bool = True
    bind: str = "127.0.0.1"
    # RabbitMQ's management.tcp.port; 0 picks a free one (logged at start).
    port: int = 15672
    # HTTPS instead of HTTP when both are given.
    certfile: str = ""
    keyfile: str = ""


@attrs.frozen
class LogConfig:
    level: str = "info"


@attrs.frozen
class Config:
    listener: ListenerConfig = ListenerConfig()
    tls: TlsConfig = TlsConfig()
    store: StoreConfig = StoreConfig()
    limits: LimitsConfig = LimitsConfig()
    heartbeat: HeartbeatConfig = HeartbeatConfig()
    auth: AuthConfig = AuthConfig()
    server: ServerConfig = ServerConfig()
    memory: MemoryConfig = MemoryConfig()
    management: ManagementConfig = ManagementConfig()
    log: LogConfig = LogConfig()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Config:
        """Build from nested tables; unknown tables or keys are an error."""
        sections: dict[str, Any] = {}
        fields = attrs.fields_dict(cls)
        for section_name, values in data.items():
            field = fields.get(section_name)
            if field is None or not isinstance(values, Mapping):
                raise ConfigError(f"unknown config section [{section_name}]")
            section_type = field.type if isinstance(field.type, type) else None
            section_type = section_type or type(field.default)
            known = attrs.fields_dict(section_type)
            converted: dict[str, Any] = {}
            for key, value in values.items():
                if key not in known:
                    raise ConfigError(f"unknown config key {section_name}.{key}")
                converted[key] = _convert(
                    f"{section_name}.{key}", value, getattr(field.default, key)
                )
            sections[section_name] = section_type(**converted)
        config = cls(**sections)
        config.validate()
        return config

    @classmethod
    def from_toml(cls, path: str | Path) -> Config:
        try:
            with open(path, "rb") as file:
                data = tomllib.load(file)
        except OSError as error:
            raise ConfigError(f"cannot read config file {path}: {error}") from error
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"invalid TOML in {path}: {error}") from error
        return cls.from_mapping(data)

    def with_overrides(self, **section_values: Mapping[str, Any]) -> Config:
        """A copy with some keys replaced: with_overrides(listener={"port": 0})."""
        changes = {
            name: attrs.evolve(getattr(self, name), **values)
            for name, values in section_values.items()
            if values
        }
        config = attrs.evolve(self, **changes)
        config.validate()
        return config

    def validate(self) -> None:
        limits = self.limits
        if not 0 <= self.listener.port <= 65535:
            raise ConfigError(f"listener.port out of range: {self.listener.port}")
        if not 0 < self.memory.high_watermark <= 1:
            raise ConfigError("memory.high_watermark must be in (0, 1]")
        if self.memory.high_watermark_bytes < 0:
            raise ConfigError("memory.high_watermark_bytes must not be negative")
        if self.memory.check_interval_s <= 0:
            raise ConfigError("memory.check_interval_s must be positive")
        if not 0 <= self.tls.port <= 65535:
            raise ConfigError(f"tls.port out of range: {self.tls.port}")
        if self.tls.enabled and not (self.tls.certfile and self.tls.keyfile):
            raise ConfigError("tls.enabled needs tls.certfile and tls.keyfile")
        if self.tls.fail_if_no_peer_cert and not self.tls.verify_peer:
            raise ConfigError("tls.fail_if_no_peer_cert needs tls.verify_peer")
        if self.tls.verify_peer and not self.tls.cacertfile:
            raise ConfigError("tls.verify_peer needs tls.cacertfile")
        if not (self.listener.enabled or self.tls.enabled):
            raise ConfigError("no listener: enable listener or tls")
        if not 0 <= self.management.port <= 65535:
            raise ConfigError(f"management.port out of range: {self.management.port}")
        if not 4096 <= limits.frame_max <= 2**31 - 1:
            raise ConfigError("limits.frame_max must be between 4096 and 2^31-1")
        if limits.max_connections < 1:
            raise ConfigError("limits.max_connections must be positive")
        if not 1 <= limits.channel_max <= 65535:
            raise ConfigError("limits.channel_max must be between 1 and 65535")
        if self.store.segment_max_bytes < 4096:
            raise ConfigError("store.segment_max_bytes must be at least 4096")
        if self.store.disk_check_interval_s <= 0:
            raise ConfigError("store.disk_check_interval_s must be positive")
        if self.store.commit_interval_ms < 0:
            raise ConfigError("store.commit_interval_ms must not be negative")
        if self.store.definitions_log_min_bytes < 0:
            raise ConfigError("store.definitions_log_min_bytes must not be negative")
        if limits.consumer_timeout_ms < 0:
            raise ConfigError("limits.consumer_timeout_ms must not be negative")
        if limits.max_message_size < 1:
            raise ConfigError("limits.max_message_size must be positive")
        if limits.outbox_low_water_bytes > limits.outbox_high_water_bytes:
            raise ConfigError("limits.outbox_low_water_bytes above the high mark")
        if not 0 <= self.heartbeat.interval_s <= 65535:
            raise ConfigError("heartbeat.interval_s must be between 0 and 65535")
        unknown = set(self.auth.mechanisms) - {"PLAIN", "AMQPLAIN", "EXTERNAL"}
        if unknown or not self.auth.mechanisms:
            raise ConfigError("auth.mechanisms: choose from PLAIN, AMQPLAIN, EXTERNAL")
        if len(self.auth.default_permissions) != 3:
            raise ConfigError(
                "auth.default_permissions must be [configure, write, read]"
            )
        if self.log.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError("log.level must be debug/info/warning/error")


def _convert(name: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name} must be a list of strings")
        return tuple(value)
    return value
