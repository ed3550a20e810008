"""``liminal bench``: the load client's frame reader, and a --quick smoke run.

No timing is asserted: the numbers depend on the machine. The smoke run only
proves that the command completes and that what it reports is plausible.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from liminal.bench.load import Scenario, _Connection, _Run, percentile

SERVERS = {"liminal", "aiohttp-ref", "picows-ref", "node-ws-ref"}


def _server_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, size)) + payload
    if size < 65536:
        return bytes((0x80 | opcode, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + size.to_bytes(8, "big") + payload


def _message(seq: int, size: int) -> bytes:
    content = f"{seq:08d}".ljust(size, "x")
    event = {
        "type": "message",
        "channel": "c",
        "content": content,
        "sender": "bench",
        "timestamp": "2026-01-01T00:00:00.000Z",
    }
    return _server_frame(json.dumps(event).encode())


def _subscribed(run: _Run, *, checker: bool = False) -> _Connection:
    conn = _Connection(run, checker=checker)
    conn.data_received(
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
        + _server_frame(b'{"type":"subscribe_success","channel":"c"}')
    )
    assert conn.ready.done()
    conn.counting = True
    return conn


@pytest.mark.parametrize("chunk", [1, 3, 7, 200, 100_000])
async def test_frames_split_across_reads_are_counted_once(chunk: int) -> None:
    run = _Run(Scenario(kind="fanout", ports=[1], pids=[]))
    conn = _subscribed(run)
    # Length fields of one, two and eight bytes, and a ping among the messages.
    data = b"".join(
        [
            _server_frame(b"{}"),
            _message(1, 100),
            _server_frame(b"", 0x9),
            _message(2, 70_000),
        ]
    )
    for start in range(0, len(data), chunk):
        conn.data_received(data[start : start + chunk])
    assert conn.received == 3
    assert run.delivered == 3


async def test_checker_flags_a_missing_message() -> None:
    run = _Run(Scenario(kind="fanout", ports=[1], pids=[], content_bytes=100))
    conn = _subscribed(run, checker=True)
    conn.data_received(_message(0, 100) + _message(2, 100))
    assert run.delivered == 2
    assert len(run.errors) == 1
    assert run.errors[0].startswith("expected message 00000001")


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0


def test_quick_bench_completes_with_sane_numbers(tmp_path: Path) -> None:
    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "liminal",
            "bench",
            "--quick",
            "--json",
            str(out),
            "--plot",
            str(chart),
        ],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("LIMINAL_")},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    results = {row["server"]: row for row in json.loads(out.read_text())["results"]}
    assert {"liminal", "aiohttp-ref"} <= set(results) <= SERVERS
    for name, row in results.items():
        if name == "node-ws-ref" and row["deliveries_per_s"] is None:
            continue  # no node on this machine: noted, not measured
        assert row["deliveries_per_s"] > 1000, row
        assert 0 < row["p50_ms"] <= row["p99_ms"] < 5000, row
        assert 0 < row["kb_per_conn_1k"] < 1000, row
        assert row["kb_per_conn_10k"] is None, row
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
