"""DMTF's own validators against the simulated Redfish services, offline, over HTTPS.

- `rf_service_validator` checks every resource a service serves against the CSDL schemas in
  tests/reference/redfish-schemas/csdl (`--skipschema`: nothing is downloaded). Zero errors.
- `rf_interop_validator` checks the OCP profiles in tests/reference/redfish-profiles (it reads the
  profiles, and the profiles they require, from that folder; it uses no schemas). Zero
  failures for the CDU and the rack PDU, and for a BMC against the OCP baseline.

Neither validator has an option to trust a CA: they use DMTF's `redfish` library, which sends
`verify=False` unless given a CA file, and their command lines offer none. So they talk HTTPS
without checking the certificate; tests/test_redfish_server.py checks that the services'
certificates verify against the simulation's CA.

One defect of rf_interop_validator 3.0.4 is worked around, in the open: its comparison code
has no branch for `AnyOf`, so a use case keyed with `"UseCaseComparison": "AnyOf"` never
applies, whatever the service says. The OCP rack PDU profile keys its branch-circuit use case
that way, so the stock tool reports "Circuit: Required Resource Error: Resource not found" for
any PDU and never checks the branch circuits at all. The PDU is therefore validated twice: with
the stock tool (that one failure, and only it, is expected) and with the tool's comparison
given the missing `AnyOf` (value among the listed values, as DSP0272 defines it), which must
pass with zero failures and does check the branches.

The simulation runs in a thread with its own event loop; the validators, synchronous programs,
run as subprocesses, all at once, each against a device of its own (two clients on one service
would see each other's sessions come and go, and the validator would report the 404).
"""

from __future__ import annotations

import asyncio
import html
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from coolctl.simulators.live import LiveSimulation, SimDeviceSpec, SimRackSpec

SHARED = Path(__file__).resolve().parent / "reference"
SCHEMAS = SHARED / "redfish-schemas" / "csdl"
PROFILES = SHARED / "redfish-profiles"
PASSWORD = "validate-me-42"
TIMEOUT_S = 80.0

# rf_interop_validator's comparison, given the AnyOf branch 3.0.4 lacks (see the docstring).
ANYOF_FIX = """
import sys
from redfish_interop_validator import console_scripts, helper

_stock = helper.evaluate_comparison

def evaluate_comparison(sut, prop, compare_type, values, payload, payload_full):
    if compare_type != "AnyOf":
        return _stock(sut, prop, compare_type, values, payload, payload_full)
    found, value = helper.find_property(prop, payload, payload_full)
    items = value if isinstance(value, list) else [value]
    if found and any(item in values for item in items):
        return None
    return "Comparison Error: The property does not contain one of the expected values"

helper.evaluate_comparison = evaluate_comparison
console_scripts.main()
"""

# What the OCP server profile asks that the simulated BMC does not do, and why.
SERVER_PROFILE_UNMET = {
    "Thermal": "legacy Thermal needs intake and system-board temperatures the plant lacks",
}


def tool(name: str) -> str:
    """The validator's executable, beside this Python or on PATH; missing fails the test."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is not installed: pip install redfish-service-validator / -interop-"
    return found


@dataclass(frozen=True)
class Result:
    """One validator run: its summary counts, failure texts and where its report is."""

    name: str
    command: list[str]
    returncode: int
    passed: int
    warned: int
    failed: int
    failures: list[str]
    warnings: list[str]
    output: str

    @property
    def summary(self) -> str:
        return (
            f"{self.name}: PASS {self.passed}, WARN {self.warned}, FAIL {self.failed}"
            f" (exit {self.returncode})"
        )


_TABLE = re.compile(
    r"PASS\s*\|\s*WARN\s*\|\s*FAIL.*?\n.*?\n\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)", re.S
)


def _rows(output: str, verdict: str) -> list[str]:
    """Rows of the HTML report (named in the validator's output) that end in `verdict`."""
    match = re.search(r"HTML Report:\s*(\S+)", output)
    if match is None or not Path(match.group(1)).is_file():
        return []
    page = Path(match.group(1)).read_text(errors="replace")
    found = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", page, re.S):
        text = html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", row))).strip()
        if text.endswith(verdict) and len(text) < 1000:
            found.append(text)
    return found


def run(name: str, command: list[str]) -> Result:
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT_S, cwd="/", check=False
    )
    output = completed.stdout + completed.stderr
    match = _TABLE.search(output)
    assert match is not None, f"{name}: no summary in the validator's output:\n{output[-3000:]}"
    passed, warned, failed = (int(g) for g in match.groups())
    return Result(
        name,
        command,
        completed.returncode,
        passed,
        warned,
        failed,
        _rows(output, "FAIL"),
        _rows(output, "WARN"),
        output,
    )


