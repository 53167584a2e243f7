"""HTTP control of a running simulation: inject faults and look at the rack from outside.

`coolctl sim serve` runs the simulated rack in one process and the daemon runs in another (or on
another machine in a rehearsal), so faults cannot always be injected by calling `apply_fault`
in-process. This server exposes the same call over HTTP on loopback:

- `POST /faults` with a JSON object `{kind, rack, device, point, value, duration_s, servers}`
  (only `kind` is required) -> 200 `{"applied": "<what was done>"}` or 400 `{"error": "..."}`.
- `GET /state` -> per rack: plant time, load, pump, leak, reservoir, links, active faults. It
  reads the plant's true state: it is for the people and tests driving the simulation, never
  for the daemon, which must only see what the devices report.
- `GET /healthz` -> 200 while the plant is being stepped, 503 when it is not.

It is for tests and demos. It can break the rack at will, so it binds to 127.0.0.1 by default
and every request but `/healthz` needs the server's bearer token (random, made at start). A
POST must say `Content-Type: application/json`: a web page in a browser on the same machine can
send a cross-origin `text/plain` POST without asking, but not a JSON one. Whoever starts the
simulation hands URL and token on through a file only its user can read: `write_access` creates
it exclusively (no symlink followed, mode 0600) in a private directory (`private_directory`).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import os
import secrets
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from coolctl.simulators.faults import apply_fault

if TYPE_CHECKING:
    from coolctl.simulators.live import LiveSimulation

__all__ = [
    "ControlServer",
    "inject",
    "private_directory",
    "rack_state",
    "read_access",
    "simulation_state",
    "write_access",
]

log = logging.getLogger("coolctl.simulators.control")

_TEXT_FIELDS = ("rack", "device", "point")
_NUMBER_FIELDS = ("value", "duration_s")
_FIELDS = frozenset({"kind", "servers", *_TEXT_FIELDS, *_NUMBER_FIELDS})


def rack_state(simulation: LiveSimulation, rack: str) -> dict[str, Any]:
    """What an operator wants to know about a simulated rack while injecting faults."""
    plant = simulation.plants[rack]
    truth = plant.truth()
    params = plant.params
    span = params.server_max_w - params.server_idle_w
    demand = truth.server_demand_w
    load = sum((d - params.server_idle_w) / span for d in demand) / len(demand) if demand else 0.0
    links: dict[str, dict[str, Any]] = {}
    for (server_rack, device), server in simulation.servers.items():
        if server_rack == rack:
            links[device] = {"protocol": "modbus", "online": not server.offline}
    for (server_rack, device), bmc in simulation.redfish.items():
        if server_rack == rack:
            links[device] = {"protocol": "redfish", "online": not bmc.offline}
    for (sensor_rack, device), publisher in simulation.publishers.items():
        if sensor_rack == rack:
            links[device] = {
                "protocol": "mqtt",
                "online": not publisher.paused,
                "broker_connected": publisher.connected,
            }
    return {
        "plant_time_s": round(truth.time_s, 3),
        "load": round(load, 4),
        "it_power_w": round(sum(truth.server_power_w), 1),
        "pump": {
            "running": truth.pump_running,
            "speed": round(truth.pump_speed, 4),
            "speed_command": round(truth.pump_speed_command, 4),
            "standby_active": truth.standby_pump_active,
            "flow_lpm": round(truth.flow_lpm, 2),
            "differential_pressure_pa": round(truth.differential_pressure_pa, 1),
        },
        "leak": {"detected": truth.leak_detected},
        "reservoir_level_l": round(truth.reservoir_level_l, 3),
        "supply_temperature_c": round(truth.supply_temperature_c, 3),
        "facility_water_c": round(truth.facility_supply_temperature_c, 3),
        "links": links,
        "active_faults": [fault.as_dict() for fault in simulation.faults.active(rack)],
    }


def simulation_state(simulation: LiveSimulation) -> dict[str, Any]:
    return {
        "time_scale": simulation.time_scale,
        "racks": {rack: rack_state(simulation, rack) for rack in simulation.plants},
    }


def _fault_arguments(body: object) -> tuple[str, dict[str, Any]]:
    """Check a POST /faults body; ValueError says what is wrong with it."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object with at least a 'kind'")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}"
        )
    kind = body.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ValueError("'kind' is required and must be a string")
    arguments: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"'{name}' must be a string or null")
        arguments[name] = value
    for name in _NUMBER_FIELDS:
        value = body.get(name)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(f"'{name}' must be a number or null")
        arguments[name] = None if value is None else float(value)
    servers = body.get("servers")
    if servers is not None:
        if not isinstance(servers, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in servers
        ):
            raise ValueError("'servers' must be a list of server numbers or null")
        arguments["servers"] = servers
    return kind, arguments


