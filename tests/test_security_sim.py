"""The simulation is for tests and demos, and cannot be turned against its user.

The review's attacks: a symlink planted at the fixed `/tmp/coolctl-sim-<uid>.url` made the
simulation (run as root) overwrite the link's target; a web page in a browser on the same
machine injected a leak with a cross-origin `text/plain` POST to the unauthenticated control
endpoint; a config address of 0.0.0.0 put the simulated devices on every interface.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from coolctl.simulators.control_server import (
    endpoint,
    inject,
    private_directory,
    read_access,
    write_access,
)
from coolctl.simulators.live import LiveSimulation, SimDeviceSpec, SimRackSpec


def rack(host: str = "127.0.0.1") -> SimRackSpec:
    return SimRackSpec("r01", [SimDeviceSpec("cdu1", "cdu", "sim-cdu", host=host, port=0)])


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[LiveSimulation]:
    async with LiveSimulation([rack()], control=endpoint(port=0)) as simulation:
        yield simulation


# -- the control endpoint ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_cross_origin_text_post_cannot_inject_a_leak(sim: LiveSimulation) -> None:
    url = f"{sim.control_url}/faults"
    async with aiohttp.ClientSession() as session:
        # What a web page can send without a CORS preflight: text/plain, no Authorization.
        async with session.post(
            url,
            data='{"kind": "leak", "value": 5}',
            headers={"Content-Type": "text/plain", "Origin": "http://evil.example"},
        ) as response:
            assert response.status == 401
        # Even with the token, a body not sent as JSON is refused.
        token = {"Authorization": f"Bearer {sim.control_token}"}
        async with session.post(
            url, data='{"kind": "leak"}', headers={**token, "Content-Type": "text/plain"}
        ) as response:
            assert response.status == 415
        async with session.get(f"{sim.control_url}/state") as response:
            assert response.status == 401  # the plant's true state is not for strangers
        async with session.get(f"{sim.control_url}/healthz") as response:
            assert response.status == 200
    assert sim.faults.active() == []
    assert not sim.plants["r01"].truth().leak_detected
    with pytest.raises(RuntimeError, match="401"):
        await inject(sim.control_url or "", "leak", token="a-guess")
    assert sim.faults.active() == []
    assert await inject(sim.control_url or "", "leak", value=1.0, token=sim.control_token)
    assert len(sim.faults.active()) == 1


# -- the access file ---------------------------------------------------------------------------


def test_a_planted_symlink_is_never_written_through(tmp_path: Path) -> None:
    folder = private_directory(tmp_path / "sim")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    planted = folder / "coolctl-sim.url"
    planted.symlink_to(victim)
    write_access(planted, "http://127.0.0.1:1234", "t" * 43)
    assert victim.read_text() == "precious\n"
    assert not planted.is_symlink()
    assert stat.S_IMODE(planted.stat().st_mode) == 0o600
    assert read_access(planted) == ("http://127.0.0.1:1234", "t" * 43)
    assert [p.name for p in folder.iterdir()] == ["coolctl-sim.url"]  # no temporary left


def test_the_access_file_lives_in_a_directory_of_ones_own(tmp_path: Path) -> None:
    made = private_directory(tmp_path / "fresh")
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(ValueError, match="not a directory"):
        private_directory(tmp_path / "link")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(ValueError, match="open to others"):
        private_directory(shared)
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 65534, 65534)
        with pytest.raises(ValueError, match="belongs to uid 65534"):
            private_directory(foreign)


def test_a_symlink_as_the_access_file_is_not_read(tmp_path: Path) -> None:
    folder = private_directory(tmp_path / "sim")
    other = tmp_path / "other"
    other.write_text("http://127.0.0.1:9\nstolen\n")
    (folder / "coolctl-sim.url").symlink_to(other)
    with pytest.raises(OSError):
        read_access(folder / "coolctl-sim.url")


# -- where the devices listen ------------------------------------------------------------------


def test_simulated_devices_listen_on_loopback_unless_asked() -> None:
    for host in ("0.0.0.0", "::", "10.1.2.3"):
        with pytest.raises(ValueError, match="beyond loopback"):
            LiveSimulation([rack(host)])
    LiveSimulation([rack("127.0.0.1")])
    LiveSimulation([rack("0.0.0.0")], allow_remote=True)  # said so, by flag
