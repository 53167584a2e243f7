"""coolctl's Grafana dashboards: their JSON, and every panel query against a real Prometheus.

Static checks read deploy/grafana/dashboards/*.json: valid JSON with the classic dashboard fields,
stable and unique uids, unique panel ids, panels on the 24-column grid, every query on the
provisioned datasource uid, and only known template variables.

The integration test runs the daemon against the simulated rack, starts a real Prometheus
(Debian's `prometheus` package) that scrapes it every second and loads coolctl's alerting rules,
then sends every panel query (variables filled in as Grafana would) to Prometheus' HTTP API:
each must parse and return data, unless it needs a metric listed in PENDING_METRICS or
CONDITIONAL_METRICS that the scrape does not have (those are reported, not failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from coolctl.tools.testing import eventually, hil_rack

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "deploy" / "grafana" / "dashboards"
DASHBOARDS = sorted(DASHBOARD_DIR.glob("*.json"))
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
ALERT_RULES = ROOT / "deploy" / "prometheus" / "coolctl-alerts.yml"
CONFIG = Path(__file__).parent / "configs" / "hil-full-rack.toml"

DATASOURCE_UID = "coolctl-prometheus"
EXPECTED_UIDS = {"coolctl-site", "coolctl-rack"}
RACK = "r01"
# Grafana's built-in variables, as the test fills them in (scrape interval 1 s).
BUILTIN_VARIABLES = {"__rate_interval": "5s", "__interval": "5s", "__range": "1m"}

# Metrics not yet exported by coolctl. While one is absent from the scrape, a query that needs it
# may come back empty (reported as pending). Remove each from this set once it has landed.
PENDING_METRICS: frozenset[str] = frozenset()
# Metrics whose series exist only once something happened that this healthy simulated rack does
# not produce: a poll error. Queries that need them may be empty. (The test sets an operator
# override so that the override panels have data.)
CONDITIONAL_METRICS = frozenset(
    {
        "coolctl_device_poll_errors_total",
    }
)

_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))|\[\[(\w+)\]\]")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_METRIC = re.compile(r"\bcoolctl_[a-zA-Z0-9_]+\b")
_LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?(\w+)\)$")


class PendingPanelsWarning(UserWarning):
    """Panel queries that returned no data because metrics they need are not exported yet."""


@dataclass(frozen=True)
class Query:
    """One panel target: where it is, and the PromQL Grafana would send."""

    dashboard: str
    panel: str
    ref: str
    expr: str
    instant: bool

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref}"


def load(path: Path) -> dict[str, Any]:
    """One dashboard file, parsed."""
    board = json.loads(path.read_text())
    assert isinstance(board, dict), path
    return board


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def queries(board: dict[str, Any]) -> list[Query]:
    """Every query a dashboard's panels send (hidden targets left out)."""
    return [
        Query(
            board["uid"],
            panel.get("title", "?"),
            target.get("refId", "?"),
            target["expr"],
            bool(target.get("instant")) and not target.get("range", False),
        )
        for panel in all_panels(board["panels"])
        for target in panel.get("targets", [])
        if not target.get("hide")
    ]


def variable_names(expr: str) -> set[str]:
    """The template variables an expression uses: $name, ${name}, ${name:format}, [[name]]."""
    return {next(g for g in m.groups() if g) for m in _VARIABLE.finditer(expr)}


