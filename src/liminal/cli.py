"""The ``liminal`` command: serve, manage users, move graphs, benchmark."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
from pydantic import ValidationError

from . import __version__
from .accounts import Accounts
from .bench import bench
from .config import Settings
from .errors import ConfigError, LiminalError

if TYPE_CHECKING:
    from .store import GraphStore

__all__ = ["main"]

T = TypeVar("T")


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
            shown = field.default if field.default is not None else "unset"
        help_text = (
            f"{field.description or ''} [env LIMINAL_{name.upper()}; default {shown}]"
        )
        command = click.option(
            f"--{name.replace('_', '-')}", name, default=None, help=help_text
        )(command)
    return command


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


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


def _with_store(settings: Settings, action: Callable[[GraphStore], Awaitable[T]]) -> T:
    """Open the configured graph store, run ``action`` on it, close it."""
    from .store import open_store

    async def run() -> T:
        store = open_store(settings)
        await store.start()
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _update_user_node(data_dir: str | None, name: str, *, present: bool) -> None:
    """Create or delete the user's graph node; only warn if that fails.

    A server creates missing user nodes when it starts, so a user added while
    the graph store is down gets a node later.
    """

    async def update(store: GraphStore) -> str | None:
        if not present:
            await store.delete_node("user", name)
            return None
        created = await store.ensure_nodes("user", [name])
        if not created and await store.get_node("user", name) is None:
            return f"the node id {name} belongs to a node of another type"
        return None

    try:
        problem = _with_store(load_settings({"data_dir": data_dir}), update)
    except LiminalError as exc:
        problem = str(exc)
    if problem:
        action = "create" if present else "remove"
        click.echo(f"warning: could not {action} the user node: {problem}", err=True)


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
def users_add(
    name: str, admin: bool, password_stdin: bool, data_dir: str | None
) -> None:
    """Create user NAME (prompts twice for the password)."""
    accounts = _accounts(data_dir)
    try:
        user = accounts.add(name, _read_password(password_stdin), admin=admin)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"added {user.name}{' (admin)' if user.is_admin else ''}")
    _update_user_node(data_dir, name, present=True)


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
    _update_user_node(data_dir, name, present=False)


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


@main.group()
def graph() -> None:
    """Move the graph between stores as JSON lines (nodes, then relationships)."""


graph_url_option = click.option(
    "--graph-url",
    default=None,
    help="bolt:// or neo4j:// URL of the store "
    "[env LIMINAL_GRAPH_URL; default: the embedded store in the data dir]",
)


@graph.command("export")
@click.argument("file", type=click.File("w", encoding="utf-8"))
@data_dir_option
@graph_url_option
def graph_export(file: Any, data_dir: str | None, graph_url: str | None) -> None:
    """Write the whole graph to FILE ("-" for standard output)."""
    from .store.transfer import export_graph

    settings = load_settings({"data_dir": data_dir, "graph_url": graph_url})
    try:
        nodes, relationships = _with_store(
            settings, lambda store: export_graph(store, file)
        )
    except LiminalError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"exported {_count(nodes, 'node')} and {_count(relationships, 'relationship')}",
        err=True,
    )


@graph.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@data_dir_option
@graph_url_option
def graph_import(file: Any, data_dir: str | None, graph_url: str | None) -> None:
    """Read nodes and relationships from FILE ("-" for standard input).

    Nodes and relationships with the same id as stored ones replace them.
    """
    from .store.transfer import import_graph

    settings = load_settings({"data_dir": data_dir, "graph_url": graph_url})
    try:
        nodes, relationships = _with_store(
            settings, lambda store: import_graph(store, file)
        )
    except (LiminalError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"imported {_count(nodes, 'node')} and {_count(relationships, 'relationship')}",
        err=True,
    )
