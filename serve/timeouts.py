"""`within`: asyncio.wait_for that never swallows the caller's cancellation.

NOTE: Python 3.11's `asyncio.wait_for` returns the inner result when the caller is cancelled at the moment
the inner awaitable completes; a handler cancelled that way (its client gone) kept generating. Here a
cancellation always propagates.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], timeout_s: float | None) -> T:
    """The awaitable's result, or asyncio.TimeoutError after `timeout_s` (None: no limit)."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        raise asyncio.TimeoutError()
    return task.result()
