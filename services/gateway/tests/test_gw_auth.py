"""Authentication: API keys from a hashed file, JWTs with HS256 or RS256/ES256 JWKS keys, and every refusal."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from rtai_gateway.auth import Authenticator, AuthError, hash_key, identity_of, main, token_from_handshake
from rtai_gateway.settings import AuthSettings

SECRET = "k" * 40


def hs_auth(**jwt_kw: Any) -> Authenticator:
    return Authenticator(AuthSettings(mode="jwt", jwt={"secret": SECRET, **jwt_kw}))


def claims(**kw: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "exp": now + 60, **kw}


def refused(auth: Authenticator, token: str) -> str:
    with pytest.raises(AuthError) as e:
        auth.authenticate(token)
    assert SECRET not in e.value.message
    assert token not in e.value.message
    return e.value.reason


def test_api_keys_are_looked_up_by_hash_and_the_file_is_reloaded(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# comment\n{hash_key('key-one')} alice\n{hash_key('key-two')} acme:bob  # trailing\n")
    auth = Authenticator(AuthSettings(mode="api_key", api_keys_file=keys))
    assert auth.authenticate("key-one").identity == "alice"
    assert auth.authenticate("key-two").identity == "acme:bob"
    assert refused(auth, "key-three") == "bad_key"
    keys.write_text(f"{hash_key('key-three')} carol\n")
    os.utime(keys, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert auth.authenticate("key-three").identity == "carol"
    assert refused(auth, "key-one") == "bad_key"


def test_a_keys_file_caught_mid_rotation_keeps_the_last_good_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{hash_key('key-one')} alice\n")
    auth = Authenticator(AuthSettings(mode="api_key", api_keys_file=keys))
    later = time.time_ns() + 10**9
    keys.write_text(f"{hash_key('key-two')[:20]}")  # half written
    os.utime(keys, ns=(later, later))
    assert auth.authenticate("key-one").identity == "alice"
    keys.unlink()  # a Secret's files being swapped
    assert auth.authenticate("key-one").identity == "alice"
    keys.write_text(f"{hash_key('key-two')} bob\n")
    os.utime(keys, ns=(later + 10**9, later + 10**9))
    assert auth.authenticate("key-two").identity == "bob"
    assert refused(auth, "key-one") == "bad_key"


def test_malformed_keys_file_fails_at_startup(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("plaintext-key alice\n")
    with pytest.raises(ValueError, match="line 1"):
        Authenticator(AuthSettings(mode="api_key", api_keys_file=keys))


def test_hs256_token_checks_exp_nbf_aud_iss() -> None:
    auth = hs_auth(audience="rtai", issuer="https://idp")
    good = jwt.encode(claims(aud="rtai", iss="https://idp"), SECRET, algorithm="HS256")
    assert auth.authenticate(good).identity == "alice"
    now = int(time.time())
    cases = {
        "expired": claims(aud="rtai", iss="https://idp", exp=now - 120),
        "not_yet_valid": claims(aud="rtai", iss="https://idp", nbf=now + 120),
        "audience": claims(aud="other", iss="https://idp"),
    }
    for reason, c in cases.items():
        assert refused(auth, jwt.encode(c, SECRET, algorithm="HS256")) == reason
    assert refused(auth, jwt.encode(claims(aud="rtai", iss="https://evil"), SECRET, algorithm="HS256")) == "audience"
    assert refused(auth, jwt.encode(claims(iss="https://idp"), SECRET, algorithm="HS256")) == "claims"  # no aud
    no_exp = {"sub": "alice", "aud": "rtai", "iss": "https://idp"}
    assert refused(auth, jwt.encode(no_exp, SECRET, algorithm="HS256")) == "claims"


def test_wrong_key_alg_none_and_garbage_are_refused() -> None:
    auth = hs_auth()
    assert refused(auth, jwt.encode(claims(), "x" * 40, algorithm="HS256")) == "invalid"
    unsigned = jwt.encode(claims(), None, algorithm="none")  # type: ignore[arg-type]
    assert refused(auth, unsigned) == "algorithm"
    assert refused(auth, jwt.encode(claims(), SECRET * 2, algorithm="HS512")) == "algorithm"
    assert refused(auth, "not.a.jwt") == "malformed"
    assert refused(auth, "garbage") == "malformed"


def test_tenant_claim_makes_tenant_scoped_identities() -> None:
    auth = hs_auth(tenant_claim="org")
    assert auth.authenticate(jwt.encode(claims(org="acme"), SECRET, algorithm="HS256")).identity == "acme:alice"
    assert refused(auth, jwt.encode(claims(), SECRET, algorithm="HS256")) == "claims"


def test_identities_that_could_break_keys_or_impersonate_anonymous_users_are_hashed() -> None:
    assert identity_of("alice") == "alice"
    assert identity_of("a}b").startswith("h:")
    assert identity_of("x", tenant="anon").startswith("h:")
    assert identity_of("a b") != identity_of("a  b")
    assert identity_of("a:b").startswith("h:")  # a colon in the subject must not fake a tenant


def _jwks_file(tmp_path: Path) -> tuple[Path, Any, Any]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_jwk = json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key()))
    ec_jwk = json.loads(ECAlgorithm.to_jwk(ec_key.public_key()))
    rsa_jwk.update(kid="r1", alg="RS256", use="sig")
    ec_jwk.update(kid="e1", alg="ES256", use="sig")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [rsa_jwk, ec_jwk]}))
    return path, rsa_key, ec_key


def test_rs256_and_es256_tokens_verify_against_the_jwks(tmp_path: Path) -> None:
    path, rsa_key, ec_key = _jwks_file(tmp_path)
    auth = Authenticator(AuthSettings(mode="jwt", jwt={"jwks_file": path}))
    rs = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "r1"})
    es = jwt.encode(claims(sub="bob"), ec_key, algorithm="ES256", headers={"kid": "e1"})
    assert auth.authenticate(rs).identity == "alice"
    assert auth.authenticate(es).identity == "bob"
    assert refused(auth, jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "zz"})) == "unknown_key"
    # A token naming the RSA key but signed with ES256 (or HS256 with the public key as secret: alg confusion).
    assert refused(auth, jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "r1"})) == "algorithm"
    assert refused(auth, jwt.encode(claims(), SECRET, algorithm="HS256", headers={"kid": "r1"})) == "algorithm"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert refused(auth, jwt.encode(claims(), other, algorithm="RS256", headers={"kid": "r1"})) == "invalid"


def test_token_sources_and_never_the_url_by_default() -> None:
    assert token_from_handshake(["rtai.v1", "bearer.abc"], {}, {}, allow_query=False) == "abc"
    assert token_from_handshake([], {"authorization": "Bearer xyz"}, {}, allow_query=False) == "xyz"
    assert token_from_handshake([], {"authorization": "ApiKey k1"}, {}, allow_query=False) == "k1"
    assert token_from_handshake([], {}, {"access_token": "q"}, allow_query=False) is None
    assert token_from_handshake([], {}, {"access_token": "q"}, allow_query=True) == "q"
    assert token_from_handshake(["rtai.v1", "bearer."], {"authorization": "Basic zz"}, {}, allow_query=False) is None


def test_settings_reject_placeholder_secrets_without_echoing_them() -> None:
    from pydantic import ValidationError

    from rtai_gateway.settings import GatewaySettings

    for bad in ("changeme", "tooshort-x1y2z3"):
        with pytest.raises(ValidationError) as e:
            GatewaySettings(auth={"mode": "jwt", "jwt": {"secret": bad}})
        assert bad not in str(e.value)
    with pytest.raises(ValidationError, match="exactly one"):
        GatewaySettings(auth={"mode": "jwt"})
    with pytest.raises(ValidationError, match="api_keys_file"):
        GatewaySettings(auth={"mode": "api_key"})


def test_keygen_prints_a_key_and_its_file_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["acme:bob"]) == 0
    out = capsys.readouterr().out.splitlines()
    key = out[0].rsplit(" ", 1)[1]
    line = out[1].split(": ", 1)[1]
    (tmp_path / "keys").write_text(line + "\n")
    auth = Authenticator(AuthSettings(mode="api_key", api_keys_file=tmp_path / "keys"))
    assert auth.authenticate(key).identity == "acme:bob"
