"""Settings: every knob of liminal, defined once.

Each field is read from a ``LIMINAL_<FIELD>`` environment variable and can be
overridden by the matching ``liminal serve --<field>`` flag. Defaults live here
and nowhere else.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import uuid
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import ConfigError
from .logs import redact_parameters

__all__ = ["Settings", "load_jwt_secret", "make_private_dir", "mask_url"]

MIN_SECRET_BYTES = 32
SECRET_FILE = "jwt-secret"

_RELATIONSHIP_TYPE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _split_list(value: object) -> object:
    """Accept ``a,b,c`` as well as a real list (from code or a JSON default)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """All configuration of one liminal instance."""

    model_config = SettingsConfigDict(
        env_prefix="LIMINAL_", extra="ignore", env_ignore_empty=True
    )

    # Listening socket.
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on (0: any)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="log level of the liminal loggers"
    )
    instance_id: str = Field(
        default_factory=lambda: uuid.uuid4().hex[:12],
        description="name of this instance in stats and logs (random by default)",
    )

    # Storage and authentication.
    data_dir: Path = Field(
        Path("liminal-data"),
        description="directory of the embedded database and the generated JWT secret",
    )
    jwt_secret: SecretStr | None = Field(
        None,
        description="HMAC key for tokens, at least 32 bytes "
        "(default: generated once and kept in the data dir)",
    )
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = Field(
        "HS256", description="the one algorithm tokens are signed and verified with"
    )
    token_ttl_seconds: int = Field(3600, gt=0, description="lifetime of issued tokens")

    # Connections and fan-out.
    max_queued_bytes: int = Field(
        1024 * 1024,
        gt=0,
        description="outbound bytes buffered per connection before it is closed "
        "as a slow consumer (4008)",
    )
    heartbeat_seconds: float = Field(
        30.0, gt=0, description="ping interval that detects dead peers"
    )

    # Admission limits.
    max_connections: int = Field(
        100, gt=0, description="connections per instance (4005 beyond)"
    )
    max_connections_per_ip: int = Field(
        10, gt=0, description="connections per client IP address (4006 beyond)"
    )
    max_message_bytes: int = Field(
        65536, gt=0, description="largest WebSocket message accepted (1009 beyond)"
    )
    rate_limit_per_minute: int = Field(
        100, gt=0, description="message events per connection per minute (4029 beyond)"
    )
    control_rate_per_minute: int = Field(
        300,
        gt=0,
        description="subscribe, unsubscribe and malformed events per connection "
        "per minute (4029 beyond)",
    )
    max_subscriptions_per_connection: int = Field(
        100, gt=0, description="channels one connection may subscribe to (4030 beyond)"
    )
    trusted_proxies: Annotated[list[IPNetwork], NoDecode] = Field(
        default_factory=list,
        description="comma-separated addresses or CIDR networks whose "
        "X-Forwarded-For is believed",
    )
    login_max_failures: int = Field(
        5, gt=0, description="failed logins per username and IP before lock-out (429)"
    )
    login_window_seconds: float = Field(
        60.0, gt=0, description="window of the login lock-out"
    )

    # Cross-instance broker.
    broker_url: SecretStr | None = Field(
        None,
        description="redis://[:password@]host:port/db to share channels between "
        "instances (default: this process only)",
    )
    broker_prefix: str = Field(
        "liminal:", description="prefix of every Redis channel name liminal uses"
    )

    # Graph store.
    graph_url: str | None = Field(
        None,
        description="bolt:// or neo4j:// URL of a Neo4j server "
        "(default: the embedded SQLite store)",
    )
    graph_user: str | None = Field(None, description="Neo4j user name")
    graph_password: SecretStr | None = Field(None, description="Neo4j password")

    # Channel policy.
    channel_policy: Literal["open", "graph"] = Field(
        "open",
        description="open: every channel, every user; graph: relationships decide",
    )
    channel_read_relationships: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["MEMBER_OF", "CAN_READ"],
        description="relationship types from a user to a channel that allow "
        "subscribing (graph policy)",
    )
    channel_write_relationships: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["MEMBER_OF", "CAN_WRITE"],
        description="relationship types from a user to a channel that allow "
        "publishing (graph policy)",
    )
    feed_read_relationships: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["MEMBER_OF", "CAN_READ"],
        description="relationship types from a user to a node that allow "
        "subscribing to its graph:<type>:<id> change feed",
    )

    @field_validator(
        "channel_read_relationships",
        "channel_write_relationships",
        "feed_read_relationships",
        mode="before",
    )
    @classmethod
    def _parse_relationship_types(cls, value: object) -> object:
        items = _split_list(value)
        if isinstance(items, list):
            for item in items:
                if not isinstance(item, str) or not _RELATIONSHIP_TYPE.fullmatch(item):
                    raise ValueError(f"not a relationship type: {item!r}")
        return items

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_networks(cls, value: object) -> object:
        items = _split_list(value)
        if isinstance(items, list):
            return [ipaddress.ip_network(str(item), strict=False) for item in items]
        return items

    @property
    def database_path(self) -> Path:
        return self.data_dir / "liminal.db"


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) readable by its owner only, if missing.

    The data dir holds password hashes and the JWT key; an existing directory
    keeps the mode its owner gave it.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def load_jwt_secret(settings: Settings) -> bytes:
    """Return the signing key: the configured one, or the one kept in the data dir.

    On first start without ``LIMINAL_JWT_SECRET`` a random key is written to
    ``<data_dir>/jwt-secret`` with mode 0600, so tokens survive restarts and
    instances sharing the data dir share the key.

    Raises:
        ConfigError: the configured secret is shorter than 32 bytes.
    """
    if settings.jwt_secret is not None:
        secret = settings.jwt_secret.get_secret_value().encode()
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"LIMINAL_JWT_SECRET is {len(secret)} bytes; it must be at least "
                f"{MIN_SECRET_BYTES} bytes (try: openssl rand -hex 32)"
            )
        return secret

    make_private_dir(settings.data_dir)
    path = settings.data_dir / SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_bytes().strip()
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"{path} holds a key shorter than {MIN_SECRET_BYTES} bytes; "
                "delete it to have a new one generated"
            ) from None
        return secret
    secret = secrets.token_hex(32).encode()
    with os.fdopen(fd, "wb") as file:
        file.write(secret)
    return secret


def mask_url(url: str) -> str:
    """Hide the passwords of a URL for logging.

    Both ``scheme://user:password@host`` and a ``password=`` query parameter
    are masked.
    """
    url = redact_parameters(url, "***")
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.partition("?")[0]:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.partition(":")[0]
    return f"{scheme}://{user}:***@{host}" if user else f"{scheme}://:***@{host}"
