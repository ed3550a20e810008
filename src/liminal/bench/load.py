"""The load client of ``liminal bench``: many raw WebSocket connections, one process.

It runs as its own process (``python -m liminal.bench.load``), pinned to a core
other than the server's, reads one scenario as JSON on standard input and
prints one JSON result line. Connections are plain ``asyncio.Protocol``
objects that split the byte stream into frames by their headers and count
text frames without decoding them; only a few checker connections decode
every event, to prove the counted frames are the messages that were sent.

Every loop is bounded: connection counts are capped by the caller, each
scenario has a deadline, and the publisher stops at a message budget.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

__all__ = [
    "LoadError",
    "client_frame",
    "cpu_seconds",
    "percentile",
    "rss_kb",
    "run_scenario",
]

HANDSHAKE = (
    "GET {path} HTTP/1.1\r\n"
    "Host: {host}:{port}\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    # Any 16 bytes in base64 will do: the client does not check the answer.
    "Sec-WebSocket-Key: bGltaW5hbC1iZW5jaC0xNg==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "\r\n"
)
OP_TEXT = 0x1
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
# Connections opened at once while setting up; more only queue in the backlog.
CONNECT_CONCURRENCY = 200
# Connections that decode and check every event they receive.
CHECKERS = 4
# How long the client waits for the last in-flight messages after publishing.
DRAIN_SECONDS = 5.0
# Upper bound of messages one fan-out run publishes, whatever its duration.
MAX_MESSAGES = 1_000_000
_CLOCK_TICK = os.sysconf("SC_CLK_TCK")


class LoadError(RuntimeError):
    """The scenario could not run as planned (refused, lost or wrong frames)."""


def client_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """A final client frame, masked with the all-zero key.

    RFC 6455 asks clients to mask, not to pick an unpredictable key for a
    benchmark; a zero key leaves the payload unchanged, so no XOR is needed.
    """
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return header + b"\x00\x00\x00\x00" + payload


def event_frame(event: dict[str, Any]) -> bytes:
    return client_frame(json.dumps(event, separators=(",", ":")).encode())


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of process ``pid``, or of this process."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    with open(f"/proc/{pid}/stat", "rb") as file:
        # The command name in parentheses may hold spaces: split after it.
        fields = file.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICK


def rss_kb(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB."""
    with open(f"/proc/{pid}/status", "rb") as file:
        for line in file:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    raise LoadError(f"no VmRSS for process {pid}")


def percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of an already sorted list."""
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


@dataclass
class Scenario:
    """What one run of the load client does; built from the JSON on stdin."""

    kind: str  # "fanout", "latency" or "memory"
    ports: list[int]
    pids: list[int]
    token: str | None = None
    host: str = "127.0.0.1"
    channel: str = "bench"
    subscribers: int = 1000
    content_bytes: int = 100
    window: int = 64
    warmup_seconds: float = 1.0
    measure_seconds: float = 3.0
    rate: float = 50.0
    counts: list[int] = field(default_factory=lambda: [1000, 10000])
    sources: int = 1
    deadline_seconds: float = 120.0


class _Run:
    """Counters shared by every connection of one scenario."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.delivered = 0
        self.errors: list[str] = []
        self.lost = 0
        # Latency mode: send time of message k, and the collected samples.
        self.sent_at: list[float] | None = None
        self.latencies: list[float] = []
        self.record_from = 0
        # Called after every batch of deliveries (the fan-out publisher).
        self.on_delivered: Callable[[], None] | None = None

    def error(self, text: str) -> None:
        if len(self.errors) < 10:
            self.errors.append(text)


