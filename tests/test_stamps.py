"""Publish stamps: the total order every region applies hostname writes by."""

from __future__ import annotations

import pytest

from zephyr_edge.domain.stamps import InvalidStamp, Stamp, newer, next_stamp


def test_order_is_time_then_replica():
    assert Stamp(1, "z") < Stamp(2, "a")
    assert Stamp(5, "a") < Stamp(5, "b")
    assert max([Stamp(5, "b"), Stamp(5, "a"), Stamp(4, "z")]) == Stamp(5, "b")


@pytest.mark.parametrize("stamp", [Stamp(0, ""), Stamp(1732800000123, "us-east-1"), Stamp(7, "a|b")])
def test_round_trip(stamp):
    assert Stamp.decode(stamp.encode()) == stamp
    assert Stamp.parse(str(stamp)) == stamp


@pytest.mark.parametrize("text", ["", "abc", "12", "-1|a", "1.5|a", "|a", "x" * 300])
def test_unreadable_stamps(text):
    with pytest.raises(InvalidStamp, match="expected a stamp"):
        Stamp.parse(text)
    assert Stamp.decode(text.encode()) is None
    assert Stamp.decode(b"\xff\xfe") is None and Stamp.decode(None) is None


def test_a_local_write_is_later_than_what_it_replaces():
    assert next_stamp(None, "a", now_ms=100) == Stamp(100, "a")
    assert next_stamp(Stamp(50, "z"), "a", now_ms=100) == Stamp(100, "a")
    assert next_stamp(Stamp(100, "z"), "a", now_ms=100) == Stamp(101, "a")
    assert next_stamp(Stamp(9000, "b"), "a", now_ms=100) == Stamp(9001, "a")


def test_newer():
    assert newer(Stamp(1, "a"), None)
    assert newer(Stamp(2, "a"), Stamp(1, "b"))
    assert not newer(Stamp(1, "a"), Stamp(1, "a"))
    assert not newer(Stamp(1, "a"), Stamp(1, "b"))
