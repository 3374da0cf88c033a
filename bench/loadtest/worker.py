"""Generator processes: each holds a ``ReceiverPool`` and obeys commands over a pipe.

The command's process (the coordinator) seeds, publishes and samples the server; the
receivers live in ``--processes`` worker processes started with ``spawn`` (no Django,
no inherited sockets or database connections). A worker answers each command with one
message and sends ``("progress", {...})`` every second on its own. Commands:

``("open", count)``            start ``count`` more receivers → ``OpenStats``
``("window", starts)``         begin a measurement window → None
``("finish", finals, timeout)`` wait for the final seqs → ``(DeliveryTotals, drain_s)``
``("storm", timeout)``         drop all, reconnect with since → storm dict
``("close",)``                 close every connection → counters; the worker exits
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from .receiver import ReceiverPool

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 1.0


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker process is given: the server URL and its share of receivers."""

    index: int
    url: str
    assignments: list[tuple[str, tuple[str, ...]]]  # (token, topics) per connection
    subscribe: bool = True
    concurrency: int = 100
    source_addresses: tuple[str, ...] = ()  # ReceiverPool's


def raise_open_file_limit(wanted: int = 1 << 20) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards the hard limit, and the hard limit
    itself where the process may (``CAP_SYS_RESOURCE``: root, unless a sandbox withholds
    it, as one of ours does: docs/benchmarks.md, "50,000 connections on one host");
    returns the new soft limit. Each connection is a file descriptor: 10,000 need more
    than the usual 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):  # not root, or past fs.nr_open
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop when it is installed (it is, with uvicorn), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is in requirements.txt
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def listen_pipe(
    conn: Connection,
    loop: asyncio.AbstractEventLoop,
    on_message: Callable[[Any], None],
    on_end: Callable[[BaseException], None],
) -> threading.Thread:
    """Read ``conn`` in a thread and hand each message to ``on_message`` on the loop.

    Not ``loop.add_reader``: uvloop makes a watched descriptor non-blocking, and then a
    large message (a window's latency samples) fails half-read or half-written with
    BlockingIOError. A blocking read in a thread has no such problem.
    """

    def read() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError) as exc:  # the other end is gone
                with contextlib.suppress(RuntimeError):  # the loop is closed already
                    loop.call_soon_threadsafe(on_end, exc)
                return
            try:
                loop.call_soon_threadsafe(on_message, message)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                return

    thread = threading.Thread(target=read, name="loadtest-pipe", daemon=True)
    thread.start()
    return thread


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of a worker process."""
    logging.basicConfig(level=logging.WARNING)
    raise_open_file_limit()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_serve(spec, conn))


async def _serve(spec: WorkerSpec, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    pool = ReceiverPool(
        spec.url, spec.assignments, subscribe=spec.subscribe, concurrency=spec.concurrency,
        source_addresses=spec.source_addresses,
    )  # fmt: skip
    commands: asyncio.Queue = asyncio.Queue()
    listen_pipe(conn, loop, commands.put_nowait, lambda exc: commands.put_nowait(("close",)))

    async def progress() -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_S)
            conn.send(("progress", pool.progress()))

    reporter = loop.create_task(progress())
    try:
        while True:
            command, *args = await commands.get()
            try:
                result = await _run(pool, command, args)
            except Exception:
                conn.send(("error", traceback.format_exc()))
                continue
            conn.send(("done", result))
            if command == "close":
                return
    finally:
        reporter.cancel()


async def _run(pool: ReceiverPool, command: str, args: list[Any]) -> Any:
    if command == "open":
        return await pool.open(args[0])
    if command == "window":
        pool.start_window(args[0])
        return None
    if command == "finish":
        finals, timeout = args
        drain_s = await pool.wait_complete(finals, timeout)
        return pool.totals(finals), drain_s
    if command == "storm":
        return await pool.storm(args[0])
    if command == "close":
        counters = {
            "reconnects": pool.reconnects,
            "resets": pool.resets,
            "strays": pool.strays,
            "closes": dict(pool.closes),
            "errors": dict(pool.errors),
            "source_hosts": dict(pool.source_hosts),
            "loop": loop_name(asyncio.get_running_loop()),
        }
        await pool.close()
        return counters
    raise ValueError(f"unknown worker command {command!r}")


class WorkerFailed(RuntimeError):
    """A worker process raised; the message holds its traceback."""


class WorkerGroup:
    """The coordinator's end: N worker processes, the receivers dealt round-robin."""

    def __init__(
        self,
        url: str,
        assignments: list[tuple[str, tuple[str, ...]]],
        processes: int,
        *,
        subscribe: bool = True,
        concurrency: int = 100,
        source_addresses: tuple[str, ...] = (),
    ) -> None:
        import multiprocessing

        self.size = max(1, min(processes, len(assignments) or 1))
        self.total = len(assignments)
        self.opened = 0
        ctx = multiprocessing.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs = []
        per_worker_concurrency = max(1, concurrency // self.size)
        for index in range(self.size):
            parent, child = ctx.Pipe()
            spec = WorkerSpec(
                index, url, assignments[index :: self.size], subscribe, per_worker_concurrency,
                source_addresses,
            )  # fmt: skip
            proc = ctx.Process(
                target=worker_main, args=(spec, child), name=f"loadtest-{index}", daemon=True
            )
            self._conns.append(parent)
            self._procs.append((proc, child))
        self.progress: list[dict[str, int]] = [{} for _ in range(self.size)]
        self._waiting: list[asyncio.Future | None] = [None] * self.size

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for index, (proc, child) in enumerate(self._procs):
            proc.start()
            child.close()  # the worker's end now lives in the worker
            listen_pipe(
                self._conns[index],
                loop,
                lambda message, index=index: self._received(index, *message),
                lambda exc, index=index: self._received(
                    index, "error", f"worker {index} is gone ({exc!r})"
                ),
            )

    def _received(self, index: int, kind: str, payload: Any) -> None:
        if kind == "progress":
            self.progress[index] = payload
            return
        fut = self._waiting[index]
        self._waiting[index] = None
        if fut is None or fut.done():
            return
        if kind == "error":
            fut.set_exception(WorkerFailed(payload))
        else:
            fut.set_result(payload)

    async def call(self, *command: Any) -> list[Any]:
        """Send one command to every worker; their answers, in worker order."""
        return await self.call_each(lambda index: command)

    async def call_each(self, command_for: Callable[[int], tuple]) -> list[Any]:
        """Send each worker its own command; their answers, in worker order."""
        loop = asyncio.get_running_loop()
        futures = []
        for index, conn in enumerate(self._conns):
            fut = loop.create_future()
            self._waiting[index] = fut
            conn.send(command_for(index))
            futures.append(fut)
        return list(await asyncio.gather(*futures))

    async def open(self, count: int | None = None) -> list[Any]:
        """Open the next ``count`` receivers (by global index) across the workers."""
        start = self.opened
        end = self.total if count is None else min(self.total, start + count)
        self.opened = end
        size = self.size

        def share(index: int) -> tuple:
            first = start + (index - start) % size
            return ("open", len(range(first, end, size)))

        return await self.call_each(share)

    def summed_progress(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for progress in self.progress:
            for key, value in progress.items():
                total[key] = total.get(key, 0) + value
        return total

    async def close(self, timeout: float = 30.0) -> list[Any]:
        """Close every worker's connections and wait for the processes to end."""
        counters: list[Any] = []
        try:
            async with asyncio.timeout(timeout):
                counters = await self.call("close")
        except (TimeoutError, WorkerFailed, OSError):
            logger.warning("workers did not close cleanly; terminating them")
        for index, (proc, _) in enumerate(self._procs):
            await asyncio.to_thread(proc.join, 5)
            if proc.is_alive():
                proc.terminate()
                await asyncio.to_thread(proc.join, 5)
            self._conns[index].close()
        return counters
