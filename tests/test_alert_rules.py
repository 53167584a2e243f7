"""coolctl's Prometheus alerting rules: promtool's checks, its unit tests, and their coverage.

The rules are deploy/prometheus/coolctl-alerts.yml, their promtool unit tests
deploy/prometheus/coolctl-alerts.test.yml and the example scrape config
deploy/prometheus/prometheus.yml. The rule files are read here line by line (the test
dependencies include no YAML parser); they keep one `key: value` a line for that.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
RULES = DEPLOY / "coolctl-alerts.yml"
RULE_TESTS = DEPLOY / "coolctl-alerts.test.yml"
EXAMPLE_CONFIG = DEPLOY / "prometheus.yml"

# The alerts operators were promised; more may be added, none of these may go.
REQUIRED_ALERTS = {
    "CoolctlDaemonAbsent",
    "CoolctlDeviceDown",
    "CoolctlSupplyOverLimit",
    "CoolctlLeak",
    "CoolctlRackOverBudget",
    "CoolctlFailsafeActive",
    "CoolctlOverrideExpiringSoon",
    "CoolctlChipNearThrottle",
    "CoolctlRackThrottling",
    "CoolctlServerOutletOverLimit",
}
# Alerts not about one rack (so their annotations cannot name it).
NOT_PER_RACK = {"CoolctlDaemonAbsent"}


def promtool() -> str:
    """Path of promtool; the test fails (not skips) without it."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: run scripts/test, which installs it")
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """promtool with `args`, its output captured."""
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, check=False, timeout=60
    )


def alert_blocks() -> dict[str, str]:
    """Each alerting rule's text, by alert name, from `- alert: NAME` to the next rule."""
    text = RULES.read_text()
    starts = list(re.finditer(r"^\s*- (?:alert|record): *(\S+)\s*$", text, re.MULTILINE))
    blocks: dict[str, str] = {}
    for match, following in zip(starts, [*starts[1:], None], strict=True):
        if "- alert:" not in match.group(0):
            continue
        name = match.group(1)
        assert name not in blocks, f"alert {name} is defined twice"
        blocks[name] = text[match.start() : following.start() if following else len(text)]
    return blocks


def unit_test_cases() -> set[tuple[str, bool]]:
    """(alert name, fires?) for every `alert_rule_test` case of the unit tests."""
    cases: set[tuple[str, bool]] = set()
    alertname: str | None = None
    for line in RULE_TESTS.read_text().splitlines():
        stripped = line.split("#", 1)[0].strip()
        if match := re.fullmatch(r"alertname: *(\S+)", stripped):
            alertname = match.group(1)
        elif stripped.startswith("exp_alerts:"):
            assert alertname is not None, f"exp_alerts without an alertname: {line!r}"
            cases.add((alertname, stripped != "exp_alerts: []"))
            alertname = None
    return cases


def test_rules_pass_promtool_check() -> None:
    result = run_promtool("check", "rules", "--lint=all", "--lint-fatal", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_scrape_config_passes_promtool_check() -> None:
    """The example config is valid and loads the rules (promtool checks them with it)."""
    result = run_promtool("check", "config", str(EXAMPLE_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout, result.stdout
    assert "job_name: coolctl" in EXAMPLE_CONFIG.read_text()
    assert "127.0.0.1:18850" in EXAMPLE_CONFIG.read_text()


def test_rules_pass_their_promtool_unit_tests() -> None:
    result = run_promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_required_alerts_exist_with_severity_and_annotations() -> None:
    blocks = alert_blocks()
    missing = REQUIRED_ALERTS - blocks.keys()
    assert not missing, f"promised alerts missing: {sorted(missing)}"
    for name, block in blocks.items():
        assert name.startswith("Coolctl"), name
        severities = re.findall(r"^\s*severity: *(\S+)\s*$", block, re.MULTILINE)
        assert severities in (["critical"], ["warning"]), f"{name}: severity {severities}"
        for annotation in ("summary", "description"):
            assert re.search(rf"^\s*{annotation}:", block, re.MULTILINE), (
                f"{name} has no {annotation}"
            )
        if name not in NOT_PER_RACK:
            assert "$labels.rack" in block, f"{name}'s annotations do not name the rack"


def test_promised_for_durations() -> None:
    """The `for` of each promised alert; the leak alert must not wait at all."""
    expected = {
        "CoolctlDaemonAbsent": "2m",
        "CoolctlDeviceDown": "1m",
        "CoolctlSupplyOverLimit": "30s",
        "CoolctlLeak": None,
        "CoolctlRackOverBudget": "30s",
        "CoolctlFailsafeActive": "1m",
    }
    blocks = alert_blocks()
    for name, duration in expected.items():
        found = re.findall(r"^\s*for: *(\S+)\s*$", blocks[name], re.MULTILINE)
        assert found == ([duration] if duration else []), f"{name}: for {found}"


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    alerts = set(alert_blocks())
    cases = unit_test_cases()
    unknown = {name for name, _ in cases} - alerts
    assert not unknown, f"unit tests name alerts that do not exist: {sorted(unknown)}"
    missing = [
        f"{name} ({'firing' if fires else 'not firing'})"
        for name in sorted(alerts)
        for fires in (True, False)
        if (name, fires) not in cases
    ]
    assert not missing, f"no unit test case for: {', '.join(missing)}"
