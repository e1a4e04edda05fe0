"""Group commit: items waiting together are written by one call, none is lost or doubled.

The audit writer and the monitor's served-prediction records both rely on it
(:class:`medai.serving.group_commit.GroupCommit`); their own tests write to the catalog.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from medai.serving.group_commit import GroupCommit


class _Table:
    """A stand-in store with a commit that takes time, as a database's does."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.rows: list[int] = []
        self.calls = 0
        self.fail_on = fail_on
        self._lock = threading.Lock()

    def commit(self, items: list[int]) -> None:
        time.sleep(0.01)
        with self._lock:
            self.calls += 1
            if self.fail_on is not None and self.fail_on in items:
                raise ValueError("refused")
            self.rows.extend(items)


def test_submitted_items_are_grouped_and_flush_waits_for_them() -> None:
    table = _Table()
    writer: GroupCommit[int] = GroupCommit(table.commit, "rows")

    async def scenario() -> list[int]:
        for number in range(50):
            writer.submit(number)
        await writer.flush()
        return list(table.rows)  # read right after flush: everything is there

    assert sorted(asyncio.run(scenario())) == list(range(50))
    assert sum(writer.transactions) == 50
    assert table.calls == len(writer.transactions) < 50  # grouped, not one call each


def test_append_waits_for_its_own_group_and_sees_its_failure() -> None:
    table = _Table(fail_on=7)
    writer: GroupCommit[int] = GroupCommit(table.commit, "rows")

    async def scenario() -> list[BaseException | None]:
        await writer.append(0)  # alone: written at once
        return list(
            await asyncio.gather(*(writer.append(n) for n in (5, 6, 7, 8)), return_exceptions=True)
        )

    outcomes = asyncio.run(scenario())
    assert table.rows[0] == 0
    # 5..8 waited together: the group with 7 failed, and each of them learned it.
    assert all(isinstance(outcome, ValueError) for outcome in outcomes), outcomes
    assert 7 not in table.rows


def test_a_failed_submitted_group_is_logged_and_later_items_still_land(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = _Table(fail_on=3)
    writer: GroupCommit[int] = GroupCommit(table.commit, "served prediction records")

    async def scenario() -> None:
        writer.submit(1)
        await writer.flush()
        for number in (2, 3, 4):
            writer.submit(number)
        await writer.flush()
        writer.submit(5)
        await writer.flush()

    with caplog.at_level(logging.ERROR, logger="medai.serving.group_commit"):
        asyncio.run(scenario())
    assert 1 in table.rows and 5 in table.rows and 3 not in table.rows
    assert "served prediction records could not be written: ValueError" in caplog.text
