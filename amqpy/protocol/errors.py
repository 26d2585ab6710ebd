"""Errors raised by the sans-IO protocol layer.

Every error carries the reply code the peer must be sent and the class/method
id of the frame that caused it, so the caller can build the close frame.
"""

from amqpy.reply_code import ReplyCode


class ProtocolError(Exception):
    """The peer broke the protocol: the connection must be closed."""

    def __init__(
        self,
        reply_code: ReplyCode,
        text: str,
        class_id: int = 0,
        method_id: int = 0,
        *,
        silent: bool = False,
    ) -> None:
        super().__init__(f"{reply_code.name} - {text}")
        self.reply_code = reply_code
        self.text = text
        self.class_id = class_id
        self.method_id = method_id
        # RabbitMQ sends no close frame for errors before the connection is
        # tuned (a bad tune-ok, a handshake method out of order): the socket
        # is just closed.
        self.silent = silent

    @property
    def reply_text(self) -> str:
        """The text RabbitMQ puts in a close frame: `NAME - detail`."""
        return f"{self.reply_code.name} - {self.text}"


class ChannelProtocolError(ProtocolError):
    """The peer broke a channel-level rule: only that channel is closed."""

    def __init__(
        self,
        channel_id: int,
        reply_code: ReplyCode,
        text: str,
        class_id: int = 0,
        method_id: int = 0,
    ) -> None:
        super().__init__(reply_code, text, class_id, method_id)
        self.channel_id = channel_id


class ProtocolHeaderMismatchError(Exception):
    """The peer opened with something other than the AMQP 0-9-1 header.

    The caller answers with the 0-9-1 header and closes the socket.
    """
