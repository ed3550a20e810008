"""Unit tests of the limit primitives: client IP, token bucket, login guard."""

from __future__ import annotations

import ipaddress

import pytest

from liminal.limits import LoginGuard, TokenBucket, client_ip

TRUSTED = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("192.0.2.1", ["198.51.100.1"], "192.0.2.1"),  # untrusted peer: header ignored
        ("10.0.0.5", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.5", ["6.6.6.6, 198.51.100.1, 10.0.0.9"], "198.51.100.1"),
        ("10.0.0.5", ["6.6.6.6", "198.51.100.1"], "198.51.100.1"),  # several headers
        ("10.0.0.5", [], "10.0.0.5"),
        ("10.0.0.5", ["not-an-ip"], "10.0.0.5"),
        ("10.0.0.5", ["198.51.100.1, garbage"], "10.0.0.5"),
        ("10.0.0.5", ["10.0.0.7, 10.0.0.8"], "10.0.0.7"),  # all trusted: left-most
        ("::ffff:192.0.2.4", [], "192.0.2.4"),
        ("fd00::1", ["2001:db8::1"], "2001:db8::1"),
        ("2001:db8::1", [], "2001:db8::1"),
    ],
)
def test_client_ip(peer: str, forwarded: list[str], expected: str) -> None:
    assert client_ip(peer, forwarded, TRUSTED) == expected


def test_client_ip_without_trusted_proxies_is_the_peer() -> None:
    assert client_ip("10.0.0.5", ["198.51.100.1"], []) == "10.0.0.5"


def test_token_bucket_burst_then_refill(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("liminal.limits.time.monotonic", lambda: now[0])
    bucket = TokenBucket(3, 1.0)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(1.0)
    assert bucket.empty
    now[0] += 0.5
    assert bucket.take() == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.take() == 0.0
    now[0] += 100
    assert [bucket.take() for _ in range(4)][-1] > 0  # capped at capacity


def test_login_guard_locks_a_pair_and_forgets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr("liminal.limits.time.monotonic", lambda: now[0])
    guard = LoginGuard(max_failures=3, window_seconds=60, max_keys=4)
    for _ in range(3):
        assert guard.attempt("a", "ip") == 0.0  # each one fails
        now[0] += 1
    assert guard.attempt("a", "ip") == pytest.approx(57)
    assert guard.attempt("a", "other-ip") == 0.0
    assert guard.attempt("b", "ip") == 0.0
    guard.succeeded("b", "ip")
    now[0] += 57
    assert guard.attempt("a", "ip") == 0.0
    for name in "xyz":
        guard.attempt(name, "1")
    assert len(guard._failures) == 4  # bounded


def test_login_guard_stops_a_spray_over_many_usernames() -> None:
    guard = LoginGuard(max_failures=5, window_seconds=60, max_failures_per_ip=10)
    results = [guard.attempt(f"user-{n}", "ip") for n in range(12)]
    assert results[:10] == [0.0] * 10
    assert all(wait > 0 for wait in results[10:])
    assert guard.attempt("user-0", "other-ip") == 0.0


def test_login_guard_counts_simultaneous_attempts() -> None:
    guard = LoginGuard(max_failures=5, window_seconds=60)
    admitted = [guard.attempt("carol", "ip") == 0.0 for _ in range(40)]
    assert admitted.count(True) == 5
