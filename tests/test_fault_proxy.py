"""The TCP fault proxy (simulators/fault_proxy.py) on its own: each fault does what it says, over
plain TCP, TLS and MQTT, and the proxy leaves no task or socket behind.

The fault matrix (tests/test_fault_matrix.py) trusts these semantics when it reads what coolctl
did under a fault, so they are pinned here against simple targets whose behaviour is obvious.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import pytest

from coolctl.simulators.fault_proxy import FaultProxy
from coolctl.simulators.tls import client_ssl_context, create_tls_material, server_ssl_context
from coolctl.tools.broker import Mosquitto, find_mosquitto
from coolctl.tools.testing import LoopLag, eventually

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Target:
    """An echo server that also records what reached it, and how many connections."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, echo: bool = True) -> None:
        self.ssl_context = ssl_context
        self.echo = echo
        self.received = bytearray()
        self.connections = 0
        self.open = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Target:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self._writers.append(writer)
        try:
            while data := await reader.read(65536):
                self.received += data
                if self.echo:
                    writer.write(data)
                    await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            self.open -= 1
            writer.close()


@asynccontextmanager
async def proxied(target: Target, buffer_limit: int = 256 * 1024) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy("127.0.0.1", target.port, seed=7, buffer_limit=buffer_limit)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


async def connect(proxy: FaultProxy) -> Stream:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def exchange(stream: Stream, data: bytes, timeout_s: float = 2.0) -> bytes:
    reader, writer = stream
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(timeout_s):
        return await reader.readexactly(len(data))


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    await eventually(condition, timeout_s)


async def nothing_within(reader: asyncio.StreamReader, seconds: float) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            await reader.read(1)


def close(stream: Stream) -> None:
    stream[1].transport.abort()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.asyncio
async def test_a_clear_proxy_passes_bytes_both_ways_and_counts_them() -> None:
    async with Target() as target, proxied(target) as proxy:
        assert proxy.address == f"127.0.0.1:{proxy.port}" and proxy.describe() == "clear"
        stream = await connect(proxy)
        assert await exchange(stream, b"hello") == b"hello"
        assert await exchange(stream, b"x" * 200_000) == b"x" * 200_000
        stats = proxy.stats
        assert (stats.connections, stats.active) == (1, 1)
        assert stats.bytes_up == stats.bytes_down == 200_005
        close(stream)
        await until(lambda: proxy.stats.active == 0 and target.open == 0)


@pytest.mark.asyncio
async def test_latency_delays_each_direction_keeps_order_and_clear_releases_at_once() -> None:
    async with Target() as target, proxied(target) as proxy:
        stream = await connect(proxy)
        proxy.latency(0.1)
        async with LoopLag() as lag:
            started = time.monotonic()
            assert await exchange(stream, b"ping") == b"ping"
            took = time.monotonic() - started
        # 0.1 s each way: never sooner; later only by what the loop ran late meanwhile
        assert 0.2 <= took < 0.6 + 2 * lag.max_s, (took, lag.max_s)
        proxy.latency(0.02, jitter=0.05)
        reader, writer = stream
        for i in range(20):  # chunks sent apart stay in order whatever their jitter
            writer.write(b"%02d" % i)
            await asyncio.sleep(0.005)
        async with asyncio.timeout(3.0):
            assert await reader.readexactly(40) == b"".join(b"%02d" % i for i in range(20))
        proxy.latency(30.0)
        writer.write(b"held")
        await until(lambda: proxy.buffered >= 4)  # the proxy has read them, and holds them
        assert target.received.endswith(b"19")  # still held in the proxy
        proxy.clear()
        async with asyncio.timeout(5.0):  # at once, not after the 30 s latency
            assert await reader.readexactly(4) == b"held"
        close(stream)


@pytest.mark.asyncio
async def test_stall_accepts_and_reads_but_never_answers_until_cleared() -> None:
    async with Target() as target, proxied(target) as proxy:
        old = await connect(proxy)
        assert await exchange(old, b"a") == b"a"
        proxy.stall()
        old[1].write(b"b")
        new = await connect(proxy)  # accepted all the same
        new[1].write(b"c")
        await nothing_within(old[0], 0.3)
        await nothing_within(new[0], 0.01)
        assert bytes(target.received) == b"a"  # nothing went on to the device either
        assert proxy.stats.connections == 2 and proxy.buffered == 2
        proxy.clear()  # what was held flows on
        async with asyncio.timeout(1.0):
            assert await old[0].readexactly(1) == b"b"
            assert await new[0].readexactly(1) == b"c"
        close(old)
        close(new)


