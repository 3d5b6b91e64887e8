"""Authentication: a verified JWT becomes an ``Actor``. The actor never comes from command data."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import jwt
import orjson

from .envelope import CommandEnvelope
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
MAX_CLAIM_CHARS = 256
"""``sub``, ``tenant``, each role and each operation: ids, not documents. A longer one is
refused at the door rather than met later as an index-row limit in the store."""
MAX_LIST_CLAIM = 64
COMMAND_KEY_ID = "oprunner-command"
"""The ``kid`` of a one-command token (``CommandSigner``): verified with the command key."""
RESERVED_PREFIXES = ("oprunner-", "op:")
"""Subjects of the runner's own identities (``oprunner-webhooks``, a follow-up's
``op:<operation>``): only a service token signed with the command key may name them, since
runs, their visibility and their keys are scoped by subject."""


def reserved(subject: str) -> bool:
    """Whether ``subject`` names one of the runner's own identities (``RESERVED_PREFIXES``),
    or looks like one to a reader: compared after NFKC, in any case, with every dash as ``-``
    and without spaces or invisible characters, so ``OPRUNNER-webhooks``, `` op:x`` and a
    non-breaking hyphen are reserved too (each would read as the runner in an audit)."""
    folded = unicodedata.normalize("NFKC", subject).casefold()
    kept = (
        "-" if unicodedata.category(c) == "Pd" else c
        for c in folded
        if not c.isspace() and unicodedata.category(c) not in ("Cc", "Cf")
    )
    return "".join(kept).startswith(RESERVED_PREFIXES)


def command_digest(command: CommandEnvelope) -> str:
    """SHA-256 of what a command asks for, as canonical JSON (sorted keys): its operation,
    version, idempotency key and data. What a one-command token binds (with the id), and what
    the executor recomputes from the message it received: the same token on a message with
    another key would otherwise be a new run, or take a genuine command's key."""
    asked = {
        "type": command.type,
        "opversion": command.opversion,
        "key": command.idempotency_key,
        "data": command.data,
    }
    try:
        raw = orjson.dumps(asked, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # what orjson refuses (ints past 64 bits) the stdlib takes
        raw = json.dumps(asked, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True, slots=True)
class Binding:
    """The one command a token authorizes: its id and the digest of what it asks for; for a
    follow-up also the command that sent it (``cause``), its correlation (``corr``), and how
    many sends deep it is (``depth``), so a lifted token cannot restate its lineage."""

    command_id: str
    digest: str
    cause: str | None = None
    corr: str | None = None
    depth: int = 0

    def admits(self, command: CommandEnvelope) -> bool:
        if self.cause is not None and command.causationid != self.cause:
            return False
        if self.corr is not None and command.correlation_id != self.corr:
            return False
        return command.id == self.command_id and hmac.compare_digest(command_digest(command), self.digest)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is acting: from the verified claims ``sub``, ``tenant``, ``roles`` and ``kind``.

    ``ops`` (claim ``ops``), when set, lists the only operations the token may run; the policy
    check denies the rest. ``bound`` (claims ``cmd`` and ``dh``) ties the token to one
    command: the executor denies any other command id or any other data.
    """

    kind: ActorKind
    user_id: str
    tenant_id: str | None = None
    roles: frozenset[str] = field(default_factory=frozenset)
    ops: frozenset[str] | None = None
    bound: Binding | None = None

    def audit(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "id": self.user_id,
            "tenant": self.tenant_id,
            "roles": sorted(self.roles),
        }
        if self.ops is not None:
            out["ops"] = sorted(self.ops)
        if self.bound is not None:
            out["bound"] = {"command": self.bound.command_id, "digest": self.bound.digest}
        return out


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
        command_key: bytes | None = None,
    ) -> None:
        if (secret is None) == (public_key is None):
            raise ValueError("configure exactly one of a JWT secret or a JWT public key")
        self._key: Any = secret if secret is not None else public_key
        self._algorithms = ["HS256"] if secret is not None else _ASYMMETRIC
        self._command_key = command_key
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._max = max_token_bytes
        # Producers reuse one token for many commands; verifying it once per expiry saves
        # the HMAC/RSA check on the hot path. Bounded, and keyed by the exact token string.
        self._cache: dict[str, tuple[Actor, float]] = {}
        self._cache_size = cache_size
        # In front of it, the same tokens by their exact spelling: a producer sends the same
        # string every time, and a dict lookup of it skips normalising the signature. Only
        # what verified (or matched a verified token) enters it, and it is bounded the same.
        self._exact: dict[str, tuple[Actor, float]] = {}

    def authenticate(self, token: str) -> Actor:
        """Verify ``token``; a token verified before is served from a cache until it expires."""
        if len(token) > self._max:
            raise AuthError(f"token longer than {self._max} bytes")
        now = time.time()
        exact = self._exact.get(token)
        if exact is not None and exact[1] > now:
            return exact[0]
        cache_key = _cache_key(token)
        cached = self._cache.get(cache_key)
        if cached is not None and cached[1] > now:
            self._remember(self._exact, token, cached)
            return cached[0]
        one_command = _key_id(token) == COMMAND_KEY_ID
        if one_command and self._command_key is None:
            raise AuthError("one-command tokens are not accepted here")
        key: Any = self._command_key if one_command else self._key
        options: dict[str, Any] = {
            "require": ["exp", "sub", "cmd", "dh", "ops"] if one_command else ["exp", "sub"],
            "verify_aud": self._audience is not None and not one_command,
        }
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["HS256"] if one_command else self._algorithms,
                issuer=None if one_command else self._issuer,
                audience=None if one_command else self._audience,
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
        except (jwt.PyJWTError, ValueError, TypeError):
            # PyJWTError, not only InvalidTokenError: a token naming an algorithm of another
            # key type (ES256 against an RSA key) raises InvalidKeyError, which is not one
            raise AuthError("token invalid") from None
        actor = actor_from_claims(claims)
        if reserved(actor.user_id) and not (one_command and actor.kind == "service"):
            # the runner's own identities: an ordinary token naming one would see their runs
            raise AuthError(f"token 'sub' {actor.user_id[:64]!r} names an identity reserved to the runner")
        # Valid until exp (minus nothing: the leeway only ever widens acceptance at the edge).
        entry = (actor, float(claims["exp"]))
        self._remember(self._cache, cache_key, entry)
        self._remember(self._exact, token, entry)
        return actor

    def _remember(self, cache: dict[str, tuple[Actor, float]], key: str, entry: tuple[Actor, float]) -> None:
        if key not in cache and len(cache) >= self._cache_size:
            cache.pop(next(iter(cache)))  # oldest first: a bounded FIFO
        cache[key] = entry


def _key_id(token: str) -> Any:
    try:
        return jwt.get_unverified_header(token).get("kid")
    except (jwt.InvalidTokenError, ValueError, TypeError, AttributeError):
        return None  # decode() then gives the precise reason


def _cache_key(token: str) -> str:
    """What one token is, whatever its spelling: the signed part and the signature's bytes.

    Base64url has more than one spelling for the same bytes (unused trailing bits, padding),
    so keying the cache on the raw string would let variants of one token fill it. The signed
    part cannot vary without breaking the signature, so only the signature is normalised.
    """
    signed, _, signature = token.rpartition(".")
    try:
        raw = jwt.utils.base64url_decode(signature.encode("ascii"))
    except (ValueError, UnicodeEncodeError, TypeError):
        return token  # not valid base64url: decode() refuses it and nothing is cached
    return f"{signed}.{raw.hex()}"


def actor_from_audit(data: dict[str, Any] | None) -> Actor | None:
    """The actor ``Actor.audit()`` wrote (kept by this runner, never taken from a message)."""
    if data is None:
        return None
    bound = data.get("bound")
    return Actor(
        kind=data["kind"],
        user_id=data["id"],
        tenant_id=data.get("tenant"),
        roles=frozenset(data.get("roles", [])),
        ops=None if data.get("ops") is None else frozenset(data["ops"]),
        bound=None if bound is None else Binding(bound["command"], bound["digest"]),
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
    roles = _strings(claims.get("roles", []), "roles")
    ops = None if claims.get("ops") is None else _strings(claims["ops"], "ops")
    texts = (sub, tenant or "", *roles, *(ops or ()))
    if any(len(text) > MAX_CLAIM_CHARS for text in texts):
        raise AuthError(f"token claims must be at most {MAX_CLAIM_CHARS} characters each")
    if any("\x00" in text for text in texts):
        raise AuthError("token claims must not contain U+0000")  # no store can hold it
    bound = None
    if "cmd" in claims or "dh" in claims:
        cmd, digest = claims.get("cmd"), claims.get("dh")
        if not isinstance(cmd, str) or not isinstance(digest, str) or len(cmd) > 1024 or len(digest) != 64:
            raise AuthError("token 'cmd' and 'dh' must name one command and its data digest")
        cause, corr, depth = claims.get("cause"), claims.get("corr"), claims.get("depth", 0)
        lineage = (cause is None or isinstance(cause, str)) and (corr is None or isinstance(corr, str))
        if not lineage or not isinstance(depth, int) or isinstance(depth, bool) or not 0 <= depth <= 1000:
            raise AuthError("token 'cause', 'corr' and 'depth' must be strings and a small count")
        bound = Binding(cmd, digest, cause, corr, depth)
    return Actor(
        kind=kind,
        user_id=sub,
        tenant_id=tenant,
        roles=frozenset(roles),
        ops=None if ops is None else frozenset(ops),
        bound=bound,
    )


def _strings(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AuthError(f"token {name!r} must be a list of strings")
    if len(value) > MAX_LIST_CLAIM:
        raise AuthError(f"token {name!r} must have at most {MAX_LIST_CLAIM} entries")
    return value


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
    ops: Iterable[str] | None = None,
) -> str:
    """A signed token for development and tests (``oprunner token``). Not a login system.
    ``ops`` restricts it to those operations."""
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
    if ops is not None:
        claims["ops"] = sorted(ops)
    return jwt.encode(claims, secret, algorithm=algorithm)


def command_key(jwt_secret: str | None, command_secret: str | None) -> bytes | None:
    """The key one-command tokens are signed with: its own secret when configured, else one
    derived from the JWT secret (so it never equals a key that signs ordinary tokens)."""
    if command_secret is not None:
        return command_secret.encode()
    if jwt_secret is not None:
        return hmac.new(jwt_secret.encode(), b"oprunner one-command tokens", hashlib.sha256).digest()
    return None


class CommandSigner:
    """Mints the credential for a command this runner makes (a webhook's, say): a token that
    authorizes that one command and nothing else, so lifting it from the topic gains nothing.

    It names the command's id, the digest of its data and its one operation; the executor
    denies it for any other command. Its lifetime (``ttl``) only bounds how long the command
    may wait in the topic, since the one thing it can do is run that command again, which
    the idempotency key turns into a replay of the stored result.
    """

    def __init__(self, key: bytes, *, subject: str, ttl: float) -> None:
        self._key = key
        self._subject = subject
        self._ttl = ttl

    def token_for(
        self,
        command: CommandEnvelope,
        *,
        subject: str | None = None,
        tenant: str | None = None,
        depth: int | None = None,
    ) -> str:
        """``subject`` names who makes the command (default: this signer's); ``tenant`` is
        the tenant it acts in, and ``depth`` how many sends deep it is (a follow-up's: its
        parent's tenant, its parent's depth and one). A command with a ``causationid`` gets
        it and its correlation id bound too."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": subject or self._subject,
            "kind": "service",
            "ops": [command.type],
            "cmd": command.id,
            "dh": command_digest(command),
            "iat": now,
            "exp": now + int(self._ttl),
        }
        if tenant is not None:
            claims["tenant"] = tenant
        if command.causationid is not None:
            claims["cause"], claims["corr"] = command.causationid, command.correlation_id
        if depth is not None:
            claims["depth"] = depth
        return jwt.encode(claims, self._key, algorithm="HS256", headers={"kid": COMMAND_KEY_ID})

    def derive(self, text: str) -> str:
        """A value only this signer's key can compute from ``text`` (HMAC-SHA256, hex): what a
        follow-up's ids are made of, so nobody can claim one before it is sent."""
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()
