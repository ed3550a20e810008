"""The ``liminal`` command: serve, manage users, move graphs, benchmark."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click
from pydantic import ValidationError

from . import __version__
from .accounts import Accounts
from .bench import bench
from .config import Settings
from .errors import ConfigError

__all__ = ["main"]


def _field_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add one ``--flag`` per settings field, documented with its variable."""
    for name, field in reversed(list(Settings.model_fields.items())):
        if field.default_factory is not None:
            produced = field.default_factory()  # type: ignore[call-arg]
            if name == "instance_id":
                shown: Any = "random"
            else:
                shown = ",".join(map(str, produced)) or "none"
        else:
            shown = field.default
        help_text = (
            f"{field.description or ''} "
            f"[env LIMINAL_{name.upper()}; default {shown if shown is not None else 'unset'}]"
        )
        command = click.option(
            f"--{name.replace('_', '-')}", name, default=None, help=help_text
        )(command)
    return command


def load_settings(overrides: dict[str, Any]) -> Settings:
    """Settings from the environment, with non-empty ``overrides`` on top."""
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise click.UsageError(problems) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="liminal")
def main() -> None:
    """liminal: real-time messaging over WebSocket, with a graph of who may talk."""


main.add_command(bench)


@main.command()
@_field_options
def serve(**overrides: Any) -> None:
    """Run the server. Every option also comes from its LIMINAL_* variable."""
    from . import logs, server

    settings = load_settings(overrides)
    logs.configure(settings.log_level)
    try:
        server.run(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        ) from None


data_dir_option = click.option(
    "--data-dir",
    default=None,
    help="data directory [env LIMINAL_DATA_DIR; default liminal-data]",
)


def _accounts(data_dir: str | None) -> Accounts:
    settings = load_settings({"data_dir": data_dir})
    return Accounts(settings.database_path)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt(
            "Password", hide_input=True, confirmation_prompt=True, err=True
        )
    if not password:
        raise click.UsageError("the password must not be empty")
    return password


@main.group()
def users() -> None:
    """Manage user accounts (in the data dir's database)."""


@users.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="give the user the admin role")
@click.option("--password-stdin", is_flag=True, help="read the password from stdin")
@data_dir_option
def users_add(name: str, admin: bool, password_stdin: bool, data_dir: str | None) -> None:
    """Create user NAME (prompts twice for the password)."""
    accounts = _accounts(data_dir)
    try:
        user = accounts.add(name, _read_password(password_stdin), admin=admin)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"added {user.name}{' (admin)' if user.is_admin else ''}")


@users.command("list")
@data_dir_option
def users_list(data_dir: str | None) -> None:
    """List users and their roles."""
    for user in _accounts(data_dir).list():
        roles = ",".join(user.roles) or "-"
        click.echo(f"{user.name}\t{roles}\t{user.created_at}")


@users.command("remove")
@click.argument("name")
@data_dir_option
def users_remove(name: str, data_dir: str | None) -> None:
    """Delete user NAME; their tokens stop working and live connections close."""
    if not _accounts(data_dir).remove(name):
        raise click.ClickException(f"no user {name}")
    click.echo(f"removed {name}")


@users.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="read the password from stdin")
@data_dir_option
def users_passwd(name: str, password_stdin: bool, data_dir: str | None) -> None:
    """Set a new password for user NAME."""
    accounts = _accounts(data_dir)
    if accounts.get(name) is None:
        raise click.ClickException(f"no user {name}")
    accounts.set_password(name, _read_password(password_stdin))
    click.echo(f"password of {name} changed")
