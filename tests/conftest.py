"""Shared fixtures: real liminal server processes and real clients."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from liminal.accounts import Accounts
from servers import RedisServer

SECRET = "test-secret-0123456789-abcdefghijklmnop"
PASSWORDS = {
    "alice": "alice-pw-1",
    "bob": "bob-pw-2",
    "carol": "carol-pw-3",
    "dave": "dave-pw-4",
    "root": "root-pw-0",
}
ADMINS = {"root"}
_LISTENING = re.compile(r"listening on http://([\d.]+|\[[0-9a-f:]+\]):(\d+)")


def create_users(data_dir: Path, names: dict[str, str] = PASSWORDS) -> None:
    accounts = Accounts(data_dir / "liminal.db")
    for name, password in names.items():
        if accounts.get(name) is None:
            accounts.add(name, password, admin=name in ADMINS)
    accounts.close()


class LiminalProcess:
    """A ``liminal serve`` subprocess on an ephemeral loopback port."""

    def __init__(self, data_dir: Path, log_path: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._tokens: dict[str, str] = {}

    def start(self, timeout: float = 15.0) -> LiminalProcess:
        env = {**os.environ, **self.env}
        env.setdefault("LIMINAL_DATA_DIR", str(self.data_dir))
        env.setdefault("LIMINAL_PORT", "0")
        self._log = open(self.log_path, "ab")
        offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "liminal", "serve"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            match = _LISTENING.search(text)
            if match:
                self.port = int(match.group(2))
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"liminal exited {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"liminal did not start:\n{self.log_text()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        code = self.proc.returncode
        self.proc = None
        return code

    def restart(self) -> LiminalProcess:
        self.stop()
        return self.start()

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def cli(self, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        """Run ``liminal ARGS`` on this server's data dir; fail if it fails."""
        env = {**os.environ, "LIMINAL_DATA_DIR": str(self.data_dir)}
        return subprocess.run(
            [sys.executable, "-m", "liminal", *args],
            input=stdin, env=env, check=True, capture_output=True, timeout=60,
        )

    def log_text(self) -> str:
        return self.log_path.read_bytes().decode(errors="replace")

    # Real HTTP client calls.

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        """One HTTP request; returns status, decoded JSON (or text) and headers."""
        data = (
            raw
            if raw is not None
            else (json.dumps(body).encode() if body is not None else None)
        )
        all_headers = {"Content-Type": "application/json"} if body is not None else {}
        all_headers.update(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(
            self.http + path, data=data, method=method, headers=all_headers
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, payload, resp_headers = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as err:
            status, payload, resp_headers = err.code, err.read(), err.headers
        text = payload.decode(errors="replace")
        try:
            decoded: Any = json.loads(text) if text else None
        except ValueError:
            decoded = text
        return status, decoded, dict(resp_headers)

    def token(self, user: str, password: str | None = None) -> str:
        """A token for ``user`` (cached: argon2 makes each login slow)."""
        cached = self._tokens.get(user)
        if cached is not None and password is None:
            return cached
        status, body, _ = self.request(
            "POST",
            "/token",
            {"username": user, "password": password or PASSWORDS[user]},
        )
        assert status == 200, body
        self._tokens[user] = token = str(body["access_token"])
        return token

    def stats(self) -> dict[str, Any]:
        status, body, _ = self.request(
            "GET", "/debug/connections/stats", token=self.token("root")
        )
        assert status == 200, body
        return dict(body)

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.http + "/metrics", timeout=10) as resp:
            return str(resp.read().decode())


def _start(
    tmp_path: Path, name: str, env: dict[str, str], data_dir: Path | None = None
) -> LiminalProcess:
    data_dir = data_dir or tmp_path / f"{name}-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    create_users(data_dir)
    full_env = {"LIMINAL_JWT_SECRET": SECRET, "LIMINAL_LOG_LEVEL": "INFO", **env}
    return LiminalProcess(data_dir, tmp_path / f"{name}.log", full_env).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiminalProcess]:
    """One server shared by a test module (default settings, users created)."""
    proc = _start(tmp_path_factory.mktemp("server"), "liminal", {})
    yield proc
    proc.stop()


def _server_factory(
    directory: Callable[[str], Path],
) -> Iterator[Callable[..., LiminalProcess]]:
    """Yield a function that starts servers; stop them all when resumed."""
    started: list[LiminalProcess] = []

    def start(
        name: str = "liminal", data_dir: Path | None = None, **env: str
    ) -> LiminalProcess:
        proc = _start(directory(name), name, env, data_dir)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    """Factory for servers with their own settings, stopped after the test."""
    yield from _server_factory(lambda name: tmp_path)


@pytest.fixture(scope="module")
def start_module_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., LiminalProcess]]:
    """Like ``start_server``, but the servers live until the module's tests end."""
    yield from _server_factory(tmp_path_factory.mktemp)


@pytest.fixture(scope="session")
def falkordb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One FalkorDB with its Bolt endpoint, shared by the whole session."""
    bolt = RedisServer(tmp_path_factory.mktemp("falkordb"), bolt=True).start()
    yield bolt
    bolt.stop()


class Client:
    """A real WebSocket client with helpers for liminal's events."""

    def __init__(self, ws: websockets.ClientConnection, established: dict[str, Any]):
        self.ws = ws
        self.connection_id = established["connection_id"]

    async def send(self, event: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(
            event if isinstance(event, str | bytes) else json.dumps(event)
        )

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        return dict(json.loads(await asyncio.wait_for(self.ws.recv(), timeout)))

    async def request(self, event: dict[str, Any] | str | bytes) -> dict[str, Any]:
        await self.send(event)
        return await self.recv()

    async def subscribe(self, channel: str) -> None:
        reply = await self.request({"type": "subscribe", "channel": channel})
        assert reply == {"type": "subscribe_success", "channel": channel}, reply

    async def publish(self, channel: str, content: Any) -> None:
        await self.send({"type": "message", "channel": channel, "content": content})

    async def nothing(self, timeout: float = 0.3) -> bool:
        """True if nothing arrives within ``timeout``."""
        try:
            await asyncio.wait_for(self.ws.recv(), timeout)
        except TimeoutError:
            return True
        return False

    async def close_code(self, timeout: float = 5.0) -> int | None:
        """Read until the server closes; return the close code it sent."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.ws.recv()
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None

    async def close(self) -> None:
        await self.ws.close()


async def connect(server: LiminalProcess, token: str, **kwargs: Any) -> Client:
    """Open a WebSocket with ``token`` and read ``connection_established``."""
    ws = await websockets.connect(
        f"{server.ws_url}?token={token}", max_size=None, max_queue=None, **kwargs
    )
    established = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert established["type"] == "connection_established", established
    return Client(ws, established)


async def refused_code(server: LiminalProcess, token: str, **kwargs: Any) -> int | None:
    """Connect and expect a close before ``connection_established``."""
    async with websockets.connect(f"{server.ws_url}?token={token}", **kwargs) as ws:
        try:
            first = await asyncio.wait_for(ws.recv(), 5)
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None
    raise AssertionError(f"connection opened: {first!r}")
