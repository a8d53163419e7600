"""Who is on the other end of a socket: API keys (hashed, from a file) or JWTs (HS256 secret, RS256/ES256 JWKS).

The identity a principal maps to scopes everything a user owns: request ids, stored results, resumable sessions,
connection and in-flight limits. Failures carry a metric reason and a message safe to send to the client; neither
ever contains the token, a key or a claim value.

`python -m rtai_gateway.auth IDENTITY` prints a new API key and the line to add to the keys file.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from rtai_gateway.settings import AuthSettings
from rtai_telemetry.logging import get_logger

log = get_logger("rtai_gateway.auth")

SUBPROTOCOL = "rtai.v1"
"""The one subprotocol the server echoes; a token offered as `bearer.<token>` is never echoed back."""
BEARER_PREFIX = "bearer."
HS_ALGORITHMS = ("HS256",)
JWKS_ALGORITHMS = ("RS256", "ES256")
_SAFE = re.compile(r"^[A-Za-z0-9._@+\-]{1,128}$")


class AuthError(Exception):
    """Credentials refused. `reason` is a metric label; the message is safe for the client (no token, no claims)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    tenant: str | None = None

    @property
    def identity(self) -> str:
        return identity_of(self.subject, self.tenant)


def identity_of(subject: str, tenant: str | None = None) -> str:
    """`subject` or `tenant:subject`. Parts outside a safe alphabet (braces would break the Redis hash tag of the
    user's keys; a tenant named `anon` would look like an anonymous identity) become a stable hash instead."""
    parts = [tenant, subject] if tenant is not None else [subject]
    if all(_SAFE.match(p) for p in parts) and tenant != "anon":
        return ":".join(parts)
    return "h:" + hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def hash_key(key: str) -> str:
    """API keys are random and long, so one SHA-256 suffices (a slow password hash would only cost CPU per connect)."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_identity(text: str) -> Principal:
    tenant, sep, subject = text.rpartition(":")
    return Principal(subject=subject, tenant=tenant if sep else None)


class _Watched:
    """A file parsed again whenever its modification time changes (rotated Secrets take effect without a restart).

    A file that cannot be read or parsed after startup (mid-rotation: a Secret's symlinks being swapped, a file half
    written) keeps the last good value, and is tried again at the next connection: every handshake meanwhile would
    otherwise fail with an internal error."""

    def __init__(self, path: Path, parse: Any) -> None:
        self._path = path
        self._parse = parse
        self._mtime: int | None = self._path.stat().st_mtime_ns  # before reading: a change meanwhile is read again
        self._value: Any = self._parse(self._path.read_text())  # fail fast at startup on a missing or bad file
        self._failing: str | None = None

    def get(self) -> Any:
        try:
            mtime = self._path.stat().st_mtime_ns
            if mtime != self._mtime:
                self._value = self._parse(self._path.read_text())
                self._mtime = mtime
            self._failing = None
        except Exception as e:  # missing, unreadable or malformed: each parser raises its own errors
            if str(e) != self._failing:  # once per problem, not once per handshake
                self._failing = str(e)
                log.warning("auth.file_unreadable", path=str(self._path), error=str(e)[:200])
        return self._value


def _parse_keys(text: str) -> dict[str, Principal]:
    out: dict[str, Principal] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2 or not re.fullmatch(r"[0-9a-f]{64}", fields[0]):
            raise ValueError(f"api keys file line {n}: expected `<sha256 hex> <identity>`")
        out[fields[0]] = parse_identity(fields[1])
    return out


def _parse_jwks(text: str) -> dict[str | None, jwt.PyJWK]:
    keys: dict[str | None, jwt.PyJWK] = {}
    for key in jwt.PyJWKSet.from_dict(json.loads(text)).keys:
        if key.algorithm_name not in JWKS_ALGORITHMS:
            raise ValueError(f"JWKS key {key.key_id!r}: algorithm {key.algorithm_name} is not one of {JWKS_ALGORITHMS}")
        keys[key.key_id] = key
    if not keys:
        raise ValueError("JWKS file has no keys")
    return keys


class Authenticator:
    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self.mode = settings.mode
        self._keys: _Watched | None = None
        self._jwks: _Watched | None = None
        if self.mode == "api_key":
            assert settings.api_keys_file is not None
            self._keys = _Watched(settings.api_keys_file, _parse_keys)
        elif self.mode == "jwt" and settings.jwt.jwks_file is not None:
            self._jwks = _Watched(settings.jwt.jwks_file, _parse_jwks)

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def authenticate(self, token: str) -> Principal:
        if self.mode == "api_key":
            return self._api_key(token)
        if self.mode == "jwt":
            return self._jwt(token)
        raise AuthError("disabled", "authentication is off on this gateway")

    def _api_key(self, token: str) -> Principal:
        assert self._keys is not None
        # Looking up the key's hash leaks nothing useful through timing: an attacker learns at most about a hash.
        principal: Principal | None = self._keys.get().get(hash_key(token))
        if principal is None:
            raise AuthError("bad_key", "unknown API key")
        return principal

    def _jwt(self, token: str) -> Principal:
        s = self.settings.jwt
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise AuthError("malformed", "the token is not a JWT") from e
        alg = header.get("alg")
        key: Any
        if self._jwks is None:
            assert s.secret is not None
            allowed: Sequence[str] = HS_ALGORITHMS
            key = s.secret.get_secret_value()
        else:
            allowed = JWKS_ALGORITHMS
            keys: dict[str | None, jwt.PyJWK] = self._jwks.get()
            kid = header.get("kid")
            jwk = keys.get(kid)
            if jwk is None and kid is None and len(keys) == 1:
                jwk = next(iter(keys.values()))
            if jwk is None:
                raise AuthError("unknown_key", "the token's key id is not trusted")
            if jwk.algorithm_name != alg:
                raise AuthError("algorithm", "the token's algorithm does not match its key")
            key = jwk.key
        # The accepted algorithms come from our configuration, never from the token: no alg=none, no HS/RS confusion.
        if not isinstance(alg, str) or alg not in allowed:
            raise AuthError("algorithm", f"tokens must be signed with one of {', '.join(allowed)}")
        required = ["exp", s.subject_claim]
        required += [claim for claim, wanted in (("aud", s.audience), ("iss", s.issuer)) if wanted]
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=s.audience,
                issuer=s.issuer,
                leeway=s.leeway_s,
                options={"require": required},
            )
        except jwt.ExpiredSignatureError as e:
            raise AuthError("expired", "the token has expired") from e
        except jwt.ImmatureSignatureError as e:
            raise AuthError("not_yet_valid", "the token is not valid yet") from e
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError) as e:
            raise AuthError("audience", "the token was issued for another audience or by another issuer") from e
        except jwt.MissingRequiredClaimError as e:
            raise AuthError("claims", f"the token lacks the {e.claim!r} claim") from e
        except jwt.PyJWTError as e:
            raise AuthError("invalid", "the token's signature or claims are invalid") from e
        return self._principal(claims)

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        s = self.settings.jwt
        subject = claims.get(s.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise AuthError("claims", f"the {s.subject_claim!r} claim must be a non-empty string")
        tenant = None
        if s.tenant_claim is not None:
            tenant = claims.get(s.tenant_claim)
            if not isinstance(tenant, str) or not tenant:
                raise AuthError("claims", f"the {s.tenant_claim!r} claim must be a non-empty string")
        return Principal(subject=subject, tenant=tenant)


def token_from_handshake(
    subprotocols: Sequence[str], headers: Mapping[str, str], query: Mapping[str, str], *, allow_query: bool
) -> str | None:
    """A token from `Sec-WebSocket-Protocol: rtai.v1, bearer.<token>` (browsers), `Authorization: Bearer <token>`
    (other clients), or `?access_token=` only when explicitly allowed."""
    for proto in subprotocols:
        if proto.startswith(BEARER_PREFIX) and len(proto) > len(BEARER_PREFIX):
            return proto[len(BEARER_PREFIX) :]
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() in ("bearer", "apikey") and value.strip():
        return value.strip()
    if allow_query and query.get("access_token"):
        return query["access_token"]
    return None


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python -m rtai_gateway.auth IDENTITY   (subject or tenant:subject)\n")
        return 2
    principal = parse_identity(argv[0])
    key = "rtai_" + secrets.token_urlsafe(32)
    sys.stdout.write(f"key (give to the client, store nowhere else): {key}\n")
    sys.stdout.write(f"line for the keys file: {hash_key(key)} {principal.identity}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
