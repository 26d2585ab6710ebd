"""Message: lazy properties, and the fast reads of headers and delivery mode
agree with a full decode."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands

from amqpy.model.message import Message

short_text = st.text(max_size=20).filter(lambda text: len(text.encode()) <= 255)
properties = st.builds(
    commands.Basic.Properties,
    content_type=st.none() | short_text,
    content_encoding=st.none() | short_text,
    headers=st.none()
    | st.dictionaries(short_text, st.integers(0, 2**31 - 1) | short_text),
    delivery_mode=st.none() | st.sampled_from([1, 2]),
    priority=st.none() | st.integers(0, 9),
    correlation_id=st.none() | short_text,
)


@given(properties)
def test_fast_reads_agree_with_a_full_decode(props: commands.Basic.Properties) -> None:
    raw = props.marshal()
    message = Message("ex", "key", raw, b"body")
    assert message.persistent == (props.delivery_mode == 2)
    assert message.headers == props.headers
    decoded = Message("ex", "key", raw, b"body").properties
    assert decoded.delivery_mode == props.delivery_mode
    assert (decoded.correlation_id or None) == (props.correlation_id or None)


def test_truncated_properties_are_not_persistent() -> None:
    raw = commands.Basic.Properties(
        content_type="text/plain", delivery_mode=2
    ).marshal()
    assert Message("", "", raw[:-3], b"").persistent is False
