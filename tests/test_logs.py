"""Unit tests of redaction: what log lines and masked URLs never contain."""

from __future__ import annotations

import pytest

from liminal.config import mask_url
from liminal.logs import redact

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    "line",
    [f"GET /ws?token={JWT}", f"GET /ws?%74oken={JWT} HTTP/9.9", f"Bearer {JWT}",
     "POST /token?username=a&password=hunter2", "x access_token%3Dhunter2"],
)
def test_redact_removes_tokens_and_secret_parameters(line: str) -> None:
    text = redact(line)
    assert JWT not in text and "hunter2" not in text
    assert "redacted" in text


@pytest.mark.parametrize(
    ("url", "masked"),
    [("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
     ("redis://user:pw@host:6379/0", "redis://user:***@host:6379/0"),
     ("redis://host:6379/0?password=pw&db=1", "redis://host:6379/0?password=***&db=1"),
     ("redis://host:6379/0", "redis://host:6379/0")],
)
def test_mask_url_hides_passwords(url: str, masked: str) -> None:
    assert mask_url(url) == masked
