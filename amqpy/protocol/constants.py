"""Wire constants of AMQP 0-9-1."""

from typing import Final

PROTOCOL_HEADER: Final = b"AMQP\x00\x00\x09\x01"

FRAME_METHOD: Final = 1
FRAME_HEADER: Final = 2
FRAME_BODY: Final = 3
FRAME_HEARTBEAT: Final = 8
FRAME_END: Final = 0xCE
FRAME_END_BYTE: Final = b"\xce"

# type (1) + channel (2) + size (4) before the payload, frame-end (1) after it.
FRAME_HEADER_SIZE: Final = 7
FRAME_OVERHEAD: Final = 8

# The spec's lower bound for frame_max; clients may not negotiate below it.
FRAME_MIN_SIZE: Final = 4096

CLASS_CONNECTION: Final = 10
CLASS_CHANNEL: Final = 20
CLASS_EXCHANGE: Final = 40
CLASS_QUEUE: Final = 50
CLASS_BASIC: Final = 60
CLASS_CONFIRM: Final = 85
CLASS_TX: Final = 90

BASIC_PUBLISH_METHOD_ID: Final = 40
BASIC_ACK_METHOD_ID: Final = 80
