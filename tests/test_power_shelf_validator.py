"""DMTF's rf_service_validator against the simulated power shelves, offline, over HTTPS: zero
errors against the 2025.4 CSDL (tests/test_redfish_validators.py explains the set-up).

The two warnings it gives are expected and kept: each shelf links its power supplies with
`PowerSupplies`, which DMTF deprecated in PowerDistribution v1_3_0 in favour of the chassis's
PowerSubsystem (which the simulator serves too), because DMTF's own mockups still use it and
clients written against them follow it.
"""

from __future__ import annotations

import pytest
from test_redfish_validators import SCHEMAS, BackgroundSimulation, _explain, run, tool

from coolctl.simulators.live import LiveSimulation, SimDeviceSpec, SimRackSpec

PASSWORD = "validate-me-42"


def test_service_validator_finds_no_errors_in_the_power_shelves(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    validator = tool("rf_service_validator")
    shelves = SimDeviceSpec(
        "shelves", "pdu", protocol="redfish", power_shelves=2, password=PASSWORD
    )
    simulation = LiveSimulation(
        [SimRackSpec("r01", [shelves], load=0.7)],
        time_scale=5.0,
        tls_dir=tmp_path_factory.mktemp("tls"),
    )
    with BackgroundSimulation(simulation) as sim:
        url = sim.service("r01", "shelves").url
        command = [
            validator,
            "--rhost", url, "--user", "admin", "--password", PASSWORD,
            "--schema_directory", str(SCHEMAS), "--skipschema",
            "--logdir", str(tmp_path_factory.mktemp("validator-logs")),
        ]  # fmt: skip
        result = run("service-shelf", command)
    print(result.summary)
    assert result.failed == 0 and result.returncode == 0, _explain(result)
    assert result.passed > 500, _explain(result)
    assert all("deprecated" in warning for warning in result.warnings), result.warnings
