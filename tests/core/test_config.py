from __future__ import annotations

from pathlib import Path

import pytest

from coordd.config import ConfigError, load


def test_defaults_without_anything() -> None:
    cfg = load(None, {}, {})
    assert cfg.stale_threshold == 300 and cfg.heartbeat_interval == 60
    assert cfg.ai_provider == "ollama" and cfg.fsync == "always"
    assert cfg.coordination_dir == "coordination"
    assert cfg.control_socket.endswith("coordination/run/control.sock")


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(
        'stale_threshold = 100\nrecovery = "fail"\nai_provider = "claude"\n'
        '[work_types.deploy]\nstale_threshold = 30\nrecovery = "retry"\n'
    )
    cfg = load(str(f), {}, {})
    assert (cfg.stale_threshold, cfg.recovery, cfg.ai_provider) == (100, "fail", "claude")
    assert cfg.work_types["deploy"].stale_threshold == 30
    cfg = load(str(f), {"STALE_THRESHOLD": "50", "AI_PROVIDER": "auto"}, {})
    assert cfg.stale_threshold == 50 and cfg.ai_provider == "auto"
    cfg = load(str(f), {"STALE_THRESHOLD": "50", "COORDD_STALE_THRESHOLD": "40"}, {})
    assert cfg.stale_threshold == 40
    cfg = load(str(f), {"STALE_THRESHOLD": "50"}, {"stale_threshold": 7.0})
    assert cfg.stale_threshold == 7


def test_legacy_variables(tmp_path: Path) -> None:
    env = {
        "COORDINATION_DIR": str(tmp_path),
        "AGENT_ID": "agent_1",
        "HEARTBEAT_INTERVAL": "15",
        "OLLAMA_HOST": "http://127.0.0.1:9",
    }
    cfg = load(None, env, {})
    assert cfg.coordination_dir == str(tmp_path) and cfg.state_dir == str(tmp_path)
    assert cfg.agent_id == "agent_1" and cfg.heartbeat_interval == 15
    assert cfg.ollama_host == "http://127.0.0.1:9"
    assert cfg.control_socket == str(tmp_path / "run" / "control.sock")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"AI_PROVIDER": "gpt"}, "ai_provider must be one of ollama, claude, auto; got 'gpt'"),
        ({"COORDD_FSYNC": "sometimes"}, "fsync must be one of always, everysec, never"),
        ({"COORDD_RECOVERY": "pray"}, "recovery must be one of reassign, retry, fail, none"),
        ({"STALE_THRESHOLD": "-5"}, "stale_threshold must be > 0"),
        ({"STALE_THRESHOLD": "soon"}, "stale_threshold"),
    ],
)
def test_invalid_values_name_key_and_allowed(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as e:
        load(None, env, {})
    assert needle in str(e.value)


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("stale_treshold = 5\n")
    with pytest.raises(ConfigError, match="stale_treshold"):
        load(str(f), {}, {})


def test_too_long_socket_path_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="set run_dir"):
        load(None, {"COORDINATION_DIR": "/tmp/" + "x" * 120}, {})


def test_check_config_masks_the_api_key(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "ANTHROPIC_API_KEY": "sk-ant-secret-123",
        "COORDINATION_DIR": str(tmp_path),
    }
    env.pop("COORDD_CONFIG", None)
    coordd = Path(sys.executable).parent / "coordd"
    r = subprocess.run([str(coordd), "check-config"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "sk-ant-secret-123" not in r.stdout
    assert "anthropic_api_key = '<set>'" in r.stdout