@pytest.mark.asyncio
async def test_a_client_that_gives_up_during_a_stall_takes_its_connection_with_it() -> None:
    async with Target() as target, proxied(target) as proxy:
        proxy.stall()
        for n in range(5):  # a client that times out and reconnects, again and again
            _, writer = await connect(proxy)
            writer.write(b"request")
            await until(lambda n=n: proxy.stats.connections == n + 1)  # the proxy has it
            writer.close()
        await until(lambda: proxy.stats.active == 0 and target.open == 0)
        assert target.received == b""


@pytest.mark.asyncio
async def test_drop_closes_existing_and_new_connections_with_fin_until_cleared() -> None:
    async with Target() as target, proxied(target) as proxy:
        old = await connect(proxy)
        assert await exchange(old, b"a") == b"a"
        proxy.drop()
        async with asyncio.timeout(1.0):
            assert await old[0].read() == b""  # end of stream, not a reset
        new = await connect(proxy)
        new[1].write(b"never forwarded")  # unread, yet the close is a FIN, not an RST
        async with asyncio.timeout(1.0):
            assert await new[0].read() == b""
        assert target.connections == 1 and proxy.stats.refused == 1
        proxy.clear()
        again = await connect(proxy)
        assert await exchange(again, b"z") == b"z"
        for stream in (old, new, again):
            close(stream)


@pytest.mark.asyncio
async def test_reset_sends_rst_to_existing_and_new_connections_until_cleared() -> None:
    async with Target() as target, proxied(target) as proxy:
        old = await connect(proxy)
        assert await exchange(old, b"a") == b"a"
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(1.0):
                await old[0].read()
        new = await connect(proxy)
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(1.0):
                new[1].write(b"x")
                await new[0].read()
        await until(lambda: target.open == 0)
        assert target.connections == 1
        proxy.clear()
        again = await connect(proxy)
        assert await exchange(again, b"z") == b"z"
        for stream in (old, new, again):
            close(stream)


@pytest.mark.asyncio
async def test_truncate_cuts_each_connections_replies_after_n_bytes_then_closes() -> None:
    async with Target() as target, proxied(target) as proxy:
        proxy.truncate(3)
        assert proxy.describe() == "truncate after 3 bytes"
        for _ in range(2):
            reader, writer = await connect(proxy)
            writer.write(b"abcdef")
            async with asyncio.timeout(1.0):
                assert await reader.read() == b"abc"
            writer.close()
        assert proxy.stats.truncated == 2
        assert target.received == b"abcdef" * 2  # requests are not cut
        await until(lambda: target.open == 0)


@pytest.mark.asyncio
async def test_garbage_replaces_reply_chunks_with_random_bytes_of_the_same_length() -> None:
    async with Target() as target, proxied(target) as proxy:
        stream = await connect(proxy)
        proxy.garbage(1.0)
        reply = await exchange(stream, b"A" * 64)
        assert len(reply) == 64 and reply != b"A" * 64
        assert target.received == b"A" * 64  # requests are not touched
        proxy.garbage(0.0)
        assert await exchange(stream, b"B" * 64) == b"B" * 64
        proxy.garbage(0.5)
        garbled = 0
        for _ in range(200):
            garbled += await exchange(stream, b"C" * 32) != b"C" * 32
        assert 60 < garbled < 140
        assert proxy.stats.garbled_chunks == 1 + garbled
        close(stream)


@pytest.mark.asyncio
async def test_tls_passes_through_untouched_and_garbage_or_truncation_breaks_it(
    tmp_path: Path,
) -> None:
    tls = create_tls_material(tmp_path)
    server = server_ssl_context(tls.server_cert, tls.server_key)
    client = client_ssl_context(tls.ca_cert)
    async with Target(server) as target, proxied(target) as proxy:

        async def session() -> bytes:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", proxy.port, ssl=client, server_hostname="127.0.0.1"
            )
            try:
                writer.write(b"GET / HTTP/1.1\r\n\r\n")
                async with asyncio.timeout(2.0):
                    return await reader.readexactly(18)
            finally:
                writer.transport.abort()

        assert await session() == b"GET / HTTP/1.1\r\n\r\n"  # the certificate checks out
        breaking: list[Callable[[], None]] = [
            lambda: proxy.garbage(1.0),
            lambda: proxy.truncate(40),
        ]
        for fault in breaking:
            fault()
            with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
                await session()
        proxy.clear()
        assert await session() == b"GET / HTTP/1.1\r\n\r\n"


