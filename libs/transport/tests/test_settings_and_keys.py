from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from rtai_transport import Keys, RedisSettings
from rtai_transport.client import connection_name
from rtai_transport.settings import unknown_env_vars


def test_sentinels_from_a_comma_separated_string() -> None:
    s = RedisSettings(sentinels="a:26379, b:26380")  # type: ignore[arg-type]
    assert s.sentinel_addresses() == [("a", 26379), ("b", 26380)]
    assert s.describe() == "sentinel:a:26379,b:26380/mymaster"
    v6 = RedisSettings(sentinels="[::1]:26379,fe80::1:26380")  # type: ignore[arg-type]
    assert v6.sentinel_addresses() == [("::1", 26379), ("fe80::1", 26380)]


def test_connection_names_hold_only_what_redis_accepts() -> None:
    assert connection_name("rtai-gateway", "gw-é 1", "framelog") == "rtai-gateway:gw-__1:framelog"
    assert connection_name("rtai-worker", "w\n1", "claims") == "rtai-worker:w_1:claims"


@pytest.mark.parametrize("bad", ["nohost", "a:", "a:port"])
def test_bad_sentinel_addresses_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        RedisSettings(sentinels=bad)  # type: ignore[arg-type]


def test_describe_never_shows_the_password() -> None:
    s = RedisSettings(url="redis://user:s3cret@redis:6379/0", password="s3cret")  # type: ignore[arg-type]
    assert "s3cret" not in s.describe()
    assert "s3cret" not in repr(s)


def test_every_key_is_under_the_prefix_and_session_keys_share_a_hash_tag() -> None:
    k = Keys("env1")
    names = [
        k.jobs("t"),
        k.dead_letters("t"),
        k.replies("g"),
        k.tasks,
        k.task_workers("t"),
        k.session_seq("s"),
        k.session_log("s"),
        k.session_meta("s"),
        k.session_inflight("s"),
        k.request("u", "r"),
        k.cancelled("j"),
        k.cancel_channel,
    ]
    assert all(n.startswith("env1:v1:") for n in names)
    assert {n.split("{")[1].split("}")[0] for n in names if "session" in n} == {"s"}


class _Inner(BaseModel):
    url: str = ""


class _Outer(BaseModel):
    port: int = 0
    redis: _Inner = _Inner()


def test_unknown_env_vars_are_found_nested_and_flat() -> None:
    env = {"X_PORT": "1", "X_REDIS__URL": "u", "X_REDIS__URLL": "typo", "X_PROT": "typo", "OTHER": "1"}
    assert unknown_env_vars("X_", _Outer, env) == ["X_PROT", "X_REDIS__URLL"]
