"""A thread with its own event loop, for work that must not run on the server's loop.

The server's loop serves every request, heartbeat and lease renewal of the process, so work
whose length a caller chooses (parsing, validating and executing a GraphQL document) runs
here instead. The interpreter hands its lock back to the server's loop every switch interval
(``SWITCH_INTERVAL``), so however long that work is, the loop waits at most that long for
each turn. Coroutines that need the server's loop (the store, the broker) are sent back to it with
``on_loop``.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
SWITCH_INTERVAL = 0.001


class WorkerLoop:
    """One daemon thread running an event loop, started on first use and shared."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                # the lock changes hands each interval while this thread works: 1 ms, not the
                # default 5, so the server's loop, which needs it a few times per request,
                # waits 1 ms each time (no cost while this thread is idle)
                sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
                threading.Thread(target=loop.run_forever, name=self._name, daemon=True).start()
                self._loop = loop
            return self._loop

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """``work`` run on the worker's loop; cancelling the caller cancels it."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self._started()))


async def on_loop(
    loop: asyncio.AbstractEventLoop, context: contextvars.Context, work: Coroutine[Any, Any, T]
) -> T:
    """From the worker: ``work`` run on ``loop`` (the server's) in ``context`` (the request's,
    so its trace and log fields carry over), awaited here."""
    # call_soon_threadsafe copies the context current at the call, so the task inherits it
    future = context.run(asyncio.run_coroutine_threadsafe, work, loop)
    return await asyncio.wrap_future(future)


GRAPHQL = WorkerLoop("oprunner-graphql")
"""Where ``/graphql`` documents run: one thread for the process, whichever app is served."""
