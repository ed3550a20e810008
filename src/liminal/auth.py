"""Passwords and tokens.

Passwords are hashed with argon2id. Tokens are JWTs signed with one HMAC
algorithm chosen by the server; the token's own header never picks the
algorithm or the key, and every registered claim is type-checked here rather
than trusted to the installed PyJWT version.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from .errors import AuthError
from .protocol import CloseCode

__all__ = ["Claims", "TokenIssuer", "hash_password", "verify_password"]

_hasher = PasswordHasher()  # argon2id with the library's vetted defaults
# Verifying against this keeps a login for an unknown user as slow as one
# for a known user, so timing does not reveal which usernames exist.
_DUMMY_HASH = _hasher.hash("liminal-dummy-password")


def hash_password(password: str) -> str:
    """Return an argon2id hash of ``password`` (slow on purpose: ~50 ms)."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Check ``password`` against ``password_hash`` (None: unknown user)."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and (
            password_hash is not None
        )
    except (VerificationError, InvalidHashError):
        return False


@dataclass(slots=True, frozen=True)
class Claims:
    """The verified claims liminal uses from a token."""

    subject: str
    expires_at: float
    issued_at: float
    token_id: str | None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class TokenIssuer:
    """Issues and verifies liminal's tokens.

    Args:
        secret: the HMAC key (at least 32 bytes, checked by the config).
        algorithm: the only algorithm accepted, e.g. ``HS256``.
        ttl_seconds: lifetime of issued tokens.
    """

    def __init__(self, secret: bytes, algorithm: str, ttl_seconds: int) -> None:
        self._secret = secret
        self._algorithms = [algorithm]
        self.ttl_seconds = ttl_seconds

    def issue(self, username: str, roles: list[str]) -> str:
        """Return a signed token for ``username`` valid for ``ttl_seconds``."""
        now = int(time.time())
        claims = {
            "sub": username,
            "iat": now,
            "exp": now + self.ttl_seconds,
            "jti": uuid.uuid4().hex,
            "roles": roles,
        }
        return jwt.encode(claims, self._secret, algorithm=self._algorithms[0])

    def verify(self, token: str) -> Claims:
        """Verify the signature and claims of ``token``.

        Raises:
            AuthError: 4002 when expired, 4001 for every other fault.
        """
        try:
            # Signature only: PyJWT's own claim checks differ between versions
            # (numeric strings for exp, non-string sub), so we check types below.
            payload: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=self._algorithms,
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "verify_aud": False,
                    "verify_iss": False,
                    "verify_sub": False,
                    "verify_jti": False,
                },
            )
        except jwt.InvalidTokenError:
            raise AuthError(CloseCode.INVALID_TOKEN, "invalid token") from None
        return self._check_claims(payload)

    @staticmethod
    def _check_claims(payload: dict[str, Any]) -> Claims:
        subject = payload.get("sub")
        if not isinstance(subject, str) or not subject:
            raise AuthError(CloseCode.INVALID_TOKEN, "token sub must be a string")
        expires_at = payload.get("exp")
        if not _is_number(expires_at):
            raise AuthError(CloseCode.INVALID_TOKEN, "token exp must be a number")
        for claim in ("iat", "nbf"):
            if claim in payload and not _is_number(payload[claim]):
                raise AuthError(
                    CloseCode.INVALID_TOKEN, f"token {claim} must be a number"
                )
        now = time.time()
        if "nbf" in payload and payload["nbf"] > now:
            raise AuthError(CloseCode.INVALID_TOKEN, "token not valid yet")
        assert isinstance(expires_at, int | float)
        if expires_at <= now:
            raise AuthError(CloseCode.TOKEN_EXPIRED, "token expired")
        token_id = payload.get("jti")
        return Claims(
            subject,
            float(expires_at),
            float(payload.get("iat", 0)),
            token_id if isinstance(token_id, str) else None,
        )
