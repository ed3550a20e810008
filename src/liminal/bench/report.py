"""How ``liminal bench`` shows its results: a table, a JSON file and a chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["ratio", "results_table", "write_json", "write_plot"]

BASELINE = "aiohttp-ref"


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return value / base


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def results_table(results: list[dict[str, Any]], title: str) -> Table:
    """The rich table of medians, with ratios to the aiohttp reference."""
    from rich.table import Table

    base = next((r for r in results if r["server"] == BASELINE), {})
    table = Table(title=title)
    table.add_column("server")
    for header in (
        "deliveries/s",
        "× aiohttp",
        "p50 ms",
        "p99 ms",
        "p99 × aiohttp",
        "KB/conn 1k",
        "KB/conn 10k",
        "server CPU %",
        "server µs/delivery",
        "client CPU %",
    ):
        table.add_column(header, justify="right")
    for row in results:
        table.add_row(
            row["server"],
            _cell(row["deliveries_per_s"], ",.0f"),
            _cell(ratio(row["deliveries_per_s"], base.get("deliveries_per_s")), ".2f"),
            _cell(row["p50_ms"], ".1f"),
            _cell(row["p99_ms"], ".1f"),
            _cell(ratio(row["p99_ms"], base.get("p99_ms")), ".2f"),
            _cell(row["kb_per_conn_1k"], ".1f"),
            _cell(row["kb_per_conn_10k"], ".1f"),
            _cell(row["server_cpu_pct"], ".0f"),
            _cell(row.get("server_cpu_us_per_delivery"), ".2f"),
            _cell(row["client_cpu_pct"], ".0f"),
        )
    return table


def write_json(path: Path, results: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"results": results}, indent=2) + "\n")


def write_plot(path: Path, results: list[dict[str, Any]], title: str) -> None:
    """A PNG with three panels: throughput, latency and memory per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["server"] for r in results]
    positions = list(range(len(names)))
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.8))
    figure.suptitle(title)

    _bars(left, positions, [r["deliveries_per_s"] for r in results], 0.6, 0.0, "")
    left.set_title("fan-out throughput (higher is better)")
    left.set_ylabel("deliveries per second")
    left.yaxis.set_major_formatter(lambda value, _: f"{value / 1000:,.0f}k")

    _bars(middle, positions, [r["p50_ms"] for r in results], 0.38, -0.2, "p50")
    _bars(middle, positions, [r["p99_ms"] for r in results], 0.38, 0.2, "p99")
    middle.set_title("publish-to-receipt latency at 50 msg/s (lower is better)")
    middle.set_ylabel("milliseconds")
    middle.legend()

    _bars(right, positions, [r["kb_per_conn_1k"] for r in results], 0.38, -0.2, "1,000")
    _bars(
        right, positions, [r["kb_per_conn_10k"] for r in results], 0.38, 0.2, "10,000"
    )
    right.set_title("memory per idle connection (lower is better)")
    right.set_ylabel("KB of server RSS")
    right.legend(title="connections")

    for axes in (left, middle, right):
        axes.set_xticks(positions, names, rotation=15)
        axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _bars(
    axes: Any,
    positions: list[int],
    values: list[float | None],
    width: float,
    shift: float,
    label: str,
) -> None:
    """Bars of ``values`` (missing ones left out) with their value on top."""
    xs = [x + shift for x, v in zip(positions, values, strict=True) if v is not None]
    ys = [v for v in values if v is not None]
    bars = axes.bar(xs, ys, width, label=label or None)
    axes.bar_label(bars, fmt="{:,.0f}" if max(ys, default=0) >= 1000 else "{:.1f}")
