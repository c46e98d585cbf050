"""Security-related configuration: limits can only tighten the protocol's, CURVE rules."""

from __future__ import annotations

import pytest

from coordd import keys
from coordd.config import ConfigError, load


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("max_id_len", 201, "max_id_len must be <= 200"),
        ("max_description_len", 10_001, "max_description_len must be <= 10000"),
        ("max_batch", 100_001, "max_batch must be <= 100000"),
        ("max_id_len", 0, "max_id_len must be > 0"),
    ],
)
def test_limits_cannot_exceed_the_protocol(key: str, value: int, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load(None, {}, {key: value})


def test_limits_and_curve_keys_from_the_environment() -> None:
    cfg = load(
        None,
        {"COORDD_MAX_ID_LEN": "50", "COORDD_CURVE_DIR": "/k", "COORDD_REQUIRE_CURVE": "true"},
        {},
    )
    assert (cfg.max_id_len, cfg.curve_dir, cfg.require_curve) == (50, "/k", True)


@pytest.mark.parametrize(
    ("endpoint", "required", "wanted"),
    [
        ("ipc:///run/coordd/agents.sock", True, False),
        ("tcp://127.0.0.1:5555", False, False),
        ("tcp://localhost:5555", False, False),
        ("tcp://[::1]:5555", False, False),
        ("tcp://127.0.0.1:5555", True, True),
        ("tcp://0.0.0.0:5555", False, True),
        ("tcp://*:5555", False, True),
        ("tcp://eth0:5555", False, True),
        ("tcp://10.1.2.3:5555", False, True),
    ],
)
def test_which_endpoints_need_curve(endpoint: str, required: bool, wanted: bool) -> None:
    assert keys.curve_wanted(endpoint, required) is wanted