class BackgroundSimulation:
    """A LiveSimulation running in a thread of its own, for synchronous callers."""

    def __init__(self, simulation: LiveSimulation) -> None:
        self.simulation = simulation
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> LiveSimulation:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.simulation.start(), self._loop).result(10.0)
        return self.simulation

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self.simulation.stop(), self._loop).result(10.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        self._loop.close()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Result]]:
    """Every validator run once against one simulated rack, concurrently."""
    service_validator = tool("rf_service_validator")
    interop_validator = tool("rf_interop_validator")
    interop_validator_python = str(Path(interop_validator).parent / "python")
    if not Path(interop_validator_python).exists():
        interop_validator_python = sys.executable
    assert SCHEMAS.is_dir() and PROFILES.is_dir(), f"no schemas or profiles under {SHARED}"
    logs = tmp_path_factory.mktemp("validator-logs")
    devices = [
        SimDeviceSpec("bmc0", "server", server=0, password=PASSWORD, legacy_power=True),
        SimDeviceSpec("bmc1", "server", server=1, password=PASSWORD),
        SimDeviceSpec("bmc2", "server", server=2, password=PASSWORD, legacy_power=True),
    ]
    # several front-ends of the rack's one CDU and one PDU, one per validator
    devices += [
        SimDeviceSpec(f"cdu{i}", "cdu", protocol="redfish", password=PASSWORD) for i in (1, 2)
    ]
    devices += [
        SimDeviceSpec(f"pdu{i}", "pdu", protocol="redfish", password=PASSWORD) for i in (1, 2, 3)
    ]
    rack = SimRackSpec("r01", devices, load=0.7)
    simulation = LiveSimulation([rack], time_scale=5.0, tls_dir=tmp_path_factory.mktemp("tls"))
    with BackgroundSimulation(simulation) as sim:
        urls = {s.device: s.url for s in sim.services if s.protocol == "redfish"}
        account = ["--user", "admin", "--password", PASSWORD]

        def service(name: str, device: str) -> tuple[str, list[str]]:
            return name, [
                service_validator,
                "--rhost", urls[device], *account,
                "--schema_directory", str(SCHEMAS), "--skipschema",
                "--logdir", str(logs / name),
            ]  # fmt: skip

        def interop(
            name: str, device: str, profile: str, fixed: bool = False
        ) -> tuple[str, list[str]]:
            program = [interop_validator_python, "-c", ANYOF_FIX] if fixed else [interop_validator]
            return name, [
                *program, "--rhost", urls[device], *account,
                "--logdir", str(logs / name), str(PROFILES / profile),
            ]  # fmt: skip

        runs = [
            service("service-bmc", "bmc0"),
            service("service-cdu", "cdu1"),
            service("service-pdu", "pdu1"),
            interop("interop-cdu", "cdu2", "OCPCoolantDistributionUnit.v1_0_0.json"),
            interop("interop-pdu", "pdu2", "OCPRackPDU.v1_0_0.json"),
            interop("interop-pdu-anyof", "pdu3", "OCPRackPDU.v1_0_0.json", fixed=True),
            interop("interop-bmc-baseline", "bmc1", "OCPBaselineHardwareManagement.v1_1_1.json"),
            interop("interop-bmc-server", "bmc2", "OCPServerHardwareManagement.v1_1_0.json"),
        ]
        with ThreadPoolExecutor(len(runs)) as pool:
            futures = {name: pool.submit(run, name, command) for name, command in runs}
            done = {name: future.result() for name, future in futures.items()}
    for result in done.values():
        print(result.summary)
        for warning in result.warnings:
            print("  warning:", warning[:200])
    yield done


def _explain(result: Result) -> str:
    return "\n".join([result.summary, " ".join(result.command), *result.failures])


@pytest.mark.parametrize("name", ["service-bmc", "service-cdu", "service-pdu"])
def test_service_validator_finds_no_errors(results: dict[str, Result], name: str) -> None:
    result = results[name]
    print(result.summary)
    assert result.failed == 0 and result.returncode == 0, _explain(result)
    assert result.passed > 500, _explain(result)  # it did walk the whole tree


@pytest.mark.parametrize("name", ["interop-cdu", "interop-pdu-anyof", "interop-bmc-baseline"])
def test_ocp_profiles_are_met(results: dict[str, Result], name: str) -> None:
    result = results[name]
    print(result.summary)
    assert result.failed == 0 and result.returncode == 0, _explain(result)
    assert result.passed > 50, _explain(result)


def test_stock_interop_validator_fails_the_pdu_only_on_its_anyof_defect(
    results: dict[str, Result],
) -> None:
    result, fixed = results["interop-pdu"], results["interop-pdu-anyof"]
    print(result.summary)
    assert result.failed == 1, _explain(result)
    assert "Required Resource Error" in result.failures[0], _explain(result)
    assert "Use Case: Branches" in result.failures[0], _explain(result)
    assert fixed.passed > result.passed  # with AnyOf the branch circuits were checked too


def test_ocp_server_profile_is_met_but_for_what_the_plant_cannot_do(
    results: dict[str, Result],
) -> None:
    """The legacy Power resource (legacy_power=True) is found; Thermal and Reset are not."""
    result = results["interop-bmc-server"]
    print(result.summary)
    for failure in result.failures:
        print("  unmet:", failure[:160])
    unexplained = [
        f
        for f in result.failures
        if not any(f.startswith(key + " ") for key in SERVER_PROFILE_UNMET)
    ]
    assert not unexplained, _explain(result)
    assert result.failed == len(SERVER_PROFILE_UNMET), _explain(result)
