"""Errors the broker model raises, each with RabbitMQ's reply code.

The server turns them into channel.close (soft) or connection.close (hard)
frames; the texts are RabbitMQ's, so clients and people see the same words.
"""

from typing import ClassVar

from amqpy.reply_code import HARD_ERROR_CODES, ReplyCode


class AmqpError(Exception):
    """An operation was refused; `reply_text` is what the peer is sent."""

    reply_code: ClassVar[ReplyCode] = ReplyCode.INTERNAL_ERROR

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    @property
    def reply_text(self) -> str:
        return f"{self.reply_code.name} - {self.text}"

    @property
    def is_hard(self) -> bool:
        """True when the whole connection must be closed."""
        return self.reply_code in HARD_ERROR_CODES


class AccessRefusedError(AmqpError):
    reply_code = ReplyCode.ACCESS_REFUSED


class NotFoundError(AmqpError):
    reply_code = ReplyCode.NOT_FOUND


class ResourceLockedError(AmqpError):
    reply_code = ReplyCode.RESOURCE_LOCKED


class PreconditionFailedError(AmqpError):
    reply_code = ReplyCode.PRECONDITION_FAILED


class NotAllowedError(AmqpError):
    reply_code = ReplyCode.NOT_ALLOWED


class CommandInvalidError(AmqpError):
    reply_code = ReplyCode.COMMAND_INVALID


class FeatureNotImplementedError(AmqpError):
    reply_code = ReplyCode.NOT_IMPLEMENTED


class ResourceError(AmqpError):
    reply_code = ReplyCode.RESOURCE_ERROR


class InternalError(AmqpError):
    reply_code = ReplyCode.INTERNAL_ERROR
