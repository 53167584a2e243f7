"""Stopping tasks for certain.

On Python 3.11, `asyncio.wait_for` (which pymodbus uses for every request) can swallow a
cancellation that arrives as the reply does; the task then carries on as if nothing happened.
So a single `cancel()` is not enough to stop a poller: cancel until the task is really done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object]], retry_s: float = 0.05) -> None:
    """Cancel `tasks`, again and again if one swallows it, until all have finished."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=retry_s)