@pytest.mark.asyncio
async def test_mqtt_through_the_proxy_and_a_stall_holds_messages_back() -> None:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: apt-get install mosquitto")
    async with Mosquitto() as broker:
        proxy = FaultProxy(broker.host, broker.port)
        async with proxy, aiomqtt.Client(broker.host, broker.port) as publisher:
            async with aiomqtt.Client("127.0.0.1", proxy.port) as subscriber:
                await subscriber.subscribe("t/#")
                messages = subscriber.messages

                async def next_payload(timeout_s: float) -> bytes:
                    async with asyncio.timeout(timeout_s):
                        message = await anext(messages)
                    payload = message.payload
                    assert isinstance(payload, bytes)
                    return payload

                await publisher.publish("t/1", b"first")
                assert await next_payload(2.0) == b"first"
                proxy.stall()
                await publisher.publish("t/1", b"held")
                with pytest.raises(TimeoutError):
                    await next_payload(0.3)
                proxy.clear()
                assert await next_payload(2.0) == b"held"
            assert proxy.stats.bytes_down > 0 and proxy.stats.bytes_up > 0


@pytest.mark.asyncio
async def test_a_stall_holds_at_most_the_buffer_limit_and_tcp_pushes_back() -> None:
    async with Target(echo=False) as target, proxied(target, buffer_limit=64 * 1024) as proxy:
        _, writer = await connect(proxy)
        proxy.stall()
        payload = b"y" * (8 * 2**20)
        writer.write(payload)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await writer.drain()  # the proxy stopped reading: the client waits
        assert proxy.buffered <= 64 * 1024 + 65536
        proxy.clear()
        async with asyncio.timeout(5.0):
            await writer.drain()
        await until(lambda: len(target.received) == len(payload), 5.0)
        writer.transport.abort()


@pytest.mark.asyncio
async def test_a_target_that_is_down_closes_the_client_and_is_counted() -> None:
    async with Target() as target:
        port = target.port
    proxy = FaultProxy("127.0.0.1", port)
    async with proxy:
        reader, writer = await connect(proxy)
        async with asyncio.timeout(3.0):
            assert await reader.read() == b""
        writer.close()
        assert proxy.stats.upstream_failures == 1


@pytest.mark.asyncio
async def test_stop_closes_every_socket_and_ends_every_task_whatever_the_fault() -> None:
    async with Target() as target:
        await asyncio.sleep(0)
        fds, tasks = open_fds(), asyncio.all_tasks()
        proxy = FaultProxy("127.0.0.1", target.port)
        await proxy.start()
        clients = []
        faults: list[Callable[[], None]] = [
            proxy.clear,
            proxy.stall,
            lambda: proxy.latency(5.0),
            proxy.clear,
        ]
        for fault in faults:
            fault()
            stream = await connect(proxy)
            stream[1].write(b"data")
            clients.append(stream)
        await until(lambda: target.connections == 4)
        started = time.monotonic()
        await proxy.stop()
        assert time.monotonic() - started < 2.0
        assert proxy.stats.active == 0
        for stream in clients:
            close(stream)
        await proxy.stop()  # idempotent
        await until(lambda: target.open == 0)
        await until(lambda: asyncio.all_tasks() - tasks == set() and open_fds() == fds)


def test_arguments_are_checked() -> None:
    for bad in (
        lambda: FaultProxy("127.0.0.1", 0),
        lambda: FaultProxy("127.0.0.1", 1, listen_port=70000),
        lambda: FaultProxy("127.0.0.1", 1, buffer_limit=0),
        lambda: FaultProxy("127.0.0.1", 1, connect_timeout_s=0),
        lambda: FaultProxy("127.0.0.1", 1).latency(-1),
        lambda: FaultProxy("127.0.0.1", 1).truncate(-1),
        lambda: FaultProxy("127.0.0.1", 1).garbage(1.5),
    ):
        with pytest.raises(ValueError):
            bad()
