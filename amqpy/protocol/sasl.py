"""SASL responses of the PLAIN and AMQPLAIN mechanisms."""

from __future__ import annotations

from amqpy.protocol.fieldtable import decode_table


class SaslError(ValueError):
    """The response is malformed for its mechanism."""


def parse_plain(response: bytes) -> tuple[str, str]:
    """PLAIN: [authzid] NUL authcid NUL password."""
    parts = response.split(b"\x00")
    if len(parts) != 3:
        raise SaslError("PLAIN response must have three NUL-separated parts")
    try:
        return parts[1].decode("utf-8"), parts[2].decode("utf-8")
    except UnicodeDecodeError as error:
        raise SaslError("PLAIN response is not UTF-8") from error


def parse_amqplain(response: bytes) -> tuple[str, str]:
    """AMQPLAIN: a field table without its length prefix, LOGIN and PASSWORD."""
    try:
        _, table = decode_table(len(response).to_bytes(4, "big") + response)
    except Exception as error:  # any decode failure is a malformed response
        raise SaslError(f"AMQPLAIN response is not a field table: {error}") from error
    login, password = table.get("LOGIN"), table.get("PASSWORD")
    if isinstance(login, bytes):
        login = login.decode("utf-8", "replace")
    if isinstance(password, bytes):
        password = password.decode("utf-8", "replace")
    if not isinstance(login, str) or not isinstance(password, str):
        raise SaslError("AMQPLAIN response lacks LOGIN or PASSWORD")
    return login, password


def parse_response(mechanism: str, response: bytes) -> tuple[str, str]:
    """(username, password) for a supported mechanism.

    Raises:
        SaslError: unknown mechanism or malformed response.
    """
    if mechanism == "PLAIN":
        return parse_plain(response)
    if mechanism == "AMQPLAIN":
        return parse_amqplain(response)
    raise SaslError(f"unsupported authentication mechanism '{mechanism}'")
