"""JWT verification: only well-signed, current tokens for this issuer/audience become actors."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from runner import AuthError, CommandEnvelope, JwtAuthenticator, mint_token
from runner.auth import COMMAND_KEY_ID, CommandSigner, actor_from_audit, bearer, command_key

SECRET = "a-secret-that-is-long-enough-for-hs256!!"


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "tenant": "t1", "roles": ["ops"], "exp": now + 60, **over}


def test_valid_token_gives_the_actor() -> None:
    actor = JwtAuthenticator(secret=SECRET).authenticate(
        mint_token(SECRET, sub="alice", tenant="t1", roles=["ops"])
    )
    assert (actor.kind, actor.user_id, actor.tenant_id, actor.roles) == (
        "user",
        "alice",
        "t1",
        frozenset({"ops"}),
    )


DROP = object()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"exp": -3600}, "expired"),
        ({"nbf": 3600}, "not yet valid"),
        ({"exp": DROP}, "'exp'"),
        ({"sub": DROP}, "'sub'"),
        ({"sub": ""}, "sub"),
        ({"kind": "root"}, "kind"),
        ({"roles": "admin"}, "roles"),
        ({"tenant": 7}, "tenant"),
    ],
)
def test_bad_claims_are_refused(changes: dict[str, Any], reason: str) -> None:
    """``exp``/``nbf`` in ``changes`` are seconds from now, computed when the test runs."""
    now = int(time.time())
    claims = _claims()
    for name, value in changes.items():
        if value is DROP:
            claims.pop(name)
        elif name in ("exp", "nbf"):
            claims[name] = now + value
        else:
            claims[name] = value
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match=reason):
        JwtAuthenticator(secret=SECRET).authenticate(token)


def test_issuer_and_audience_are_checked_when_configured() -> None:
    auth = JwtAuthenticator(secret=SECRET, issuer="https://idp", audience="oprunner")
    good = jwt.encode(_claims(iss="https://idp", aud="oprunner"), SECRET, algorithm="HS256")
    assert auth.authenticate(good).user_id == "alice"
    with pytest.raises(AuthError, match="issuer"):
        auth.authenticate(jwt.encode(_claims(iss="https://evil", aud="oprunner"), SECRET, algorithm="HS256"))
    with pytest.raises(AuthError, match="audience"):
        auth.authenticate(jwt.encode(_claims(iss="https://idp", aud="other"), SECRET, algorithm="HS256"))


def test_wrong_secret_and_garbage_are_invalid() -> None:
    auth = JwtAuthenticator(secret=SECRET)
    with pytest.raises(AuthError, match="invalid"):
        auth.authenticate(jwt.encode(_claims(), "another-secret-another-secret-another", algorithm="HS256"))
    with pytest.raises(AuthError):
        auth.authenticate("a.b.c")


def test_alg_none_is_refused() -> None:
    token = jwt.encode(_claims(), None, algorithm="none")
    with pytest.raises(AuthError):
        JwtAuthenticator(secret=SECRET).authenticate(token)


def test_huge_token_is_refused_before_decoding() -> None:
    with pytest.raises(AuthError, match="longer than"):
        JwtAuthenticator(secret=SECRET).authenticate("x" * 1_000_000)


def _rsa() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def test_rs256_works_and_algorithm_confusion_is_refused() -> None:
    private, public = _rsa()
    auth = JwtAuthenticator(public_key=public)
    assert auth.authenticate(jwt.encode(_claims(), private, algorithm="RS256")).user_id == "alice"
    # HS256 "signed" with the public key as the HMAC secret: the classic confusion attack
    import hashlib
    import hmac
    import json
    from base64 import urlsafe_b64encode

    def b64(b: bytes) -> bytes:
        return urlsafe_b64encode(b).rstrip(b"=")

    signing = (
        b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + b"." + b64(json.dumps(_claims()).encode())
    )
    forged = signing + b"." + b64(hmac.new(public.encode(), signing, hashlib.sha256).digest())
    with pytest.raises(AuthError):
        auth.authenticate(forged.decode())


def test_exactly_one_key_is_required() -> None:
    with pytest.raises(ValueError):
        JwtAuthenticator()
    with pytest.raises(ValueError):
        JwtAuthenticator(secret="a", public_key="b")


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        (b"Bearer x", "x"),
        ("Basic abc", None),
        ("Bearer ", None),
        (None, None),
    ],
)
def test_bearer_header(header: Any, token: str | None) -> None:
    assert bearer(header) == token


# -- one-command tokens, operation limits, claim sizes, the cache -------------------------

KEY = command_key(SECRET, None)


def _signer() -> CommandSigner:
    assert KEY is not None
    return CommandSigner(KEY, subject="oprunner-webhooks", ttl=600)


def _command(id: str = "stripe:evt_1", data: Any = None, **ext: Any) -> CommandEnvelope:
    fields: dict[str, Any] = {
        "type": "billing.recordPayment",
        "source": "oprunner.webhooks.stripe",
        "idempotencykey": "stripe:evt_1",
        **ext,
    }
    return CommandEnvelope(id=id, data=data, **fields)


def test_a_one_command_token_names_its_command_and_nothing_else() -> None:
    data = {"invoiceId": "inv_1", "amount": "25.00", "failureCode": None}
    token = _signer().token_for(_command(data=data))
    actor = JwtAuthenticator(secret=SECRET, command_key=KEY).authenticate(token)
    assert (actor.kind, actor.user_id, actor.ops) == (
        "service",
        "oprunner-webhooks",
        {"billing.recordPayment"},
    )
    assert actor.bound is not None
    assert actor.bound.admits(_command(data=dict(reversed(data.items()))))  # key order is not meaning
    assert actor.bound.admits(_command(data=data, source="anyone", correlationid="c"))  # not asked for
    assert not actor.bound.admits(_command("stripe:evt_2", data))
    assert not actor.bound.admits(_command(data={**data, "invoiceId": "inv_2"}))
    assert not actor.bound.admits(_command(data={**data, "extra": 1}))
    # another key would be a new run, or take a genuine command's key; another version or
    # operation asks for something else
    assert not actor.bound.admits(_command(data=data, idempotencykey="x1"))
    assert not actor.bound.admits(_command(data=data, idempotencykey="stripe:evt_2"))
    assert not actor.bound.admits(_command(data=data, opversion="2.0.0"))
    assert not actor.bound.admits(_command(data=data, type="billing.refundPayment"))
    # the audit carries the binding, and an actor restored from it keeps it
    assert actor_from_audit(actor.audit()) == actor


def test_one_command_tokens_are_verified_with_their_own_key_only() -> None:
    token = _signer().token_for(_command("c1", {}, type="op.a"))
    with pytest.raises(AuthError, match="not accepted here"):
        JwtAuthenticator(secret=SECRET).authenticate(token)  # no command key configured
    # the command key is not the JWT secret: a token signed with the JWT secret that claims
    # the command key id fails, and the command key cannot mint an unbound identity
    forged = jwt.encode(_claims(kind="admin"), SECRET, headers={"kid": COMMAND_KEY_ID})
    with pytest.raises(AuthError, match="invalid"):
        JwtAuthenticator(secret=SECRET, command_key=KEY).authenticate(forged)
    unbound = jwt.encode(_claims(kind="admin"), KEY, headers={"kid": COMMAND_KEY_ID})  # type: ignore[arg-type]
    with pytest.raises(AuthError, match="lacks"):
        JwtAuthenticator(secret=SECRET, command_key=KEY).authenticate(unbound)


def test_an_own_command_secret_replaces_the_derived_key() -> None:
    own = "a-command-token-secret-of-32-bytes-or-more"
    assert command_key(SECRET, own) == own.encode()
    assert command_key(SECRET, None) != SECRET.encode()
    assert command_key(None, None) is None


@pytest.mark.parametrize(
    "sub",
    [
        "oprunner-webhooks",
        "oprunner-followups",
        "op:billing.capture",
        "op:",
        # what reads as the runner's own in an audit or the console (an outsider's review)
        "OPRUNNER-webhooks",
        "Op:billing.capturePayment",
        " op:x",
        "oprunner\u2011webhooks",  # a non-breaking hyphen
        "\u200boprunner-webhooks",  # a zero-width space first
        "\uff4fp:x",  # a fullwidth o
    ],
)
def test_the_runners_own_identities_are_reserved(sub: str) -> None:
    """Runs are scoped by subject: a token minted outside the runner (of any kind), or one
    signed with the command key that is not a service's, cannot name the runner's own."""
    auth = JwtAuthenticator(secret=SECRET, command_key=KEY)
    for kind in ("user", "service", "admin"):
        with pytest.raises(AuthError, match="reserved"):
            auth.authenticate(mint_token(SECRET, sub=sub, kind=kind))  # type: ignore[arg-type]
    bound = {"cmd": "c1", "dh": "0" * 64, "ops": ["op.a"]}
    as_user = jwt.encode({**_claims(sub=sub, kind="user"), **bound}, KEY, headers={"kid": COMMAND_KEY_ID})  # type: ignore[arg-type]
    with pytest.raises(AuthError, match="reserved"):
        auth.authenticate(as_user)
    # what the runner mints itself passes, and a look-alike subject is nobody's
    minted = CommandSigner(KEY, subject=sub, ttl=600).token_for(_command("c1", {}, type="op.a"))  # type: ignore[arg-type]
    assert auth.authenticate(minted).user_id == sub
    assert auth.authenticate(mint_token(SECRET, sub=f"x{sub.strip()}")).user_id == f"x{sub.strip()}"


def test_ops_claim_limits_the_actor() -> None:
    actor = JwtAuthenticator(secret=SECRET).authenticate(mint_token(SECRET, sub="robot", ops=["a.b", "c.d"]))
    assert actor.ops == {"a.b", "c.d"}
    assert JwtAuthenticator(secret=SECRET).authenticate(mint_token(SECRET, sub="x")).ops is None
    with pytest.raises(AuthError, match="'ops' must be a list"):
        JwtAuthenticator(secret=SECRET).authenticate(jwt.encode(_claims(ops="a.b"), SECRET))


@pytest.mark.parametrize(
    "changes",
    [
        {"sub": "s" * 257},
        {"tenant": "t" * 257},
        {"roles": ["r" * 257]},
        {"roles": [f"r{i}" for i in range(65)]},
        {"ops": ["o" * 257]},
        {"cmd": "c", "dh": "short"},
    ],
)
def test_oversized_claims_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(AuthError):
        JwtAuthenticator(secret=SECRET).authenticate(jwt.encode(_claims(**changes), SECRET))


def test_variants_of_one_token_cannot_multiply_cache_entries() -> None:
    auth = JwtAuthenticator(secret=SECRET)
    token = mint_token(SECRET, sub="alice")
    auth.authenticate(token)
    variants = [token + junk for junk in ("A", "AA", "=", "==", "x" * 40)]
    for variant in variants:
        with contextlib.suppress(AuthError):
            auth.authenticate(variant)
    assert len(auth._cache) == 1


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA"])
def test_a_token_for_another_key_type_is_invalid_not_a_crash(algorithm: str) -> None:
    """PyJWT raises InvalidKeyError (not an InvalidTokenError) when the token names an
    algorithm of another key type: it must still be a plain 'token invalid'."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    _, public = _rsa()
    other = (
        ec.generate_private_key(ec.SECP256R1())
        if algorithm == "ES256"
        else ed25519.Ed25519PrivateKey.generate()
    )
    token = jwt.encode(_claims(), other, algorithm=algorithm)  # type: ignore[arg-type]
    with pytest.raises(AuthError, match="invalid"):
        JwtAuthenticator(public_key=public).authenticate(token)