def substitute(expr: str, values: dict[str, str]) -> str:
    """The expression with its template variables filled in (KeyError for an unknown one)."""

    def one(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        return values[name]

    return _VARIABLE.sub(one, expr)


def metric_names(expr: str) -> set[str]:
    """The coolctl metrics an expression reads (string literals such as label values left out)."""
    return set(_METRIC.findall(_STRING.sub('""', expr)))


def query_variables(board: dict[str, Any]) -> list[dict[str, Any]]:
    """The dashboard's template variables that query the datasource."""
    return [v for v in board["templating"]["list"] if v.get("type") == "query"]


def variable_query(variable: dict[str, Any]) -> str:
    """A query variable's PromQL-side query (Grafana stores a string or an object)."""
    query = variable["query"]
    return str(query["query"] if isinstance(query, dict) else query)


# --- static checks -------------------------------------------------------------------------


def test_dashboards_are_classic_json_with_stable_uids() -> None:
    assert {load(path)["uid"] for path in DASHBOARDS} == EXPECTED_UIDS
    for path in DASHBOARDS:
        text = path.read_text()
        board = load(path)
        for key in ("uid", "title", "panels", "templating", "time", "refresh", "schemaVersion"):
            assert key in board, f"{path.name}: no {key}"
        assert isinstance(board["templating"]["list"], list)
        assert 36 <= board["schemaVersion"] <= 41, f"{path.name}: schemaVersion"
        assert board.get("id") is None, f"{path.name}: a saved database id does not belong here"
        assert "__inputs" not in board and "${DS_" not in text, (
            f"{path.name}: datasource inputs do not resolve under file provisioning"
        )
        assert board["time"].get("from") and board["time"].get("to")
        assert "coolctl" in board.get("tags", [])


def test_panel_ids_are_unique_and_panels_fit_the_grid() -> None:
    for path in DASHBOARDS:
        board = load(path)
        panels = list(all_panels(board["panels"]))
        ids = [panel.get("id") for panel in panels]
        assert None not in ids, f"{path.name}: a panel without an id"
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        occupied: dict[tuple[int, int], dict[str, Any]] = {}
        for panel in panels:
            assert panel.get("title"), f"{path.name}: panel {panel['id']} has no title"
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    other = occupied.setdefault((x, y), panel)
                    assert other is panel, (
                        f"{path.name}: {other['title']} overlaps {panel['title']}"
                    )


def test_every_query_uses_the_provisioned_datasource() -> None:
    for path in DASHBOARDS:
        board = load(path)
        for panel in all_panels(board["panels"]):
            if panel["type"] == "row":
                continue
            assert panel.get("targets"), f"{path.name}: {panel['title']} has no query"
            assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, (
                f"{path.name}: {panel['title']}"
            )
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == DATASOURCE_UID, (
                    f"{path.name}: {panel['title']} {target['refId']}"
                )
                assert target["expr"].strip(), f"{path.name}: {panel['title']} empty expr"
            refs = [target["refId"] for target in panel["targets"]]
            assert len(refs) == len(set(refs)), f"{path.name}: {panel['title']} refIds"
        for variable in query_variables(board):
            assert variable["datasource"]["uid"] == DATASOURCE_UID, variable["name"]


def test_queries_use_only_defined_variables() -> None:
    for path in DASHBOARDS:
        board = load(path)
        defined = {v["name"] for v in board["templating"]["list"]} | set(BUILTIN_VARIABLES)
        for query in queries(board):
            unknown = variable_names(query.expr) - defined
            assert not unknown, f"{query}: unknown variables {unknown}"
        for variable in query_variables(board):
            assert _LABEL_VALUES.match(variable_query(variable)), variable["name"]


def test_rack_variable_comes_from_the_device_metrics() -> None:
    rack_board = load(DASHBOARD_DIR / "coolctl-rack.json")
    (rack,) = [v for v in rack_board["templating"]["list"] if v["name"] == "rack"]
    assert variable_query(rack) == "label_values(coolctl_device_up, rack)"
    assert not rack.get("multi") and not rack.get("includeAll")
    assert all("$rack" in q.expr for q in queries(rack_board)), "a rack panel ignores $rack"


def test_provisioning_names_the_datasource_uid_and_the_dashboards() -> None:
    datasource = (PROVISIONING / "datasources" / "coolctl.yaml").read_text()
    assert re.search(r"^apiVersion: 1$", datasource, re.MULTILINE)
    assert re.search(rf"^\s+uid: {DATASOURCE_UID}$", datasource, re.MULTILINE)
    assert re.search(r"^\s+type: prometheus$", datasource, re.MULTILINE)
    provider = (PROVISIONING / "dashboards" / "coolctl.yaml").read_text()
    assert re.search(r"^apiVersion: 1$", provider, re.MULTILINE)
    assert re.search(r"^providers:$", provider, re.MULTILINE)
    assert re.search(r"^\s+type: file$", provider, re.MULTILINE)
    assert re.search(r"^\s+path: /\S+$", provider, re.MULTILINE)


# --- against a real Prometheus -------------------------------------------------------------


def prometheus_binary() -> str:
    """Path of the Prometheus server; the test fails (not skips) without it."""
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail("prometheus is not installed: run scripts/test, which installs it")
    return path


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusApi:
    """The few HTTP API calls the test needs."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def get(self, path: str, **params: str) -> dict[str, Any]:
        """GET an API path; the decoded JSON body, whatever the status."""
        async with self.session.get(self.base + path, params=params) as response:
            body: dict[str, Any] = await response.json(content_type=None)
            return body

    async def query(self, expr: str, instant: bool) -> dict[str, Any]:
        """Evaluate as Grafana does: an instant query, or a range over the last 30 s."""
        now = time.time()
        if instant:
            return await self.get("/api/v1/query", query=expr, time=f"{now:.3f}")
        return await self.get(
            "/api/v1/query_range",
            query=expr,
            start=f"{now - 30:.3f}",
            end=f"{now:.3f}",
            step="1",
        )

    async def values(self, expr: str) -> list[float]:
        """The sample values of an instant query."""
        body = await self.query(expr, instant=True)
        assert body["status"] == "success", body
        return [float(sample["value"][1]) for sample in body["data"]["result"]]


@contextlib.asynccontextmanager
async def running_prometheus(
    tmp_path: Path, target: str, metrics_path: str
) -> AsyncIterator[PrometheusApi]:
    """A Prometheus scraping `target` every second with coolctl's rules; stopped with SIGTERM."""
    port = free_port()
    config = {  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERT_RULES)],
        "scrape_configs": [
            {
                "job_name": "coolctl",
                "metrics_path": metrics_path,
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(json.dumps(config))
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            prometheus_binary(),
            f"--config.file={config_file}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            base = f"http://127.0.0.1:{port}"

            async def ready() -> bool:
                if process.returncode is not None:
                    pytest.fail(f"prometheus exited:\n{log_path.read_text()[-3000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(base + "/-/ready") as response:
                        return response.status == 200
                return False

            await eventually(ready, 30.0, what="prometheus ready", poll_s=0.1)
            yield PrometheusApi(session, base)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
    assert process.returncode == 0, f"prometheus did not stop cleanly:\n{log_path.read_text()}"


async def wait_for_scrapes(api: PrometheusApi, scrapes: int, timeout_s: float) -> None:
    """Until Prometheus holds `scrapes` successful scrapes of coolctl."""
    expr = 'sum_over_time(up{job="coolctl"}[1m])'

    async def scraped() -> bool:
        return (await api.values(expr) or [0.0])[0] >= scrapes

    await eventually(scraped, timeout_s, what=f"{scrapes} good scrapes of coolctl", poll_s=0.1)


async def resolve_variables(api: PrometheusApi, board: dict[str, Any]) -> dict[str, str]:
    """Fill the dashboard's variables as Grafana would: $rack is r01, others their first value."""
    values = dict(BUILTIN_VARIABLES)
    for variable in board["templating"]["list"]:
        name = variable["name"]
        if variable["type"] != "query":
            values[name] = str(variable.get("current", {}).get("value", ""))
            continue
        match = _LABEL_VALUES.match(substitute(variable_query(variable), values))
        assert match is not None, name
        selector, label = match.groups()
        params = {"match[]": selector} if selector else {}
        body = await api.get(f"/api/v1/label/{label}/values", **params)
        options = sorted(body.get("data") or [])
        assert options, f"{board['uid']}: variable ${name} has no values ({body})"
        if name == "rack":
            assert RACK in options, f"{board['uid']}: $rack offers {options}"
            values[name] = RACK
        else:
            values[name] = options[0]
    return values


@pytest.mark.hil
@pytest.mark.asyncio
async def test_every_panel_query_parses_and_returns_data(tmp_path: Path) -> None:
    boards = [load(path) for path in DASHBOARDS]
    async with hil_rack(CONFIG, time_scale=5.0, plant={"initial_valve": 0.5}) as rack:
        await rack.service.plane.set_override(
            "r01", "pump.setpoint", 150.0, 600.0, "test", "dashboard override panels"
        )
        url = urlsplit(rack.metrics_url)
        async with running_prometheus(tmp_path, url.netloc, url.path or "/metrics") as api:
            await wait_for_scrapes(api, scrapes=4, timeout_s=20)
            names = await api.get("/api/v1/label/__name__/values")
            scraped = set(names["data"])
            invalid: list[str] = []
            empty: list[str] = []
            unknown: list[str] = []
            pending: list[str] = []
            for board in boards:
                variables = await resolve_variables(api, board)
                for query in queries(board):
                    expr = substitute(query.expr, variables)
                    absent = metric_names(expr) - scraped
                    excused = absent & (PENDING_METRICS | CONDITIONAL_METRICS)
                    if absent - excused:
                        unknown.append(f"{query}: {sorted(absent - excused)} not in the scrape")
                    body = await api.query(expr, query.instant)
                    if body.get("status") != "success":
                        invalid.append(f"{query}: {body.get('error')}\n    {expr}")
                    elif not body["data"]["result"]:
                        if excused and absent == excused:
                            pending.append(f"{query}: needs {', '.join(map(tagged, excused))}")
                        else:
                            empty.append(f"{query}: no data\n    {expr}")
            rules = (await api.get("/api/v1/rules"))["data"]["groups"]
            alerts = (await api.get("/api/v1/alerts"))["data"]["alerts"]

    assert not invalid, "queries Prometheus rejects:\n" + "\n".join(invalid)
    assert not unknown, "queries naming metrics coolctl does not export:\n" + "\n".join(unknown)
    assert not empty, "queries without data:\n" + "\n".join(empty)

    broken = [
        f"{rule['name']}: {rule.get('lastError')}"
        for group in rules
        for rule in group["rules"]
        if rule.get("health") == "err"
    ]
    assert not broken, "alerting rules that fail on real data:\n" + "\n".join(broken)
    defined = set(re.findall(r"^\s*- alert: *(\S+)\s*$", ALERT_RULES.read_text(), re.MULTILINE))
    assert {rule["name"] for group in rules for rule in group["rules"]} == defined
    critical = [
        alert["labels"]
        for alert in alerts
        if alert["state"] == "firing" and alert["labels"].get("severity") == "critical"
    ]
    assert not critical, f"critical alerts fire for a healthy rack: {critical}"

    landed = sorted(PENDING_METRICS & scraped)
    if pending or landed:
        lines = [f"{len(pending)} panel queries without data, for metrics not in the scrape:"]
        lines += pending
        if landed:
            lines.append(f"now exported, remove from PENDING_METRICS: {', '.join(landed)}")
        warnings.warn(PendingPanelsWarning("\n".join(lines)), stacklevel=1)


def tagged(metric: str) -> str:
    """`metric (pending)` or `metric (conditional)`, for the report."""
    kind = "pending" if metric in PENDING_METRICS else "conditional"
    return f"{metric} ({kind})"
