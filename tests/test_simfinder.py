"""`coolctl sim inject` finds the simulation meant: its own advert per run, the daemon behind
$COOLCTL_SOCKET, refusal when more than one could be meant, and the URL it used printed."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from coolctl.simulators.control_server import endpoint
from coolctl.simulators.live import LiveSimulation, SimDeviceSpec, SimRackSpec
from coolctl.tools.demo import inject_fault
from coolctl.tools.simfinder import Advert, advertised, choose, live_adverts


@pytest.fixture(autouse=True)
def private_runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.delenv("COOLCTL_SOCKET", raising=False)
    return runtime


def test_each_run_keeps_its_own_private_file(private_runtime_dir: Path) -> None:
    with advertised("http://127.0.0.1:1", Path("/run/a.sock")) as first:
        with advertised("http://127.0.0.1:2") as second:
            assert first is not None and second is not None and first != second
            for path in (first, second):
                assert stat.S_IMODE(path.stat().st_mode) == 0o600
                assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
            found = {advert.control_url: advert for advert in live_adverts()}
            assert all(advert.token is None for advert in found.values())
            assert set(found) == {"http://127.0.0.1:1", "http://127.0.0.1:2"}
            assert found["http://127.0.0.1:1"].socket == "/run/a.sock"
            assert found["http://127.0.0.1:2"].socket is None
        assert [a.control_url for a in live_adverts()] == ["http://127.0.0.1:1"]
    assert live_adverts() == []
    assert list((private_runtime_dir / "coolctl-sim").iterdir()) == []


def test_a_dead_simulation_is_not_offered(private_runtime_dir: Path) -> None:
    directory = private_runtime_dir / "coolctl-sim" / "run-dead"
    directory.mkdir(parents=True)
    (directory / "sim.json").write_text('{"control_url": "http://x", "pid": 999999999}')
    assert live_adverts() == []


def test_choose_prefers_the_daemon_of_the_socket_and_refuses_when_ambiguous() -> None:
    demo = Advert("http://127.0.0.1:1", os.getpid(), "/tmp/demo/control.sock", Path("a"))
    serve = Advert("http://127.0.0.1:2", os.getpid(), None, Path("b"))
    assert choose([demo, serve], "/tmp/demo/control.sock") is demo
    assert choose([serve], None) is serve
    assert choose([serve], "/elsewhere.sock") is serve  # the only one
    with pytest.raises(LookupError, match="2 simulations are running") as refused:
        choose([demo, serve], None)
    assert "http://127.0.0.1:1" in str(refused.value) and "--sim URL" in str(refused.value)
    with pytest.raises(LookupError, match="none runs the daemon of COOLCTL_SOCKET=/x"):
        choose([demo, serve], "/x")
    with pytest.raises(LookupError, match="no running simulation found"):
        choose([], None)


@pytest_asyncio.fixture
async def two_sims() -> AsyncIterator[tuple[LiveSimulation, LiveSimulation]]:
    specs = [SimRackSpec("r01", [SimDeviceSpec("cdu1", "cdu", "sim-cdu")])]
    first = LiveSimulation(specs, control=endpoint(port=0))
    second = LiveSimulation(specs, control=endpoint(port=0))
    async with first, second:
        yield first, second


@pytest.mark.asyncio
async def test_inject_goes_to_the_simulation_behind_the_socket_and_says_where(
    two_sims: tuple[LiveSimulation, LiveSimulation],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, second = two_sims
    assert first.control_url and second.control_url
    options = {"rack": None, "device": None, "point": None, "value": None, "duration_s": None}
    with (
        advertised(first.control_url, Path("/tmp/first.sock"), first.control_token),
        advertised(second.control_url, Path("/tmp/second.sock"), second.control_token),
    ):
        assert await inject_fault("leak", sim_url=None, **options) == 3
        err = capsys.readouterr().err
        assert "2 simulations are running" in err and first.control_url in err
        assert first.plants["r01"].truth().leak_rate_lpm == 0.0
        assert second.plants["r01"].truth().leak_rate_lpm == 0.0

        monkeypatch.setenv("COOLCTL_SOCKET", "/tmp/second.sock")
        assert await inject_fault("leak", sim_url=None, **options) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"{second.control_url}: ")
        assert second.plants["r01"].truth().leak_rate_lpm > 0.0
        assert first.plants["r01"].truth().leak_rate_lpm == 0.0

        monkeypatch.delenv("COOLCTL_SOCKET")
        assert await inject_fault("clear", sim_url=second.control_url, **options) == 0
        assert capsys.readouterr().out.startswith(f"{second.control_url}: ")
