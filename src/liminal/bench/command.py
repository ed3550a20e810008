"""The ``liminal bench`` command: options, progress display and clean-up."""

from __future__ import annotations

import dataclasses
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console

    from .runner import Bench, Plan

__all__ = ["bench"]

# src/liminal/bench/command.py -> the checkout's top-level benchmarks/ folder.
DEFAULT_REFS = Path(__file__).resolve().parents[3] / "benchmarks"
SERVER_NAMES = ("liminal", "aiohttp-ref", "picows-ref", "node-ws-ref")
INSTALL_HINT = "install the bench extra: pip install -e '.[bench]'"


def _server_list(
    ctx: click.Context, param: click.Parameter, value: str
) -> tuple[str, ...]:
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in SERVER_NAMES]
    if unknown or not names:
        raise click.BadParameter(
            f"choose from {', '.join(SERVER_NAMES)} "
            f"(got {', '.join(unknown) or 'none'})"
        )
    return names


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so the clean-up below runs either way.
    raise KeyboardInterrupt


@click.command()
@click.option(
    "--quick",
    is_flag=True,
    help="smoke run under a minute: 1 round, "
    "200 subscribers, short windows, memory at 1,000 only",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help='write {"results": [...]} (medians, null if not measured)',
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write a PNG chart comparing the servers",
)
@click.option(
    "--broker",
    type=click.Choice(["memory", "redis"]),
    default="memory",
    show_default=True,
    help="redis: also measure two liminal instances sharing the channel "
    "through a real redis-server",
)
@click.option(
    "--servers",
    default=",".join(SERVER_NAMES),
    show_default=True,
    callback=_server_list,
    help="comma-separated servers to measure",
)
@click.option(
    "--repeat",
    type=click.IntRange(1, 10),
    default=None,
    help="rounds; the median is reported [default: 3, --quick: 1]",
)
@click.option(
    "--refs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_REFS,
    show_default=True,
    help="folder of the reference servers",
)
def bench(
    quick: bool,
    json_path: Path | None,
    plot_path: Path | None,
    broker: str,
    servers: tuple[str, ...],
    repeat: int | None,
    refs_dir: Path,
) -> None:
    """Measure liminal against minimal reference servers, side by side.

    Starts every server itself on 127.0.0.1 (liminal with auth on and its
    limits raised for the load), pins servers and the load client to
    different cores, and reports medians of fan-out throughput to 1,000
    subscribers, latency at 50 messages/s, and memory per idle connection.
    """
    try:
        from rich.console import Console
    except ImportError:
        raise click.ClickException(f"rich is missing; {INSTALL_HINT}") from None
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.ClickException(
                f"matplotlib is missing; {INSTALL_HINT}"
            ) from None

    from .load import raise_open_files_limit
    from .runner import Plan

    plan = (
        Plan.quick(servers, broker) if quick else Plan(servers=servers, broker=broker)
    )
    if repeat is not None:
        plan = dataclasses.replace(plan, repeat=repeat)
    # Off a terminal rich assumes 80 columns, too narrow for the table.
    console = Console(width=None if sys.stdout.isatty() else 150)
    open_files = raise_open_files_limit()
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with tempfile.TemporaryDirectory(prefix="liminal-bench-") as workdir:
            results = _run(console, plan, Path(workdir), refs_dir, open_files)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: every process the bench started is stopped")
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)

    from .report import results_table, write_json, write_plot

    title = _title(plan)
    console.print(results_table(results, title))
    for row in results:
        _print_extras(console, row)
    if json_path is not None:
        write_json(json_path, results)
        console.print(f"results written to {json_path}")
    if plot_path is not None:
        write_plot(plot_path, results, title)
        console.print(f"chart written to {plot_path}")


def _run(
    console: Console, plan: Plan, workdir: Path, refs_dir: Path, open_files: int
) -> list[dict[str, Any]]:
    """Run the plan under a progress bar; stop every child on any exit."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .processes import Fleet
    from .runner import Bench

    fleet = Fleet(workdir)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    )
    try:
        with progress:
            task = progress.add_task("preparing", total=None)

            def step(description: str) -> None:
                # Each new step closes the previous one.
                if progress.tasks[0].description != "preparing":
                    progress.advance(task)
                progress.update(task, description=description)

            runner = Bench(
                plan, fleet, refs_dir, open_files, step, progress.console.print
            )
            available = runner.available()
            progress.update(task, total=runner.steps(available))
            console.print(_pinning(runner))
            summaries = runner.run(available)
            progress.update(task, completed=runner.steps(available), description="done")
    finally:
        fleet.stop_all()
    return [summary.result() for summary in summaries]


def _pinning(runner: Bench) -> str:
    if runner.client_core is None:
        return "[yellow]one core only: servers and load client are not pinned"
    return (
        f"servers pinned to core {runner.server_cores[0]}, "
        f"load client to core {runner.client_core}"
    )


def _title(plan: Plan) -> str:
    return (
        f"liminal bench: median of {plan.repeat} round(s), {plan.subscribers:,} "
        f"subscribers, {plan.content_bytes}-byte content, one core per server"
    )


def _print_extras(console: Console, row: dict[str, Any]) -> None:
    two = row.get("redis_two_instance_deliveries_per_s")
    one = row.get("deliveries_per_s")
    if two is not None:
        scaling = f" ({two / one:.2f}× one instance)" if one else ""
        console.print(
            f"{row['server']}, two instances through Redis: "
            f"{two:,.0f} deliveries/s{scaling}"
        )
    for note in row.get("notes", []):
        console.print(f"[yellow]{row['server']}: {note}")
