"""Plots of scenario runs, for a control engineer: one PNG per run, or controllers side by side.

Matplotlib through its object API (`Figure` and the Agg canvas), never `pyplot`: no global state,
no display needed, safe to call from tests and from a daemon's process.

A run's figure, top to bottom, all against the same time axis:

1. coolant temperatures: supply, return, hottest server outlet, facility water; the supply
   setpoint and the scored limits (max supply, max outlet);
2. the hottest chip, with the throttle temperature;
3. flow (L/min) and pump power (kW);
4. IT power, the PDU's power, the sum of the server caps (when the rack has caps) and the
   budget (kW);
5. the actuators: valve position, pump speed and the pump's speed command (0..1).

Scenario events are dashed vertical lines, labelled along the top; warm-up (not scored) is
shaded grey, failsafe red, interlocks orange.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from coolctl.tools.kpi import KPI_KEYS, KPI_UNITS, Trace, format_kpi, format_ratio, ratio
from coolctl.tools.scenario_runner import RunResult

_COLOURS = {
    "supply": "#1f77b4",
    "return": "#ff7f0e",
    "outlet": "#d62728",
    "facility": "#7f7f7f",
    "chip": "#9467bd",
    "flow": "#17becf",
    "speed": "#2ca02c",
    "it": "#1f77b4",
    "caps": "#9467bd",
    "budget": "#d62728",
    "pdu": "#8c564b",
    "valve": "#e377c2",
    "pump_power": "#2ca02c",
}
_MAX_LABELS = 14
_TABLE_KEYS = (*KPI_KEYS, "max_chip_temp_c", "failsafe_s", "interlock_s")


def plot_run(result: RunResult, path: Path) -> None:
    """One PNG of one run (see the module docstring)."""
    trace = result.trace
    figure = Figure(figsize=(14, 14), dpi=100, layout="constrained")
    axes = figure.subplots(5, 1, sharex=True, height_ratios=(3.0, 1.6, 2.0, 2.2, 1.5))
    scale, unit = _time_scale(result.scenario.duration_s)
    _panels(axes, trace, scale, legend=True)
    _events(axes, result, scale)
    axes[-1].set_xlabel(f"time [{unit}]")
    k = result.kpis
    figure.suptitle(
        f"{result.scenario.name} — controller {result.controller}\n"
        f"supply IAE {format_kpi('supply_temp_iae_ks', k['supply_temp_iae_ks'])} K·ks, "
        f"max dev {k['supply_temp_max_dev_k']:.2f} K, "
        f"limit violation {format_kpi('temp_limit_violation_ks', k['temp_limit_violation_ks'])}"
        f" K·ks, pump {k['pump_energy_kwh']:.2f} kWh, "
        f"throttled {k['throttled_energy_kwh']:.2f} kWh, "
        f"over budget {format_kpi('budget_violation_ws', k['budget_violation_ws'])} W·s",
        fontsize=12,
    )
    figure.savefig(path)


def plot_compare(results: Sequence[RunResult], path: Path) -> None:
    """The same scenario under several controllers, side by side, with the KPI table below."""
    if not results:
        raise ValueError("nothing to plot")
    scenario = results[0].scenario
    columns = len(results)
    figure = Figure(figsize=(6.2 * columns + 1.0, 17), dpi=100, layout="constrained")
    grid = figure.add_gridspec(6, columns, height_ratios=(3.0, 1.6, 2.0, 2.2, 1.5, 3.2))
    scale, unit = _time_scale(scenario.duration_s)
    first: list[Axes] = []
    for column, result in enumerate(results):
        axes: list[Axes] = []
        for row in range(5):
            share_x = axes[0] if axes else None
            share_y = first[row] if first else None
            axes.append(figure.add_subplot(grid[row, column], sharex=share_x, sharey=share_y))
        if not first:
            first = axes
        _panels(axes, result.trace, scale, legend=column == 0)
        _events(axes, result, scale, labels=column == 0)
        axes[0].set_title(f"{result.controller}", fontsize=13, fontweight="bold")
        axes[-1].set_xlabel(f"time [{unit}]")
        for ax in axes[:-1]:
            ax.tick_params(labelbottom=False)
    table_ax = figure.add_subplot(grid[5, :])
    _kpi_table(table_ax, results)
    figure.suptitle(f"{scenario.name} — {scenario.description}", fontsize=13)
    figure.savefig(path)


# ------------------------------------------------------------------------------ panels


def _time_scale(duration_s: float) -> tuple[float, str]:
    if duration_s > 3 * 3600:
        return 3600.0, "h"
    if duration_s > 600:
        return 60.0, "min"
    return 1.0, "s"


def _panels(axes: Sequence[Axes], trace: Trace, scale: float, legend: bool) -> None:
    t = trace["t_s"] / scale
    temps, chip, hydraulics, power, actuators = axes
    limits = trace.limits
    kw = 1.0 / 1000.0

    temps.plot(t, trace["supply_c"], color=_COLOURS["supply"], lw=1.1, label="supply")
    temps.plot(t, trace["return_c"], color=_COLOURS["return"], lw=0.9, label="return")
    temps.plot(t, trace["max_outlet_c"], color=_COLOURS["outlet"], lw=0.9, label="max outlet")
    temps.plot(t, trace["facility_c"], color=_COLOURS["facility"], lw=0.9, label="facility water")
    temps.axhline(trace.setpoint_c, color="black", ls="--", lw=0.9, label="supply setpoint")
    temps.axhline(
        limits.max_supply_c, color=_COLOURS["supply"], ls=":", lw=1.3, label="supply limit"
    )
    temps.axhline(
        limits.max_outlet_c, color=_COLOURS["outlet"], ls=":", lw=1.3, label="outlet limit"
    )
    temps.set_ylabel("coolant [°C]")

    chip.plot(t, trace["max_chip_c"], color=_COLOURS["chip"], lw=1.0, label="hottest chip")
    chip.axhline(trace.throttle_c, color="black", ls=":", lw=1.0, label="throttle")
    chip.set_ylabel("chip [°C]")

    hydraulics.plot(t, trace["flow_lpm"], color=_COLOURS["flow"], lw=1.0, label="flow")
    hydraulics.set_ylabel("flow [L/min]")
    hydraulics.set_ylim(bottom=0.0)
    pump_kw = hydraulics.twinx()
    pump_kw.plot(
        t, trace["pump_power_w"] * kw, color=_COLOURS["pump_power"], lw=0.9, label="pump power"
    )
    pump_kw.set_ylabel("pump [kW]")
    pump_kw.set_ylim(bottom=0.0)

    power.plot(t, trace["it_power_w"] * kw, color=_COLOURS["it"], lw=1.0, label="IT power")
    power.plot(t, trace["pdu_power_w"] * kw, color=_COLOURS["pdu"], lw=0.8, label="PDU power")
    if trace.caps:
        power.plot(t, trace["caps_w"] * kw, color=_COLOURS["caps"], lw=1.0, label="caps sum")
    if not np.all(np.isnan(trace["budget_w"])):
        power.plot(
            t, trace["budget_w"] * kw, color=_COLOURS["budget"], lw=1.3, ls="--", label="budget"
        )
    power.set_ylabel("power [kW]")
    power.set_ylim(bottom=0.0)

    actuators.plot(t, trace["valve"], color=_COLOURS["valve"], lw=1.0, label="valve")
    actuators.plot(t, trace["pump_speed"], color=_COLOURS["speed"], lw=1.0, label="pump speed")
    actuators.plot(t, trace["pump_command"], color="black", lw=0.7, ls="--", label="pump command")
    actuators.set_ylim(0.0, 1.05)
    actuators.set_ylabel("actuators [0..1]")

    for ax in axes:
        ax.grid(True, alpha=0.3)
        _shade(ax, t, trace, scale)
    if legend:
        for ax in (temps, chip, power, actuators):
            ax.legend(loc="upper left", bbox_to_anchor=(1.07, 1.0), fontsize=8)
        lines, labels = hydraulics.get_legend_handles_labels()
        more, more_labels = pump_kw.get_legend_handles_labels()
        hydraulics.legend(
            lines + more,
            labels + more_labels,
            loc="upper left",
            bbox_to_anchor=(1.07, 1.0),
            fontsize=8,
        )


def _spans(t: np.ndarray, flags: np.ndarray) -> list[tuple[float, float]]:
    """(start, end) of each run of true samples."""
    on = np.nan_to_num(flags) > 0.5
    if not on.any():
        return []
    edges = [int(i) for i in np.flatnonzero(np.diff(on.astype(np.int8)))]
    starts = [0] if on[0] else []
    starts += [i + 1 for i in edges if on[i + 1]]
    ends = [i for i in edges if on[i]] + ([len(on) - 1] if on[-1] else [])
    return [(float(t[a]), float(t[b])) for a, b in zip(starts, ends, strict=True)]


def _shade(ax: Axes, t: np.ndarray, trace: Trace, scale: float) -> None:
    if trace.warmup_s > 0:
        ax.axvspan(float(t[0]), trace.warmup_s / scale, color="grey", alpha=0.12, lw=0)
    for start, end in _spans(t, trace["failsafe"]):
        ax.axvspan(start, end, color="red", alpha=0.15, lw=0)
    for start, end in _spans(t, trace["interlock"]):
        ax.axvspan(start, end, color="orange", alpha=0.2, lw=0)


def _events(axes: Sequence[Axes], result: RunResult, scale: float, labels: bool = True) -> None:
    """Dashed lines at every event; labels for the most telling ones, along the top."""
    applied = result.events
    labelled = applied
    if len(applied) > _MAX_LABELS:  # a day of hourly ramps: label the steps and faults
        labelled = [(at, e) for at, e in applied if not e.ramp_s][:_MAX_LABELS]
    for at, _event in applied:
        for ax in axes:
            ax.axvline(at / scale, color="black", ls="--", lw=0.6, alpha=0.45)
    if not labels:
        return
    top = axes[0]
    for at, event in labelled:
        top.annotate(
            event.label,
            xy=(at / scale, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -4),
            textcoords="offset points",
            rotation=90,
            va="top",
            ha="left",
            fontsize=8,
            color="black",
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75},
        )


def _kpi_table(ax: Axes, results: Sequence[RunResult]) -> None:
    ax.axis("off")
    by_name = {r.controller: r.kpis for r in results}
    header = ["KPI", *by_name]
    pairs = [(a, b) for a, b in (("pid", "fixed"), ("mpc", "pid")) if a in by_name and b in by_name]
    header += [f"{a}/{b}" for a, b in pairs]
    rows = []
    for key in _TABLE_KEYS:
        unit = KPI_UNITS.get(key, "")
        row = [f"{key} [{unit}]" if unit else key]
        row += [format_kpi(key, kpis.get(key, math.nan)) for kpis in by_name.values()]
        row += [
            format_ratio(ratio(by_name[a].get(key, math.nan), by_name[b].get(key, math.nan)))
            for a, b in pairs
        ]
        rows.append(row)
    table = ax.table(cellText=rows, colLabels=header, loc="center", cellLoc="right")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1.0, 1.25)
    for (line, column), cell in table.get_celld().items():
        if column == 0:
            cell.set_text_props(ha="left")
        if line == 0:
            cell.set_text_props(fontweight="bold")
