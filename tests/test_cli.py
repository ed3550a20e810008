"""The liminal command line, run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from liminal.accounts import Accounts
from liminal.config import Settings


def liminal(data_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LIMINAL_DATA_DIR": str(data_dir)}
    # A new session has no controlling terminal, so password prompts read the
    # stdin given here even when the suite runs in an interactive terminal.
    return subprocess.run(
        [sys.executable, "-m", "liminal", *args],
        input=stdin, env=env, capture_output=True, text=True, timeout=60,
        start_new_session=True,
    )


def test_serve_help_lists_every_setting_with_its_variable(tmp_path: Path) -> None:
    result = liminal(tmp_path, "serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in text
        assert f"LIMINAL_{name.upper()}" in text


def test_users_add_list_passwd_remove(tmp_path: Path) -> None:
    assert liminal(tmp_path, "users", "add", "erin", "--admin", "--password-stdin",
                   stdin="first-pw\n").returncode == 0
    assert liminal(tmp_path, "users", "add", "frank", "--password-stdin",
                   stdin="frank-pw\n").returncode == 0
    listing = liminal(tmp_path, "users", "list").stdout.splitlines()
    assert [line.split("\t")[:2] for line in listing] == [["erin", "admin"], ["frank", "-"]]

    assert liminal(tmp_path, "users", "passwd", "erin", "--password-stdin",
                   stdin="second-pw\n").returncode == 0
    accounts = Accounts(tmp_path / "liminal.db")
    assert accounts.authenticate("erin", "first-pw") is None
    assert accounts.authenticate("erin", "second-pw") is not None
    row = accounts._db.execute("SELECT password_hash FROM users WHERE name='erin'").fetchone()
    assert row[0].startswith("$argon2id$") and "second-pw" not in row[0]
    accounts.close()

    assert liminal(tmp_path, "users", "remove", "frank").returncode == 0
    assert "frank" not in liminal(tmp_path, "users", "list").stdout


def test_users_add_prompts_twice_and_refuses_a_mismatch(tmp_path: Path) -> None:
    result = liminal(tmp_path, "users", "add", "gina", stdin="one\ntwo\none\none\n")
    assert result.returncode == 0, result.stderr
    assert "match" in result.stderr.lower()
    assert Accounts(tmp_path / "liminal.db").authenticate("gina", "one") is not None


def test_users_errors_are_clear(tmp_path: Path) -> None:
    liminal(tmp_path, "users", "add", "hank", "--password-stdin", stdin="pw\n")
    duplicate = liminal(tmp_path, "users", "add", "hank", "--password-stdin", stdin="pw\n")
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr
    bad_name = liminal(tmp_path, "users", "add", "bad name", "--password-stdin", stdin="pw\n")
    assert bad_name.returncode == 1 and "username" in bad_name.stderr
    missing = liminal(tmp_path, "users", "remove", "nobody")
    assert missing.returncode == 1 and "no user nobody" in missing.stderr


def test_invalid_setting_is_a_usage_error(tmp_path: Path) -> None:
    result = liminal(tmp_path, "serve", "--port", "not-a-port")
    assert result.returncode == 2
    assert "port" in result.stderr