def private_directory(path: Path) -> Path:
    """`path` as a directory only this user can enter: made with mode 0700 if missing, and
    refused (ValueError) if it is a symlink, someone else's, or open to others. Files in it
    cannot be planted or swapped by other users, unlike files straight under /tmp."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise ValueError(f"{path} is not a directory (a symlink?); refusing to use it")
    if info.st_uid != os.getuid():
        raise ValueError(f"{path} belongs to uid {info.st_uid}, not to you; refusing to use it")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ValueError(f"{path} is open to others (mode {stat.S_IMODE(info.st_mode):04o})")
    return path


def write_access(path: Path, url: str, token: str) -> None:
    """Leave URL and token in `path` (two lines), readable by this user only. The file is
    created exclusively and without following a symlink, then renamed into place, so a link
    or file planted at `path` is never written through."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    descriptor = os.open(temporary, flags, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(f"{url}\n{token}\n")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def read_access(path: Path) -> tuple[str, str | None]:
    """URL and token from a file `write_access` wrote (OSError if it cannot be read)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(descriptor, encoding="utf-8") as file:
        lines = file.read().split()
    if not lines:
        raise OSError(f"{path} is empty")
    return lines[0], lines[1] if len(lines) > 1 else None


def endpoint(host: str = "127.0.0.1", port: int = 0) -> Callable[[LiveSimulation], ControlServer]:
    """What `LiveSimulation(control=...)` starts: this server on `host:port` (0: a free port)."""
    return lambda simulation: ControlServer(simulation, host=host, port=port)


class ControlServer:
    """The control HTTP server of one simulation; `port=0` picks a free port."""

    def __init__(
        self, simulation: LiveSimulation, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.simulation = simulation
        self.host = host
        self.port = port
        self.token = secrets.token_urlsafe(32)
        """The bearer token every request but /healthz must carry."""
        self._runner: web.AppRunner | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("control server already started")
        app = web.Application(middlewares=[self._authorise], client_max_size=64 * 1024)
        app.router.add_post("/faults", self._post_fault)
        app.router.add_get("/state", self._get_state)
        app.router.add_get("/healthz", self._get_health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("simulation control on %s", self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @web.middleware
    async def _authorise(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Any],
    ) -> web.StreamResponse:
        """The token on everything but /healthz; JSON, said so, on every POST."""
        if request.path != "/healthz":
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), self.token.encode()
            ):
                return web.json_response(
                    {"error": "missing or wrong bearer token (see the simulation's access file)"},
                    status=401,
                )
        if request.method == "POST" and request.content_type != "application/json":
            return web.json_response(
                {"error": "the body must be sent as Content-Type: application/json"}, status=415
            )
        response: web.StreamResponse = await handler(request)
        return response

    async def _post_fault(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response({"error": "the body is not valid JSON"}, status=400)
        try:
            kind, arguments = _fault_arguments(body)
            applied = apply_fault(self.simulation, kind, **arguments)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except Exception as exc:
            log.exception("fault injection failed")
            return web.json_response({"error": f"fault injection failed: {exc}"}, status=500)
        return web.json_response({"applied": applied})

    async def _get_state(self, request: web.Request) -> web.Response:
        return web.json_response(simulation_state(self.simulation))

    async def _get_health(self, request: web.Request) -> web.Response:
        running = self.simulation.running
        return web.json_response(
            {"status": "ok" if running else "stopped", "plant_running": running},
            status=200 if running else 503,
        )


async def inject(
    control_url: str,
    kind: str,
    *,
    rack: str | None = None,
    device: str | None = None,
    point: str | None = None,
    value: float | None = None,
    duration_s: float | None = None,
    servers: Sequence[int] | None = None,
    timeout_s: float = 5.0,
    token: str | None = None,
) -> str:
    """Inject a fault through a simulation's control server; return what it applied.

    Raises ValueError with the server's message when it refuses the fault (HTTP 400),
    RuntimeError for any other answer, and aiohttp.ClientError when it cannot be reached.
    """
    body: dict[str, Any] = {"kind": kind}
    for name, given in (
        ("rack", rack),
        ("device", device),
        ("point", point),
        ("value", value),
        ("duration_s", duration_s),
    ):
        if given is not None:
            body[name] = given
    if servers is not None:
        body["servers"] = list(servers)
    url = control_url.rstrip("/") + "/faults"
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url, json=body, headers=headers) as response,
    ):
        text = await response.text()
        try:
            answer = json.loads(text)
        except json.JSONDecodeError:
            answer = None
        if response.status == 200 and isinstance(answer, dict) and "applied" in answer:
            return str(answer["applied"])
        if response.status == 400 and isinstance(answer, dict) and "error" in answer:
            raise ValueError(str(answer["error"]))
        detail = answer.get("error") if isinstance(answer, dict) else text.strip()[:200]
        raise RuntimeError(f"control server at {control_url} answered {response.status}: {detail}")
