"""Abuse protection: token buckets, login lock-out and the client's IP address."""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Sequence

from .config import IPNetwork

__all__ = ["ConnectionRates", "LoginGuard", "TokenBucket", "client_ip"]


class TokenBucket:
    """A token bucket: ``capacity`` tokens, refilled at ``rate`` per second.

    Args:
        capacity: the burst size; the bucket starts full.
        rate: tokens added per second.
    """

    __slots__ = ("_stamp", "_tokens", "capacity", "rate")

    def __init__(self, capacity: float, rate: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self._tokens = capacity
        self._stamp = time.monotonic()

    def _refill(self, now: float) -> None:
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
            self._stamp = now

    def take(self) -> float:
        """Take one token; return 0.0 on success, else seconds until one is due."""
        now = time.monotonic()
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    @property
    def empty(self) -> bool:
        """True while the bucket has no whole token (the holder is limited)."""
        self._refill(time.monotonic())
        return self._tokens < 1.0


class ConnectionRates:
    """The rate limits of one connection.

    ``message`` meters message events (burst ``per_minute``, refilled at
    ``per_minute / 60`` per second). ``control`` meters subscribe,
    unsubscribe and malformed events the same way with its own budget.
    ``strikes`` counts events refused for either: a connection that keeps
    sending after it was told to wait runs out of strikes (twice its message
    budget per minute) and is closed with 1008.
    """

    __slots__ = ("control", "message", "strikes")

    def __init__(self, messages_per_minute: int, control_per_minute: int) -> None:
        self.message = TokenBucket(messages_per_minute, messages_per_minute / 60)
        self.control = TokenBucket(control_per_minute, control_per_minute / 60)
        self.strikes = TokenBucket(
            2 * messages_per_minute, 2 * messages_per_minute / 60
        )


class LoginGuard:
    """Locks out a username from one IP after repeated failed logins.

    After ``max_failures`` failures for one (username, IP) within
    ``window_seconds``, further attempts of that pair are refused, right or
    wrong, until the oldest failure leaves the window. Other users and other
    addresses are unaffected, except that one address may fail at most
    ``max_failures_per_ip`` times in the window over all usernames, which
    stops a spray of guesses at many accounts.

    Every attempt counts as a failure from the moment it starts until it
    succeeds, so a burst of simultaneous guesses is cut off like a sequence.
    At most ``max_keys`` pairs are remembered, the least recently failed
    forgotten first, so memory stays bounded.
    """

    def __init__(
        self,
        max_failures: int,
        window_seconds: float,
        *,
        max_failures_per_ip: int | None = None,
        max_keys: int = 100_000,
    ) -> None:
        self.max_failures = max_failures
        self.max_failures_per_ip = max_failures_per_ip or 4 * max_failures
        self.window = window_seconds
        self.max_keys = max_keys
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()

    def attempt(self, username: str, ip: str) -> float:
        """Admit a login attempt, counted as failed until :meth:`succeeded`.

        Returns 0.0 when the attempt may go on, else the seconds to wait.
        """
        now = time.monotonic()
        wait = max(
            self._wait((username, ip), self.max_failures, now),
            self._wait(("", ip), self.max_failures_per_ip, now),
        )
        if wait > 0:
            return wait
        self._record((username, ip), self.max_failures, now)
        self._record(("", ip), self.max_failures_per_ip, now)
        return 0.0

    def succeeded(self, username: str, ip: str) -> None:
        """The attempt was right: forget the pair's failures."""
        self._failures.pop((username, ip), None)
        per_ip = self._failures.get(("", ip))
        if per_ip:
            per_ip.pop()

    def _wait(self, key: tuple[str, str], limit: int, now: float) -> float:
        failures = self._failures.get(key)
        if failures is None:
            return 0.0
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return 0.0
        if len(failures) < limit:
            return 0.0
        return failures[0] + self.window - now

    def _record(self, key: tuple[str, str], limit: int, now: float) -> None:
        failures = self._failures.pop(key, None) or deque(maxlen=limit)
        failures.append(now)
        self._failures[key] = failures
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)


def _normalize(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _trusted(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: Sequence[IPNetwork]
) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


def client_ip(
    peer: str | None, forwarded_for: Sequence[str], trusted_proxies: Sequence[IPNetwork]
) -> str:
    """The address the admission limits count for one request.

    The peer's address, unless the peer is a trusted proxy: then the
    right-most ``X-Forwarded-For`` entry that is not itself trusted. Entries
    left of it were written by the client and are never believed. IPv6
    addresses count one by one (not per /64 prefix); IPv4-mapped IPv6
    addresses count as their IPv4 address.

    Args:
        peer: the TCP peer address.
        forwarded_for: every ``X-Forwarded-For`` header value, in order.
        trusted_proxies: the networks whose forwarding headers are believed.
    """
    current = _normalize(peer or "")
    if current is None:
        return peer or "unknown"
    if not trusted_proxies or not _trusted(current, trusted_proxies):
        return str(current)
    hops = [hop for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        address = _normalize(hop)
        if address is None:
            # A malformed entry: our proxy would not write it, so everything
            # from here leftwards is the client's; count the last sure hop.
            break
        current = address
        if not _trusted(address, trusted_proxies):
            break
    return str(current)
