"""Hardware-in-the-loop test helpers for coolctl configs, registered as a pytest plugin.

They belong to the product, not only to its own tests: a site engineer writes a HIL test for
their own config and profiles with them (README, "Writing a HIL test"). Everything runs on
loopback: the simulated devices are real Modbus TCP servers, the daemon talks to them over real
sockets, and `/metrics` is served on a free port.

    async def test_my_rack(coolctl_hil):
        async with coolctl_hil("site.toml", time_scale=10) as rack:
            rack.plant("r01").set_load(1.0)
            await rack.wait_until(lambda: rack.value("r01/cdu1/flow") is not None, 10)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from coolctl.config import Config
from coolctl.daemon.http import MetricsServer
from coolctl.daemon.runtime import Daemon
from coolctl.daemon.service import Service, ServiceOptions
from coolctl.model import PointId
from coolctl.rack.check import load_checked_config
from coolctl.simulators.control_server import endpoint
from coolctl.simulators.live import LiveSimulation
from coolctl.simulators.plant import RackPlant
from coolctl.tools.broker import Mosquitto
from coolctl.tools.rtu_sim import serve_over_rtu, with_rtu_services
from coolctl.tools.simrack import sim_specs, with_broker, with_services

__all__ = [
    "HilRack",
    "LoopLag",
    "coolctl_hil",
    "eventually",
    "eventually_blocking",
    "hil_rack",
    "simulated_rack",
]


def _config(config: Config | str | Path) -> Config:
    return config if isinstance(config, Config) else load_checked_config(config)


@asynccontextmanager
async def simulated_rack(
    config: Config | str | Path,
    *,
    time_scale: float = 1.0,
    load: float = 0.6,
    plant: Mapping[str, Any] | None = None,
    mqtt_broker: str | None = None,
    modbus_rtu: bool = False,
) -> AsyncIterator[tuple[LiveSimulation, Config]]:
    """Serve a config's simulated devices on free loopback ports.

    Yields the running simulation and the config re-pointed at it. `plant` overrides plant
    parameters (e.g. `{"initial_valve": 0.5}`) for every rack. A config with MQTT devices
    gets its sensors published to `mqtt_broker`, or to a private Mosquitto started here.
    With `modbus_rtu` the Modbus devices are (also) served on one virtual RS-485 bus, a paced
    pty pair at 19,200 baud 8N1, and the config's Modbus devices read them over RTU there.
    """
    loaded = _config(config)
    async with AsyncExitStack() as stack:
        if loaded.mqtt is not None:
            if mqtt_broker is None:
                broker = await stack.enter_async_context(Mosquitto())
                mqtt_broker = broker.address
            loaded = with_broker(loaded, mqtt_broker)
        specs = sim_specs(loaded, port=0, load=load, plant=plant)
        secrets = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="coolctl-sim-")))
        simulation = LiveSimulation(
            specs,
            time_scale=time_scale,
            mqtt_broker=mqtt_broker,
            control=endpoint(port=0),
            tls_dir=secrets / "tls",
        )
        await stack.enter_async_context(simulation)
        pointed = with_services(loaded, simulation.services, secrets)
        if modbus_rtu:
            pointed = with_rtu_services(pointed, await serve_over_rtu(simulation, stack))
        yield simulation, pointed


@dataclass
class HilRack:
    """A simulated rack and the whole daemon controlling it, as a HIL test sees them."""

    simulation: LiveSimulation
    service: Service
    config: Config
    time_scale: float
    socket_path: Path  # the control API: `coolctl status --socket PATH`

    @property
    def daemon(self) -> Daemon:
        return self.service.daemon

    @property
    def metrics(self) -> MetricsServer:
        assert self.service.metrics is not None
        return self.service.metrics

    @property
    def metrics_url(self) -> str:
        return self.metrics.url

    @property
    def mqtt_broker(self) -> str | None:
        """host:port of the broker the sensors publish to, if the config has MQTT devices."""
        mqtt = self.config.mqtt
        return f"{mqtt.host}:{mqtt.port}" if mqtt is not None else None

    def plant(self, rack: str) -> RackPlant:
        return self.simulation.plants[rack]

    def value(self, point: str) -> float | None:
        """The daemon's current good value of `rack/device/point`, or None."""
        reading = self.daemon.store.current(PointId.parse(point), self.daemon.clock())
        return reading.value if reading.usable else None

    async def wait_until(
        self, condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.05
    ) -> float:
        """Wait for `condition`; return the wall seconds it took. Fails the test on timeout."""
        return await eventually(condition, timeout_s, poll_s=poll_s)


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout_s: float = 10.0,
    *,
    what: str = "condition",
    poll_s: float = 0.01,
) -> float:
    """Wait until `condition` holds; return the wall seconds it took. Fails the test on timeout.

    The way a test waits for something to happen, instead of sleeping and hoping it has: it
    returns as soon as the condition holds, so the timeout can be generous (a loaded machine
    only makes it slower, never red). `condition` may be a coroutine function (it may poll a
    device itself, then say whether the result is what the test waits for). A test that must
    show something did *not* happen waits the same way for a positive event that proves time
    has passed in the system (further polls, ticks, plant seconds), then checks.
    """
    started = time.monotonic()
    deadline = asyncio.timeout(timeout_s)  # also cuts short a condition that hangs
    try:
        async with deadline:
            while True:
                held = condition()
                if inspect.isawaitable(held):
                    held = await held
                if held:
                    return time.monotonic() - started
                await asyncio.sleep(poll_s)
    except TimeoutError:
        if not deadline.expired():
            raise  # the condition's own
    pytest.fail(f"{what}: not within {timeout_s:g} s")


