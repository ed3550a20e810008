"""REST routes of a real server: tokens, stats, metrics, API description."""

from __future__ import annotations

import os
import stat
from typing import Any

import pytest

from conftest import LiminalProcess, connect

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_token_from_json_credentials(server: LiminalProcess) -> None:
    status, body, _ = server.request(
        "POST", "/token", {"username": "alice", "password": "alice-pw-1"}
    )
    assert status == 200
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    assert body["access_token"].count(".") == 2


def test_token_from_oauth2_form(server: LiminalProcess) -> None:
    status, body, _ = server.request(
        "POST", "/token", raw=b"username=bob&password=bob-pw-2&grant_type=password",
        headers=FORM,
    )
    assert status == 200
    assert body["token_type"] == "bearer"


@pytest.mark.parametrize(
    "credentials",
    [{"username": "alice", "password": "nope"}, {"username": "nobody", "password": "x"}],
)
def test_wrong_credentials_get_401(server: LiminalProcess, credentials: Any) -> None:
    status, body, headers = server.request("POST", "/token", credentials)
    assert status == 401
    assert body == {"detail": "wrong username or password"}
    assert headers.get("WWW-Authenticate") == "Bearer"


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[1, 2]", b'{"username": "alice"}', b'{"username": 5, "password": "x"}'],
)
def test_malformed_token_request_gets_json_error(server: LiminalProcess, raw: bytes) -> None:
    status, body, _ = server.request(
        "POST", "/token", raw=raw, headers={"Content-Type": "application/json"}
    )
    assert status in (400, 422)
    assert "detail" in body


def test_stats_need_a_token(server: LiminalProcess) -> None:
    status, body, headers = server.request("GET", "/debug/connections/stats")
    assert status == 401
    assert "detail" in body


def test_stats_refuse_a_non_admin(server: LiminalProcess) -> None:
    status, body, _ = server.request(
        "GET", "/debug/connections/stats", token=server.token("alice")
    )
    assert status == 403
    assert body == {"detail": "admin role required"}


async def test_stats_have_the_spec_shape_and_count_exactly(server: LiminalProcess) -> None:
    clients = [await connect(server, server.token("carol")) for _ in range(3)]
    await clients[0].subscribe("stats-a")
    await clients[1].subscribe("stats-a")
    await clients[2].subscribe("stats-b")
    stats = server.stats()
    assert set(stats) == {
        "total_connections", "connections_by_ip", "channel_subscriptions", "instance_id",
    }
    assert stats["total_connections"] == 3
    assert stats["connections_by_ip"] == {"127.0.0.1": 3}
    assert stats["channel_subscriptions"] == {"stats-a": 2, "stats-b": 1}
    for client in clients:
        await client.close()


def test_openapi_document_and_docs_page(server: LiminalProcess) -> None:
    status, spec, _ = server.request("GET", "/openapi.json")
    assert status == 200
    assert spec["openapi"].startswith("3.")
    assert {"/token", "/debug/connections/stats", "/healthz"} <= set(spec["paths"])
    body = spec["paths"]["/token"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "application/x-www-form-urlencoded"}
    assert "TokenResponse" in spec["components"]["schemas"]
    assert spec["paths"]["/debug/connections/stats"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/token"]["post"]
    assert {"/metrics", "/ws"} <= set(spec["paths"])
    status, page, _ = server.request("GET", "/docs")
    assert status == 200
    assert "swagger" in page.lower() and '"/openapi.json"' in page


def test_unknown_path_gets_json_404(server: LiminalProcess) -> None:
    status, body, _ = server.request("GET", "/no-such-path")
    assert status == 404
    assert "detail" in body


def test_plain_get_on_ws_gets_426_not_500(server: LiminalProcess) -> None:
    status, body, _ = server.request("GET", f"/ws?token={server.token('alice')}")
    assert status == 426
    assert "detail" in body


def test_health_needs_no_token(server: LiminalProcess) -> None:
    status, body, _ = server.request("GET", "/healthz")
    assert status == 200
    assert body["status"] == "ok"


def test_generated_secret_is_kept_0600_and_survives_restart(start_server: Any) -> None:
    server = start_server(LIMINAL_JWT_SECRET="")
    secret_file = server.data_dir / "jwt-secret"
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
    assert len(secret_file.read_bytes().strip()) >= 32
    token = server.token("alice")
    server.restart()
    status, _, _ = server.request("GET", "/debug/connections/stats", token=token)
    assert status == 403  # accepted as alice after the restart, just not an admin


def test_short_secret_is_refused_at_start(start_server: Any) -> None:
    with pytest.raises(RuntimeError) as info:
        start_server(LIMINAL_JWT_SECRET="too-short")
    assert "at least 32 bytes" in str(info.value)
