"""Tokens: what opens a connection, what is refused and with which code."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
from typing import Any

import jwt
import pytest

from conftest import SECRET, LiminalProcess, connect, refused_code


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], key: bytes | None = None,
          digest: Any = hashlib.sha256, signature: bytes | None = None) -> str:
    """Sign a token by hand, independent of any JWT library's refusals."""
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    if signature is None:
        assert key is not None
        signature = hmac.new(key, signing_input.encode(), digest).digest()
    return signing_input + "." + b64(signature)


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(time.time()) + 600, **extra}


def signed(payload: dict[str, Any]) -> str:
    return forge({"alg": "HS256", "typ": "JWT"}, payload, SECRET.encode())


def unsigned(alg: str) -> str:
    return forge({"alg": alg, "typ": "JWT"}, claims(), signature=b"")


FORGED = {
    "alg-none": unsigned("none"),
    "alg-None": unsigned("None"),
    "alg-NONE": unsigned("NONE"),
    "alg-nOnE": unsigned("nOnE"),
    "none-with-signature": unsigned("none") + "AAAA",
    "hs512-empty-key": forge({"alg": "HS512"}, claims(), b"", hashlib.sha512),
    "hs512-real-key": forge({"alg": "HS512"}, claims(), SECRET.encode(), hashlib.sha512),
    "rs256-random": forge({"alg": "RS256"}, claims(), signature=os.urandom(256)),
    "wrong-secret": forge({"alg": "HS256"}, claims(), b"secret"),
    "kid-path": forge({"alg": "HS256", "kid": "../../dev/null"}, claims(), b""),
    "bad-signature": signed(claims())[:-4] + "AAAA",
    "garbage": "not-a-token",
    "empty-parts": "..",
    "missing-exp": signed({"sub": "alice"}),
    "exp-string": signed({"sub": "alice", "exp": str(int(time.time()) + 600)}),
    "exp-bool": signed({"sub": "alice", "exp": True}),
    "iat-string": signed(claims(iat=str(int(time.time())))),
    "nbf-string": signed(claims(nbf="0")),
    "nbf-future": signed(claims(nbf=int(time.time()) + 300)),
    "sub-int": signed(claims(sub=42)),
    "sub-list": signed(claims(sub=["alice"])),
    "sub-empty": signed(claims(sub="")),
    "sub-missing": signed({"exp": int(time.time()) + 600}),
    "unknown-user": signed(claims(sub="mallory")),
}


@pytest.mark.parametrize("name", list(FORGED))
async def test_bad_token_is_refused_with_4001(server: LiminalProcess, name: str) -> None:
    before = server.stats()["total_connections"]
    assert await refused_code(server, FORGED[name]) == 4001
    assert server.stats()["total_connections"] == before
    # The server keeps serving honest clients right after.
    client = await connect(server, server.token("alice"))
    await client.close()


async def test_missing_token_is_refused_with_4001(server: LiminalProcess) -> None:
    import websockets

    async with websockets.connect(server.ws_url) as ws:
        with pytest.raises(websockets.ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4001


async def test_expired_token_is_refused_with_4002(server: LiminalProcess) -> None:
    token = signed({"sub": "alice", "exp": int(time.time()) - 5})
    assert await refused_code(server, token) == 4002


async def test_issued_token_has_string_sub_roles_and_explicit_claims(
    server: LiminalProcess,
) -> None:
    token = server.token("root")
    header = jwt.get_unverified_header(token)
    payload = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "HS256"
    assert payload["sub"] == "root"
    assert payload["roles"] == ["admin"]
    assert isinstance(payload["iat"], int) and isinstance(payload["exp"], int)
    assert payload["exp"] - payload["iat"] == 3600
    assert isinstance(payload["jti"], str) and payload["jti"]


async def test_token_expiring_while_connected_closes_with_4002(start_server: Any) -> None:
    server = start_server(LIMINAL_TOKEN_TTL_SECONDS="2")
    client = await connect(server, server.token("alice"))
    started = time.monotonic()
    assert await client.close_code(timeout=6) == 4002
    assert 0.5 < time.monotonic() - started < 4.5
    assert server.stats()["total_connections"] == 0


async def test_removed_user_is_disconnected_with_4001_and_token_refused(
    start_server: Any,
) -> None:
    server = start_server()
    token = server.token("dave")
    client = await connect(server, token)
    server.cli("users", "remove", "dave")
    assert await client.close_code(timeout=5) == 4001
    assert await refused_code(server, token) == 4001
    status, _, _ = server.request("GET", "/debug/connections/stats", token=token)
    assert status == 401


async def test_secrets_never_appear_in_the_log(start_server: Any) -> None:
    server = start_server()
    token = server.token("alice")
    client = await connect(server, token)
    await client.close()
    await refused_code(server, FORGED["wrong-secret"])
    server.request("POST", "/token", {"username": "bob", "password": "wrong-password"})
    server.request("POST", "/token", raw=b"username=bob&password=bob-pw-2",
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    server.stop()
    log = server.log_text()
    assert "connection opened" in log and "/ws?token=<redacted>" in log
    for secret in (token, token.split(".")[2], SECRET, "wrong-password", "bob-pw-2",
                   "alice-pw-1", "$argon2", FORGED["wrong-secret"].split(".")[2]):
        assert secret not in log


async def test_password_change_revokes_older_tokens_and_their_connections(
    start_server: Any,
) -> None:
    server = start_server()
    old_token = server.token("carol")
    client = await connect(server, old_token)
    await asyncio.sleep(1.1)  # revocation has whole-second resolution
    server.cli("users", "passwd", "carol", "--password-stdin", stdin=b"new-carol-pw\n")
    assert await client.close_code(timeout=5) == 4001
    assert await refused_code(server, old_token) == 4001
    fresh = await connect(server, server.token("carol", "new-carol-pw"))
    await fresh.close()