def eventually_blocking(
    condition: Callable[[], bool],
    timeout_s: float = 10.0,
    *,
    what: str = "condition",
    poll_s: float = 0.02,
) -> float:
    """`eventually` for code outside an event loop (a fixture starting a process, say)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"{what}: not within {timeout_s:g} s")
        time.sleep(poll_s)
    return time.monotonic() - started


class LoopLag:
    """How late the running event loop wakes a sleeper, sampled while the context is open.

    A latency a test must bound (a message within a step of its cause) is bounded by the
    expected figure plus the worst lag measured meanwhile: on a loaded machine everything on
    the loop runs late by about as much, and a bound that ignored it would fail for the
    machine's sake, not the code's.

        async with LoopLag() as lag:
            ...
        assert took_s <= 0.07 + lag.max_s
    """

    def __init__(self, every_s: float = 0.005) -> None:
        self.every_s = every_s
        self.max_s = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.every_s
            await asyncio.sleep(self.every_s)
            self.max_s = max(self.max_s, loop.time() - due)

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@asynccontextmanager
async def hil_rack(
    config: Config | str | Path,
    *,
    time_scale: float = 1.0,
    load: float = 0.6,
    plant: Mapping[str, Any] | None = None,
    mqtt_broker: str | None = None,
    modbus_rtu: bool = False,
) -> AsyncIterator[HilRack]:
    """Simulated devices, the daemon against them, `/metrics` on a free port, the control API
    on a UNIX socket and the store in a temporary directory (and, for a config with MQTT
    devices, a private Mosquitto unless `mqtt_broker` names one; `modbus_rtu`: the Modbus
    devices over a virtual RTU bus, as `simulated_rack` says)."""
    async with AsyncExitStack() as stack:
        simulation, pointed = await stack.enter_async_context(
            simulated_rack(
                config,
                time_scale=time_scale,
                load=load,
                plant=plant,
                mqtt_broker=mqtt_broker,
                modbus_rtu=modbus_rtu,
            )
        )
        pointed = _metrics_on_free_port(pointed)
        state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="coolctl-hil-")))
        socket_path = state / "control.sock"
        secrets = state / "secrets"
        secrets.mkdir()

        def reload_pointed(path: Path) -> Config:
            """A reload reads the config file again and points it at the same simulation, so
            that a test can change the file and reload as an operator would."""
            loaded = load_checked_config(path)
            if loaded.mqtt is not None and pointed.mqtt is not None:
                loaded = replace(loaded, mqtt=replace(loaded.mqtt, broker=pointed.mqtt.broker))
            return _metrics_on_free_port(with_services(loaded, simulation.services, secrets))

        service = Service(
            pointed, ServiceOptions(state / "coolctl.db", socket_path), load=reload_pointed
        )
        await service.start()
        stack.push_async_callback(service.stop)
        yield HilRack(simulation, service, pointed, time_scale, socket_path)


def _metrics_on_free_port(config: Config) -> Config:
    return replace(config, daemon=replace(config.daemon, metrics_listen=("127.0.0.1", 0)))


@pytest.fixture
def coolctl_hil() -> Callable[..., AbstractAsyncContextManager[HilRack]]:
    """Factory fixture: `async with coolctl_hil(config, time_scale=...) as rack: ...`."""
    return hil_rack
