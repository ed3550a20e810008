"""User accounts, kept in the embedded SQLite database of the data dir.

The ``liminal users`` commands and every server instance sharing the data dir
read and write the same table; a server notices changes made by another
process through SQLite's ``data_version`` and closes the connections of users
that were removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .auth import hash_password, verify_password
from .config import make_private_dir
from .errors import LiminalError

__all__ = ["Accounts", "LoginBusy", "User", "UserDirectory", "valid_username"]

logger = logging.getLogger(__name__)

USERNAME_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
# Password checks run on their own small pool: argon2 takes ~50 ms and 64 MiB
# per check, so a login flood is bounded in CPU and memory and cannot starve
# the other work done in threads (like noticing removed users).
PASSWORD_WORKERS = 2
MAX_WAITING_LOGINS = 32


class LoginBusy(LiminalError):
    """Too many logins are being checked already; the client should retry."""


ADMIN_ROLE = "admin"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    roles TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    tokens_valid_after INTEGER NOT NULL DEFAULT 0
)
"""
_COLUMNS = "name, roles, created_at, tokens_valid_after"


def valid_username(name: str) -> bool:
    """Tell whether ``name`` can be a username (1-64 of ``A-Za-z0-9_.@-``)."""
    return USERNAME_PATTERN.fullmatch(name) is not None


@dataclass(slots=True, frozen=True)
class User:
    """One account, without its password hash."""

    name: str
    roles: tuple[str, ...]
    created_at: str
    # Tokens issued before this time (whole seconds) are refused: set when
    # the password changes.
    tokens_valid_after: int = 0

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles


def connect_database(path: Path) -> sqlite3.Connection:
    """Open the embedded database in WAL mode, creating it if needed.

    The data dir and the database (which holds password hashes) are made
    readable by their owner only.
    """
    make_private_dir(path.parent)
    db = sqlite3.connect(path, timeout=10, check_same_thread=False)
    with contextlib.suppress(OSError):
        path.chmod(0o600)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=10000")
    return db


class Accounts:
    """Synchronous access to the users table; safe to share between threads.

    Args:
        path: the SQLite database file.
    """

    def __init__(self, path: Path) -> None:
        self._db = connect_database(path)
        self._lock = threading.Lock()
        with self._lock, self._db:
            self._db.execute(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(users)")}
            if "tokens_valid_after" not in columns:  # data dirs from 0.1.0 betas
                self._db.execute(
                    "ALTER TABLE users ADD COLUMN tokens_valid_after "
                    "INTEGER NOT NULL DEFAULT 0"
                )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, name: str, password: str, *, admin: bool = False) -> User:
        """Create a user.

        Raises:
            ValueError: invalid name, empty password, or the name is taken.
        """
        if not valid_username(name):
            raise ValueError("a username is 1-64 letters, digits or _ . @ -")
        if not password:
            raise ValueError("the password must not be empty")
        # Tokens of an earlier account with the same name must not come back
        # to life, so only tokens issued from now on count.
        user = User(name, (ADMIN_ROLE,) if admin else (), _now(), int(time.time()))
        password_hash = hash_password(password)
        try:
            with self._lock, self._db:
                self._db.execute(
                    "INSERT INTO users (name, password_hash, roles, created_at,"
                    " tokens_valid_after) VALUES (?, ?, ?, ?, ?)",
                    (
                        name,
                        password_hash,
                        ",".join(user.roles),
                        user.created_at,
                        user.tokens_valid_after,
                    ),
                )
        except sqlite3.IntegrityError:
            raise ValueError(f"user {name} already exists") from None
        return user

    def remove(self, name: str) -> bool:
        """Delete a user; return False if there was none."""
        with self._lock, self._db:
            cursor = self._db.execute("DELETE FROM users WHERE name = ?", (name,))
        return cursor.rowcount > 0

    def set_password(self, name: str, password: str) -> bool:
        """Replace a user's password and revoke the tokens issued before.

        Returns False if there is no such user.
        """
        if not password:
            raise ValueError("the password must not be empty")
        password_hash = hash_password(password)
        with self._lock, self._db:
            cursor = self._db.execute(
                "UPDATE users SET password_hash = ?, tokens_valid_after = ?"
                " WHERE name = ?",
                (password_hash, int(time.time()), name),
            )
        return cursor.rowcount > 0

    def get(self, name: str) -> User | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM users WHERE name = ?", (name,)
            ).fetchone()
        return _user(row) if row else None

    def list(self) -> list[User]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM users ORDER BY name"
            ).fetchall()
        return [_user(row) for row in rows]

    def authenticate(self, name: str, password: str) -> User | None:
        """Return the user if ``password`` is theirs; slow (argon2) either way."""
        with self._lock:
            row = self._db.execute(
                f"SELECT password_hash, {_COLUMNS} FROM users WHERE name = ?",
                (name,),
            ).fetchone()
        if not verify_password(row[0] if row else None, password) or row is None:
            return None
        return _user(row[1:])

    def data_version(self) -> int:
        """A number that changes whenever another connection commits."""
        with self._lock:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])


