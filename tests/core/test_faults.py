"""Telling an outage of the store or Redis from a bug, and one warning per place per outage."""

from __future__ import annotations

import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from sqlalchemy.exc import IntegrityError, OperationalError

from core.faults import Faults, fault_component


def test_outages_are_told_from_bugs() -> None:
    assert fault_component(OperationalError("SELECT 1", {}, OSError("gone"))) == "store"
    assert fault_component(RedisConnectionError("refused")) == "redis"
    assert fault_component(IntegrityError("INSERT", {}, ValueError("duplicate key"))) is None  # a bug or a race
    assert fault_component(ResponseError("WRONGTYPE")) is None
    assert fault_component(KeyError("x")) is None
    try:
        try:
            raise RedisConnectionError("refused")
        except RedisConnectionError as exc:
            raise RuntimeError("while reading the token") from exc
    except RuntimeError as wrapped:
        assert fault_component(wrapped) == "redis"  # found through the cause


def test_one_warning_per_place_and_one_when_it_clears(caplog: pytest.LogCaptureFixture) -> None:
    faults = Faults()
    caplog.set_level(logging.WARNING, logger="scrm.faults")
    for _ in range(50):
        faults.seen("store", "inbox.claim", OSError("refused"), retry="next poll")
    faults.seen("store", "outbox.claim", OSError("refused"), retry="next poll")
    assert faults.down_for_s("store") >= 0 and [f["failures"] for f in faults.report()] == [51]
    faults.cleared("store")
    faults.cleared("store")  # nothing to clear: silent
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 3 and lines[-1].startswith("fault.store.cleared") and faults.report() == []