class _Connection(asyncio.Protocol):
    """One client WebSocket: handshake, then frames split by their headers."""

    def __init__(self, run: _Run, *, checker: bool = False) -> None:
        self.run = run
        self.checker = checker
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.counting = False
        self.received = 0
        self.rest = b""
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # asyncio callbacks.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(LoadError(f"connection lost during set-up: {exc}"))
        elif self.counting:
            self.run.lost += 1
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.rest:
            data = self.rest + data
            self.rest = b""
        if not self.upgraded:
            data = self._upgrade(data)
        size = len(data)
        pos = 0
        texts = 0
        fast = self.counting and not self.checker
        while pos + 2 <= size:
            length = data[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if pos + 4 > size:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            elif length == 127:
                if pos + 10 > size:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > size:
                break
            opcode = data[pos] & 0x0F
            if opcode == OP_TEXT and fast:
                texts += 1
            elif opcode == OP_TEXT:
                self._event(data[start:end])
            else:
                self._control(opcode, data[start:end])
            pos = end
        if pos < size:
            self.rest = data[pos:]
        if texts:
            self._count(texts)

    # Frame handling off the fast path.

    def _upgrade(self, data: bytes) -> bytes:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            self.rest = data
            return b""
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            self._fail(f"upgrade refused: {status.decode(errors='replace')}")
            return b""
        self.upgraded = True
        return rest

    def _event(self, payload: bytes) -> None:
        """Decode a text frame: while setting up, or on a checker connection."""
        try:
            event = json.loads(payload)
        except ValueError:
            self._fail(f"not JSON: {payload[:80]!r}")
            return
        kind = event.get("type")
        if self.counting:
            self._check(event)
            self._count(1)
        elif kind == "subscribe_success" and not self.ready.done():
            self.ready.set_result(None)
        elif kind == "error":
            self._fail(f"error event: {event}")

    def _check(self, event: dict[str, Any]) -> None:
        expected = f"{self.received:08d}"
        content = event.get("content")
        if (
            event.get("type") != "message"
            or not isinstance(content, str)
            or not content.startswith(expected)
            or len(content) != self.run.scenario.content_bytes
            or not event.get("sender")
            or not event.get("timestamp")
        ):
            self.run.error(f"expected message {expected}, got {str(event)[:120]}")

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING and self.transport is not None:
            self.transport.write(client_frame(payload, OP_PONG))
        elif opcode == OP_CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            self._fail(f"server closed the connection with {code}")

    def _count(self, texts: int) -> None:
        run = self.run
        sent_at = run.sent_at
        if sent_at is not None:
            now = time.perf_counter()
            first = max(self.received, run.record_from)
            last = self.received + texts
            run.latencies.extend(now - sent_at[k] for k in range(first, last))
        self.received += texts
        run.delivered += texts
        if run.on_delivered is not None:
            run.on_delivered()

    def _fail(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(LoadError(reason))
        else:
            self.run.error(reason)
        if self.transport is not None:
            self.transport.abort()

    # Used by the scenarios.

    def send(self, frame: bytes) -> None:
        if self.transport is not None:
            self.transport.write(frame)

    def close(self) -> None:
        self.counting = False  # our own close is not a lost connection
        if self.transport is not None:
            self.transport.abort()


async def _open(
    run: _Run, port: int, source: str, *, channel: str, checker: bool = False
) -> _Connection:
    """Connect from ``source``, upgrade, subscribe to ``channel`` and wait for it."""
    scenario = run.scenario
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        if source != "127.0.0.1":
            sock.bind((source, 0))
        await loop.sock_connect(sock, (scenario.host, port))
    except OSError:
        sock.close()
        raise
    _, conn = await loop.create_connection(
        lambda: _Connection(run, checker=checker), sock=sock
    )
    path = "/ws" + (f"?token={scenario.token}" if scenario.token else "")
    request = HANDSHAKE.format(path=path, host=scenario.host, port=port)
    conn.send(request.encode())
    conn.send(event_frame({"type": "subscribe", "channel": channel}))
    await conn.ready
    return conn


async def _open_many(run: _Run, count: int, first: int = 0) -> list[_Connection]:
    """Open subscribers ``first`` .. ``first + count - 1`` of the scenario.

    Subscriber ``i`` goes to port ``i % len(ports)`` and source address
    ``127.0.0.(1 + i % sources)``, so instances and addresses share the load.
    """
    scenario = run.scenario
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(index: int) -> _Connection:
        async with gate:
            return await _open(
                run,
                scenario.ports[index % len(scenario.ports)],
                f"127.0.0.{1 + index % scenario.sources}",
                channel=scenario.channel,
                checker=index < CHECKERS,
            )

    return list(await asyncio.gather(*(one(i) for i in range(first, first + count))))


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine spent busy since boot."""
    with open("/proc/stat", "rb") as file:
        ticks = [int(value) for value in file.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return (sum(ticks[:8]) - idle) / _CLOCK_TICK


class _Usage:
    """CPU use over one measured window: servers, this client, everything else.

    "Other" is the rest of the machine (other programs, interrupts): when it is
    high, the machine was noisy and the window's numbers say less.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.started = time.perf_counter()
        self.server_start = [cpu_seconds(pid) for pid in pids]
        self.client_start = cpu_seconds()
        self.machine_start = machine_busy_seconds()

    def percent(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.started
        servers = [
            100 * (cpu_seconds(pid) - start) / wall
            for pid, start in zip(self.pids, self.server_start, strict=True)
        ]
        client = 100 * (cpu_seconds() - self.client_start) / wall
        machine = 100 * (machine_busy_seconds() - self.machine_start) / wall
        return {
            "server_cpu_pct": [round(value, 1) for value in servers],
            "client_cpu_pct": round(client, 1),
            "other_cpu_pct": round(max(0.0, machine - sum(servers) - client), 1),
        }


def _content(seq: int, size: int) -> str:
    """Message ``seq``'s content: its number, then padding to ``size`` characters."""
    return f"{seq:08d}".ljust(size, "x")


def _publish_frame(scenario: Scenario, seq: int) -> bytes:
    content = _content(seq, scenario.content_bytes)
    return event_frame(
        {"type": "message", "channel": scenario.channel, "content": content}
    )


async def _drain(run: _Run, expected: int) -> None:
    deadline = time.perf_counter() + DRAIN_SECONDS
    while run.delivered < expected and time.perf_counter() < deadline:
        await asyncio.sleep(0.02)


def _close_all(conns: list[_Connection]) -> None:
    for conn in conns:
        conn.close()


def _problems(run: _Run) -> None:
    if run.lost:
        run.error(f"{run.lost} connections dropped by the server while measuring")
    if run.errors:
        raise LoadError("; ".join(run.errors))


async def _fanout(run: _Run) -> dict[str, Any]:
    """Deliveries per second with at most ``window`` messages in flight."""
    scenario = run.scenario
    subs = await _open_many(run, scenario.subscribers)
    publisher = await _open(
        run, scenario.ports[0], "127.0.0.1", channel="bench-publisher"
    )
    n = len(subs)
    in_flight = scenario.window * n
    sent = 0
    publishing = True

    def pump() -> None:
        # Called after each batch of deliveries: keep the window full.
        nonlocal sent
        limit = run.delivered + in_flight
        while publishing and sent * n < limit and sent < MAX_MESSAGES:
            publisher.send(_publish_frame(scenario, sent))
            sent += 1

    for conn in subs:
        conn.counting = True
    run.on_delivered = pump
    pump()
    await asyncio.sleep(scenario.warmup_seconds)

    usage = _Usage(scenario.pids)
    first, first_per_port = run.delivered, _per_port(subs, scenario)
    await asyncio.sleep(scenario.measure_seconds)
    elapsed = time.perf_counter() - usage.started
    result = {
        "deliveries_per_s": (run.delivered - first) / elapsed,
        "deliveries_per_port": [
            b - a
            for a, b in zip(first_per_port, _per_port(subs, scenario), strict=True)
        ],
        **usage.percent(),
    }

    publishing = False
    await _drain(run, sent * n)
    result.update(messages_sent=sent, undelivered=sent * n - run.delivered)
    _close_all([*subs, publisher])
    _problems(run)
    return result


def _per_port(subs: list[_Connection], scenario: Scenario) -> list[int]:
    totals = [0] * len(scenario.ports)
    for index, conn in enumerate(subs):
        totals[index % len(scenario.ports)] += conn.received
    return totals


async def _latency(run: _Run) -> dict[str, Any]:
    """Publish-to-receipt latency at a fixed publish rate."""
    scenario = run.scenario
    subs = await _open_many(run, scenario.subscribers)
    publisher = await _open(
        run, scenario.ports[0], "127.0.0.1", channel="bench-publisher"
    )
    loop = asyncio.get_running_loop()
    interval = 1.0 / scenario.rate
    warmup = round(scenario.warmup_seconds * scenario.rate)
    total = warmup + round(scenario.measure_seconds * scenario.rate)
    run.sent_at = sent_at = []
    run.record_from = warmup
    for conn in subs:
        conn.counting = True

    start = loop.time()
    usage: _Usage | None = None
    for seq in range(total):
        # Absolute times, so a late wake-up does not shift later messages.
        delay = start + seq * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if seq == warmup:
            usage = _Usage(scenario.pids)
        frame = _publish_frame(scenario, seq)
        sent_at.append(time.perf_counter())
        publisher.send(frame)
    await _drain(run, total * len(subs))
    assert usage is not None
    result: dict[str, Any] = usage.percent()
    _close_all([*subs, publisher])
    _problems(run)
    samples = sorted(run.latencies)
    expected = (total - warmup) * len(subs)
    if len(samples) < expected:
        raise LoadError(
            f"{expected - len(samples)} of {expected} messages never arrived"
        )
    result.update(
        p50_ms=1000 * percentile(samples, 0.50),
        p99_ms=1000 * percentile(samples, 0.99),
        max_ms=1000 * samples[-1],
        samples=len(samples),
    )
    return result


async def _memory(run: _Run) -> dict[str, Any]:
    """Server RSS growth per idle subscribed connection at each count."""
    scenario = run.scenario
    pid = scenario.pids[0]
    # A few connections first, so one-time costs (lazy imports, first
    # allocations) are in the baseline rather than in the per-connection cost.
    warm = await _open_many(run, 10)
    await asyncio.sleep(1.0)
    base = rss_kb(pid)
    conns: list[_Connection] = []
    per_conn: dict[str, float] = {}
    for count in scenario.counts:
        conns += await _open_many(run, count - len(conns), first=10 + len(conns))
        await asyncio.sleep(1.0)
        per_conn[str(count)] = (rss_kb(pid) - base) / count
    _close_all([*warm, *conns])
    _problems(run)
    return {"kb_per_conn": per_conn, "rss_base_kb": base}


async def run_scenario(scenario: Scenario) -> dict[str, Any]:
    """Run one scenario within its deadline and return its measurements.

    Raises:
        LoadError: a connection was refused or closed, or frames went missing.
        TimeoutError: the scenario did not finish before its deadline.
    """
    run = _Run(scenario)
    action = {"fanout": _fanout, "latency": _latency, "memory": _memory}[scenario.kind]
    async with asyncio.timeout(scenario.deadline_seconds):
        return await action(run)


def raise_open_files_limit() -> int:
    """Lift this process's open-files soft limit to its hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def main() -> None:
    """Read a scenario from stdin, run it, print its result as one JSON line."""
    scenario = Scenario(**json.loads(sys.stdin.read()))
    raise_open_files_limit()
    try:
        import uvloop
    except ImportError:
        runner: Callable[..., Any] = asyncio.run
    else:
        runner = uvloop.run
    try:
        result = runner(run_scenario(scenario))
    except (LoadError, TimeoutError, OSError) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        sys.exit(1)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
