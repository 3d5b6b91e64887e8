"""Authentication: a verified JWT becomes an ``Actor``. The actor never comes from command data."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import jwt

from .errors import AuthError

ActorKind = Literal["user", "service", "admin"]
_KINDS: tuple[ActorKind, ...] = ("user", "service", "admin")
_ASYMMETRIC = [
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
]
MAX_TOKEN_BYTES = 8192


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is acting: from the verified claims ``sub``, ``tenant``, ``roles`` and ``kind``."""

    kind: ActorKind
    user_id: str
    tenant_id: str | None = None
    roles: frozenset[str] = field(default_factory=frozenset)

    def audit(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.user_id,
            "tenant": self.tenant_id,
            "roles": sorted(self.roles),
        }


class Authenticator(Protocol):
    """Turns the bearer token of a command (or ``None``) into an actor, or raises ``AuthError``."""

    def authenticate(self, token: str) -> Actor: ...


def bearer(header: str | bytes | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value, or ``None``."""
    if header is None:
        return None
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class JwtAuthenticator:
    """Verifies tokens with PyJWT: HS256 with a shared secret, or an asymmetric public key.

    Only the algorithms of the configured key are accepted, so ``alg: none`` and the
    HS256-signed-with-the-public-key confusion both fail. ``exp`` and ``sub`` are required;
    issuer and audience are checked when configured.
    """

    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = 30.0,
        max_token_bytes: int = MAX_TOKEN_BYTES,
        cache_size: int = 10_000,
    ) -> None:
        if (secret is None) == (public_key is None):
            raise ValueError("configure exactly one of a JWT secret or a JWT public key")
        self._key: Any = secret if secret is not None else public_key
        self._algorithms = ["HS256"] if secret is not None else _ASYMMETRIC
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._max = max_token_bytes
        # Producers reuse one token for many commands; verifying it once per expiry saves
        # the HMAC/RSA check on the hot path. Bounded, and keyed by the exact token string.
        self._cache: dict[str, tuple[Actor, float]] = {}
        self._cache_size = cache_size

    def authenticate(self, token: str) -> Actor:
        """Verify ``token``; a token verified before is served from a cache until it expires."""
        cached = self._cache.get(token)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        if len(token) > self._max:
            raise AuthError(f"token longer than {self._max} bytes")
        options: dict[str, Any] = {
            "require": ["exp", "sub"],
            "verify_aud": self._audience is not None,
        }
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid") from None
        except jwt.InvalidIssuerError:
            raise AuthError("token issuer not accepted") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token audience not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError("token algorithm not accepted") from None
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise AuthError("token invalid") from None
        actor = actor_from_claims(claims)
        if len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))  # oldest first: a bounded FIFO
        # Valid until exp (minus nothing: the leeway only ever widens acceptance at the edge).
        self._cache[token] = (actor, float(claims["exp"]))
        return actor


def actor_from_audit(data: dict[str, Any] | None) -> Actor | None:
    """The actor ``Actor.audit()`` wrote (kept by this runner, never taken from a message)."""
    if data is None:
        return None
    return Actor(
        kind=data["kind"],
        user_id=data["id"],
        tenant_id=data.get("tenant"),
        roles=frozenset(data.get("roles", [])),
    )


def actor_from_claims(claims: dict[str, Any]) -> Actor:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise AuthError("token 'sub' must be a non-empty string")
    kind = claims.get("kind", "user")
    if kind not in _KINDS:
        raise AuthError(f"token 'kind' must be one of {', '.join(_KINDS)}")
    tenant = claims.get("tenant")
    if tenant is not None and not isinstance(tenant, str):
        raise AuthError("token 'tenant' must be a string")
    roles = claims.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise AuthError("token 'roles' must be a list of strings")
    if any("\x00" in text for text in (sub, tenant or "", *roles)):
        raise AuthError("token claims must not contain U+0000")  # no store can hold it
    return Actor(kind=kind, user_id=sub, tenant_id=tenant, roles=frozenset(roles))


def mint_token(
    secret: str,
    *,
    sub: str,
    tenant: str | None = None,
    roles: Sequence[str] = (),
    kind: ActorKind = "user",
    ttl: float = 3600.0,
    issuer: str | None = None,
    audience: str | None = None,
    algorithm: str = "HS256",
) -> str:
    """A signed token for development and tests (``oprunner token``). Not a login system."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": sub,
        "kind": kind,
        "roles": list(roles),
        "iat": now,
        "exp": now + int(ttl),
    }
    if tenant is not None:
        claims["tenant"] = tenant
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm=algorithm)