def _user(row: tuple[str, str, str, int]) -> User:
    name, roles, created_at, tokens_valid_after = row
    return User(
        name,
        tuple(role for role in roles.split(",") if role),
        created_at,
        tokens_valid_after,
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class UserDirectory:
    """The server's cached, asynchronous view of the accounts.

    Lookups hit an in-memory map that is reloaded whenever the database
    changes (checked every ``poll_seconds``); a miss falls through to the
    database, so a user added a moment ago can connect at once.

    Args:
        accounts: the shared accounts table.
        on_changed: called with every user that disappeared (None) or whose
            tokens were revoked (the new record).
        poll_seconds: how often to look for changes from other processes.
    """

    def __init__(
        self,
        accounts: Accounts,
        on_changed: Callable[[dict[str, User | None]], None],
        poll_seconds: float = 0.5,
    ) -> None:
        self._accounts = accounts
        self._on_changed = on_changed
        self._poll_seconds = poll_seconds
        self._users: dict[str, User] = {}
        self._version = -1
        self._task: asyncio.Task[None] | None = None
        self._password_pool = ThreadPoolExecutor(
            PASSWORD_WORKERS, thread_name_prefix="liminal-password"
        )
        self._waiting_logins = 0

    async def start(self) -> None:
        await self._reload()
        self._task = asyncio.create_task(self._watch(), name="liminal-user-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._password_pool.shutdown(wait=False, cancel_futures=True)

    async def lookup(self, name: str) -> User | None:
        user = self._users.get(name)
        if user is None:
            user = await asyncio.to_thread(self._accounts.get, name)
            if user is not None:
                self._users[name] = user
        return user

    async def authenticate(self, name: str, password: str) -> User | None:
        """The user if ``password`` is theirs, else None.

        Raises:
            LoginBusy: more than ``MAX_WAITING_LOGINS`` checks are queued.
        """
        if self._waiting_logins >= MAX_WAITING_LOGINS:
            raise LoginBusy("too many logins in progress")
        self._waiting_logins += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._password_pool, self._accounts.authenticate, name, password
            )
        finally:
            self._waiting_logins -= 1

    async def refresh(self) -> None:
        """Reload now if the database changed; report removed or revoked users."""
        version = await asyncio.to_thread(self._accounts.data_version)
        if version != self._version:
            await self._reload(version)

    async def _reload(self, version: int | None = None) -> None:
        users = await asyncio.to_thread(self._accounts.list)
        self._version = (
            version
            if version is not None
            else await asyncio.to_thread(self._accounts.data_version)
        )
        current = {user.name: user for user in users}
        changed: dict[str, User | None] = {}
        for name, before in self._users.items():
            after = current.get(name)
            if after is None or after.tokens_valid_after > before.tokens_valid_after:
                changed[name] = after
        self._users = current
        if changed:
            self._on_changed(changed)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            try:
                await self.refresh()
            except Exception:
                logger.exception("reading the users table failed; retrying")
