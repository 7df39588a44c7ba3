"""Long admin tasks (imports, refreshes) run in the background and report progress."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)
KEEP = 200  # finished jobs remembered, newest first out last


class Job:
    """Progress the admin polls: `done` of `total`, then `result`."""

    def __init__(self, kind: str) -> None:
        self.id = secrets.token_hex(8)
        self.kind = kind
        self.state = "running"
        self.done = 0
        self.total = 0
        self.result: dict[str, Any] | None = None
        self.error: str | None = None
        self.started_at = time.time()

    def view(self) -> dict[str, Any]:
        view = {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "result": self.result,
            "started_at": self.started_at,
        }
        if self.error:
            view["error"] = self.error
        return view


class Jobs:
    """The running and recent jobs; each runs as its own task."""

    def __init__(self) -> None:
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, kind: str, work: Callable[[Job], Awaitable[dict[str, Any]]]) -> Job:
        job = Job(kind)
        self._jobs[job.id] = job
        while len(self._jobs) > KEEP:
            oldest = next(iter(self._jobs.values()))
            if oldest.state == "running":
                break
            self._jobs.popitem(last=False)
        task = asyncio.create_task(self._run(job, work), name=f"{kind}-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    @staticmethod
    async def _run(job: Job, work: Callable[[Job], Awaitable[dict[str, Any]]]) -> None:
        try:
            job.result = await work(job)
            job.state = "done"
        except asyncio.CancelledError:
            job.state, job.error = "failed", "stopped by shutdown"
            raise
        except Exception as exc:
            log.exception("%s job %s failed", job.kind, job.id)
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def running(self, kind: str) -> Job | None:
        return next((j for j in self._jobs.values() if j.kind == kind and j.state == "running"), None)

    async def close(self) -> None:
        """Stop running jobs at shutdown; what they committed stays committed."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
