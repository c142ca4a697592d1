"""serve.timeouts.within: a cancellation that coincides with the result still cancels (3.11's wait_for
returned the result instead), and a timeout cancels the inner awaitable."""
import asyncio

import pytest

from serve.timeouts import within


def test_cancellation_at_completion_propagates():
    async def main():
        inner = asyncio.get_running_loop().create_future()
        caller = asyncio.ensure_future(within(inner, 10))
        await asyncio.sleep(0)  # the caller now waits on `inner`
        inner.set_result("token")
        caller.cancel()  # at the same moment: the client went away
        with pytest.raises(asyncio.CancelledError):
            await caller
    asyncio.run(main())


def test_timeout_cancels_the_inner_awaitable():
    async def main():
        queue: asyncio.Queue = asyncio.Queue()
        with pytest.raises(asyncio.TimeoutError):
            await within(queue.get(), 0.01)
        queue.put_nowait("kept")  # no orphaned getter took it
        assert await within(queue.get(), 1) == "kept"
    asyncio.run(main())
