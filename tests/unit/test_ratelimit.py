"""The log budget for failed logins."""

from __future__ import annotations

import logging

import pytest

from amqpy.ratelimit import RateLimitedLog


def test_a_burst_passes_then_one_a_second_with_the_count_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = RateLimitedLog(
        logging.getLogger("test.ratelimit"), rate=1.0, burst=3, clock=lambda: now[0]
    )
    with caplog.at_level(logging.WARNING, "test.ratelimit"):
        logged = [log.warning("failed login %d", n) for n in range(100)]
        assert logged.count(True) == 3
        now[0] += 1.0
        assert log.warning("failed login %d", 100)
    messages = [record.getMessage() for record in caplog.records]
    assert messages[:3] == ["failed login 0", "failed login 1", "failed login 2"]
    assert messages[3] == "failed login 100 (97 similar lines suppressed)"
    assert len(messages) == 4
