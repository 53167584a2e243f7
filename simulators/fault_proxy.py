"""A TCP fault proxy: put it between coolctl and a simulated device to make the link misbehave.

coolctl's promise is that a slow, silent or broken device hurts nobody: its own points go
`stale` or `bad`, every other device keeps its poll rate, the supervisor goes to failsafe where
it must, and no command is lost or repeated when the link comes back. The simulated devices
themselves are well behaved; this proxy supplies the bad network and the half-dead device, so
that the fault tests exercise coolctl's real drivers over real sockets.

    proxy = FaultProxy("127.0.0.1", modbus_port)
    await proxy.start()                 # point coolctl at proxy.address instead of the device
    proxy.latency(0.5)                  # every chunk, each way, half a second late
    proxy.clear()                       # a healthy link again
    await proxy.stop()

It works at the byte level and knows no protocol, so it serves Modbus TCP, MQTT and HTTPS
alike: TLS passes through untouched (the proxy holds no key), which means that `garbage` and
`truncate` break the TLS session rather than the HTTP inside it, as a bad link does.

Faults, one at a time (setting one replaces the one before; `clear()` ends it):

- `latency(s, jitter)`: each chunk, in each direction, is forwarded `s` seconds (plus up to
  `jitter`) after it arrived, in order: a request-reply exchange takes 2·s longer. Data already
  on its way when the client gives up still arrives, as on a real slow link: a write that timed
  out at coolctl may yet reach the device.
- `stall()`: connections are accepted and read, and nothing is forwarded either way (a device
  whose TCP stack lives on and whose application hangs; a link that black-holes). What was held
  flows on `clear()`, on the connections still open; a connection whose client gives up during
  the stall is closed at once, so that a client that keeps reconnecting cannot pile them up.
- `drop()`: existing connections are closed (FIN) and new ones are accepted and closed before
  any byte is forwarded. (Refusing outright would mean closing the listening socket, whose port
  another socket could take before `clear()`; to a client both end the connection before any
  reply.)
- `reset()`: existing connections are reset (RST, through SO_LINGER 0), and so is every new
  one, until `clear()`.
- `truncate(n)`: replies (device → client) are cut after `n` more bytes on each connection,
  which is then closed.
- `garbage(p)`: each reply chunk is replaced, with probability `p`, by random bytes of the same
  length; the connection stays open and the client must notice.

Bounded: each direction of each connection holds at most `buffer_limit` bytes (beyond that the
proxy stops reading and TCP pushes back), upstream connects give up after `connect_timeout_s`,
and `stop()` closes every socket and ends every task it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["FaultMode", "FaultProxy", "ProxyStats"]

log = logging.getLogger("coolctl.simulators.fault_proxy")

FaultMode = Literal["clear", "latency", "stall", "drop", "reset", "truncate", "garbage"]

_CHUNK = 65536
_CLOSE_TIMEOUT_S = 1.0  # a peer that does not take the last bytes is reset after this long


@dataclass(slots=True)
class ProxyStats:
    """What went through the proxy. `bytes_up` is client → target (requests), `bytes_down`
    target → client (replies), both as forwarded (after any fault changed them)."""

    connections: int = 0  # accepted, ever
    active: int = 0  # open now
    refused: int = 0  # closed or reset at once by drop() or reset()
    upstream_failures: int = 0  # the target could not be reached
    bytes_up: int = 0
    bytes_down: int = 0
    garbled_chunks: int = 0
    truncated: int = 0  # connections cut by truncate()


@dataclass(frozen=True, slots=True)
class _Fault:
    mode: FaultMode = "clear"
    seconds: float = 0.0  # latency
    jitter_s: float = 0.0  # latency
    limit: int = 0  # truncate: reply bytes still allowed per connection
    probability: float = 0.0  # garbage

    def describe(self) -> str:
        if self.mode == "latency":
            jitter = f" + up to {self.jitter_s:g} s" if self.jitter_s else ""
            return f"latency {self.seconds:g} s{jitter}"
        if self.mode == "truncate":
            return f"truncate after {self.limit} bytes"
        if self.mode == "garbage":
            return f"garbage with probability {self.probability:g}"
        return self.mode


class _Teardown(Exception):
    """The connection is to end now (a client gone during a stall, a truncated reply)."""


@dataclass(slots=True)
class _Chunk:
    data: bytes | None  # None: end of stream
    arrived: float
    jitter_s: float


class _Pipe:
    """One direction of one connection: a reader that buffers what arrives (bounded) and a
    writer that forwards it when the current fault allows, changed as the fault says."""

    def __init__(
        self,
        proxy: FaultProxy,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        reply: bool,
    ) -> None:
        self.proxy = proxy
        self.link = link
        self.reader = reader
        self.writer = writer
        self.reply = reply
        self.buffered = 0
        self._queue: deque[_Chunk] = deque()
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()

    async def read(self) -> None:
        """Buffer what arrives until end of stream; a client that leaves during a stall takes
        its connection with it."""
        proxy = self.proxy
        while True:
            await self._space.wait()
            data = await self.reader.read(_CHUNK)
            if not data and proxy._fault.mode == "stall":
                raise _Teardown("peer closed during a stall")
            jitter = proxy._fault.jitter_s if proxy._fault.mode == "latency" else 0.0
            sample = proxy._rng.uniform(0.0, jitter) if jitter > 0 else 0.0
            self._queue.append(_Chunk(data or None, time.monotonic(), sample))
            self._ready.set()
            if not data:
                return
            self.buffered += len(data)
            if self.buffered >= proxy.buffer_limit:
                self._space.clear()

    async def write(self) -> None:
        """Forward chunks in order when the fault lets them go; returns after end of stream."""
        while True:
            while not self._queue:
                self._ready.clear()
                await self._ready.wait()
            chunk = self._queue[0]
            await self.proxy._until_released(chunk.arrived, chunk.jitter_s)
            self._queue.popleft()
            if chunk.data is None:
                return
            self.buffered -= len(chunk.data)
            if self.buffered < self.proxy.buffer_limit:
                self._space.set()
            data = self._faulted(chunk.data) if self.reply else chunk.data
            if data:
                self.writer.write(data)
                self.proxy._count(self.reply, len(data))
                await self.writer.drain()
            if self.reply and self.link.reply_budget == 0:
                self.proxy.stats.truncated += 1
                raise _Teardown("reply truncated")

    def _faulted(self, data: bytes) -> bytes:
        """A reply chunk as the current fault lets it through."""
        proxy, fault, link = self.proxy, self.proxy._fault, self.link
        if fault.mode == "garbage" and proxy._rng.random() < fault.probability:
            proxy.stats.garbled_chunks += 1
            return proxy._rng.randbytes(len(data))
        if fault.mode == "truncate" and link.reply_budget is not None:
            data = data[: link.reply_budget]
            link.reply_budget -= len(data)
        return data


class _Link:
    """One proxied connection: the client's socket, the target's, and a pipe each way."""

    def __init__(
        self, proxy: FaultProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.proxy = proxy
        self.client_reader = reader
        self.client = writer
        self.upstream_reader: asyncio.StreamReader | None = None
        self.upstream: asyncio.StreamWriter | None = None
        self.reply_budget: int | None = None  # truncate: reply bytes still allowed
        self.pipes: tuple[_Pipe, ...] = ()
        self._rst = False
        self._ending = asyncio.Event()

    def end(self, *, rst: bool) -> None:
        """Ask the link to close (reset with RST if `rst`); it does so from its own task."""
        self._rst = self._rst or rst
        self._ending.set()

    async def run(self) -> None:
        proxy = self.proxy
        try:
            target = await self._connect()
        except (OSError, TimeoutError) as exc:
            proxy.stats.upstream_failures += 1
            log.debug("fault proxy %s: target unreachable: %s", proxy.address, exc)
            return
        self.upstream_reader, self.upstream = target
        self.pipes = (
            _Pipe(proxy, self, self.client_reader, self.upstream, reply=False),
            _Pipe(proxy, self, self.upstream_reader, self.client, reply=True),
        )
        writers = [asyncio.create_task(pipe.write()) for pipe in self.pipes]
        readers = [asyncio.create_task(pipe.read()) for pipe in self.pipes]
        tasks = [asyncio.create_task(self._until_ended()), *writers, *readers]
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                # The link ends when asked to, when one direction has delivered its end of
                # stream, or on any error; a reader that only reached end of stream lets its
                # writer deliver what is buffered first.
                if any(task not in readers or task.exception() is not None for task in done):
                    break
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _until_ended(self) -> None:
        await self._ending.wait()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        proxy = self.proxy
        async with asyncio.timeout(proxy.connect_timeout_s):
            return await asyncio.open_connection(proxy.target_host, proxy.target_port)

    async def close(self) -> None:
        """Close both sockets: with RST if the fault says reset, else gracefully (bounded)."""
        sides = [(self.client_reader, self.client)]
        if self.upstream_reader is not None and self.upstream is not None:
            sides.append((self.upstream_reader, self.upstream))
        await asyncio.gather(*(_close(r, w, rst=self._rst) for r, w in sides))


async def _close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, rst: bool) -> None:
    """Close one socket: with RST at once (SO_LINGER 0, then abort), or with FIN after the
    bytes still buffered went out. For a FIN, what the peer still sends is read and dropped
    until it closes too: closing a socket with unread data makes the kernel send RST, and a
    drop is not a reset. A peer that takes longer than a second is reset after all."""
    transport = writer.transport
    if rst:
        _abort(writer)
        return
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT_S):
            if transport.can_write_eof() and not transport.is_closing():
                writer.write_eof()
                while await reader.read(_CHUNK):
                    pass
            writer.close()
            await writer.wait_closed()
    except (OSError, TimeoutError):
        _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close at once with RST: SO_LINGER with a zero timeout makes close() send one."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """A TCP proxy from `listen_host:listen_port` (0: a free port) to `target_host:target_port`
    whose faults can be switched while coolctl talks through it. See the module docstring.

    `seed` makes jitter and garbage reproducible.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        seed: int | None = None,
        buffer_limit: int = 256 * 1024,
        connect_timeout_s: float = 2.0,
    ) -> None:
        if not 0 < target_port <= 65535:
            raise ValueError(f"target_port must be within 1..65535, not {target_port}")
        if not 0 <= listen_port <= 65535:
            raise ValueError(f"listen_port must be within 0..65535, not {listen_port}")
        if buffer_limit < 1:
            raise ValueError(f"buffer_limit must be at least 1, not {buffer_limit}")
        if not connect_timeout_s > 0:
            raise ValueError(f"connect_timeout_s must be positive, not {connect_timeout_s}")
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.port = listen_port
        self.buffer_limit = buffer_limit
        self.connect_timeout_s = connect_timeout_s
        self.stats = ProxyStats()
        self._fault = _Fault()
        self.changed_at = time.monotonic()  # when the fault was last set or cleared
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._links: dict[asyncio.Task[None], _Link | None] = {}
        self._changed = asyncio.Event()

    # ---------------------------------------------------------------------------------------
    # Life cycle

    @property
    def address(self) -> str:
        """`host:port` to point a client at (the listening port once started)."""
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.port}"

    @property
    def target(self) -> str:
        """`host:port` of the device behind the proxy."""
        host = f"[{self.target_host}]" if ":" in self.target_host else self.target_host
        return f"{host}:{self.target_port}"

    async def start(self) -> None:
        """Listen (a free port when listen_port is 0: see `port` and `address`)."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._accept, self.listen_host, self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening, close every connection, end every task; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        # A connection accepted just before the listener closed may start its task a moment
        # later: it finds the proxy stopped and closes itself, and is waited for here too.
        while self._links:
            tasks = list(self._links)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(0)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ---------------------------------------------------------------------------------------
    # Faults

    def latency(self, seconds: float, jitter: float = 0.0) -> None:
        """Forward every chunk, each way, `seconds` (plus up to `jitter`) after it arrived."""
        if not (seconds >= 0 and jitter >= 0):
            raise ValueError(f"latency and jitter must be >= 0, not {seconds} and {jitter}")
        self._set(_Fault("latency", seconds=seconds, jitter_s=jitter))

    def stall(self) -> None:
        """Accept and read, forward nothing either way, until clear()."""
        self._set(_Fault("stall"))

    def drop(self) -> None:
        """Close every connection (FIN), and every new one before reading it, until clear()."""
        self._set(_Fault("drop"))
        self._end_all(rst=False)

    def reset(self) -> None:
        """Reset every connection (RST), and every new one, until clear()."""
        self._set(_Fault("reset"))
        self._end_all(rst=True)

    def truncate(self, nbytes: int) -> None:
        """Cut the replies of each connection after `nbytes` more bytes, then close it."""
        if nbytes < 0:
            raise ValueError(f"truncate needs a byte count >= 0, not {nbytes}")
        self._set(_Fault("truncate", limit=nbytes))
        for link in self._links.values():
            if link is not None:
                link.reply_budget = nbytes

    def garbage(self, probability: float) -> None:
        """Replace each reply chunk by random bytes of its length with this probability."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be within 0..1, not {probability}")
        self._set(_Fault("garbage", probability=probability))

    def clear(self) -> None:
        """A healthy link again; what a stall or latency held back flows on."""
        self._set(_Fault())
        for link in self._links.values():
            if link is not None:
                link.reply_budget = None

    @property
    def mode(self) -> FaultMode:
        """The current fault: `clear`, `latency`, `stall`, `drop`, `reset`, `truncate` or
        `garbage`."""
        return self._fault.mode

    def describe(self) -> str:
        """The current fault in words, e.g. `latency 0.5 s` or `clear`."""
        return self._fault.describe()

    @property
    def buffered(self) -> int:
        """Bytes held in the proxy now, all connections and directions together."""
        return sum(
            pipe.buffered
            for link in self._links.values()
            if link is not None
            for pipe in link.pipes
        )

    def _set(self, fault: _Fault) -> None:
        self._fault = fault
        self.changed_at = time.monotonic()
        # Wake every writer waiting on the previous fault: it decides again under the new one.
        self._changed.set()
        self._changed = asyncio.Event()

    def _end_all(self, *, rst: bool) -> None:
        for link in self._links.values():
            if link is not None:
                link.end(rst=rst)

    async def _until_released(self, arrived: float, jitter_s: float) -> None:
        """Wait until the current fault lets a chunk that arrived at `arrived` go on."""
        while True:
            fault, changed = self._fault, self._changed
            if fault.mode in ("stall", "drop", "reset"):  # held; dropped with the connection
                await changed.wait()
                continue
            if fault.mode != "latency":
                return
            left = arrived + fault.seconds + jitter_s - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await changed.wait()

    def _count(self, reply: bool, nbytes: int) -> None:
        if reply:
            self.stats.bytes_down += nbytes
        else:
            self.stats.bytes_up += nbytes

    # ---------------------------------------------------------------------------------------
    # Connections

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection, from accept to close (asyncio runs this as a task).

        stop() cancels it; it then closes its sockets and ends quietly, because asyncio's
        stream server reports a handler task that ends cancelled as an error.
        """
        task = asyncio.current_task()
        assert task is not None
        self.stats.connections += 1
        with contextlib.suppress(asyncio.CancelledError):
            await self._serve(task, reader, writer)

    async def _serve(
        self, task: asyncio.Task[None], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        stats = self.stats
        mode = self._fault.mode
        if self._server is None or mode in ("drop", "reset"):
            stats.refused += 1
            self._links[task] = None
            try:
                await _to_the_end(_close(reader, writer, rst=mode == "reset"))
            finally:
                del self._links[task]
            return
        link = _Link(self, reader, writer)
        if mode == "truncate":
            link.reply_budget = self._fault.limit
        self._links[task] = link
        stats.active += 1
        try:
            await link.run()
        finally:
            try:
                await _to_the_end(link.close())
            finally:
                stats.active -= 1
                del self._links[task]


async def _to_the_end(closing: Coroutine[Any, Any, None]) -> None:
    """Run a close to its end even if stop() cancels the caller meanwhile (then re-raise):
    a close cut short leaves its socket open."""
    task = asyncio.ensure_future(closing)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
