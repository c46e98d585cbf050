"""The systemd files: verified by systemd's own tools, without a running systemd."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: `make system-deps` installs it (package systemd)")
    return path


def _directives(unit: str) -> dict[str, str]:
    out = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key] = value
    return out


def test_systemd_analyze_verify_passes_without_warnings(tmp_path: Path) -> None:
    # verify insists that ExecStart's binary exists: the unit names the installed
    # /usr/bin/coordd, so check a copy that points at this checkout's coordd.
    unit = (SYSTEMD / "coordd.service").read_text()
    assert "ExecStart=/usr/bin/coordd run --config /etc/coordd/coordd.toml" in unit
    (tmp_path / "coordd.service").write_text(unit.replace("/usr/bin/coordd", str(BIN / "coordd")))
    r = subprocess.run(
        [_tool("systemd-analyze"), "verify", str(tmp_path / "coordd.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    # Unknown or misspelt keys are only warnings: none allowed.
    assert r.stderr.strip() == "", r.stderr


def test_the_unit_is_a_notify_service_with_watchdog_and_hardening() -> None:
    d = _directives((SYSTEMD / "coordd.service").read_text())
    assert d["Type"] == "notify" and d["NotifyAccess"] == "main"
    assert d["WatchdogSec"] and d["Restart"] == "on-failure"
    assert d["User"] == "coordd" and d["ExecReload"] == "kill -HUP $MAINPID"
    assert d["StateDirectory"] == d["RuntimeDirectory"] == d["ConfigurationDirectory"] == "coordd"
    assert d["RuntimeDirectoryMode"] == "0750"
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter": "@system-service",
    }.items():
        assert d[key] == value, key


def test_sysusers_and_tmpfiles_create_the_user_and_state_dir(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    r = subprocess.run(
        [_tool("systemd-sysusers"), f"--root={tmp_path}", str(SYSTEMD / "coordd.sysusers")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    (user,) = [line for line in passwd.splitlines() if line.startswith("coordd:")]
    uid, gid, home, shell = user.split(":")[2], user.split(":")[3], *user.split(":")[5:7]
    assert home == "/var/lib/coordd" and shell == "/usr/sbin/nologin"
    assert "coordd:x:" in (tmp_path / "etc" / "group").read_text()

    r = subprocess.run(
        [
            _tool("systemd-tmpfiles"),
            f"--root={tmp_path}",
            "--create",
            str(SYSTEMD / "coordd.tmpfiles"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    st = os.stat(tmp_path / "var" / "lib" / "coordd")
    assert (st.st_mode & 0o777, str(st.st_uid), str(st.st_gid)) == (0o750, uid, gid)


def test_systemd_analyze_security_rates_the_unit_well_hardened(tmp_path: Path) -> None:
    # Offline scoring (no running systemd needed). 1.5 today; above 1.6 ("OK" ends
    # at 4.9) means a hardening line was lost.
    unit = (SYSTEMD / "coordd.service").read_text()
    (tmp_path / "coordd.service").write_text(unit.replace("/usr/bin/coordd", str(BIN / "coordd")))
    r = subprocess.run(
        [
            _tool("systemd-analyze"),
            "security",
            "--offline=true",
            "--threshold=16",
            "--no-pager",
            str(tmp_path / "coordd.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr


def _web_unit_copy(tmp_path: Path) -> Path:
    """Both units, pointing at this checkout's coordd (verify wants ExecStart to exist)."""
    for name in ("coordd.service", "coordd-web.service"):
        text = (SYSTEMD / name).read_text().replace("/usr/bin/coordd", str(BIN / "coordd"))
        (tmp_path / name).write_text(text)
    return tmp_path / "coordd-web.service"


def test_the_web_unit_verifies_without_warnings(tmp_path: Path) -> None:
    unit = (SYSTEMD / "coordd-web.service").read_text()
    assert "ExecStart=/usr/bin/coordd web --config /etc/coordd/coordd.toml" in unit
    web = _web_unit_copy(tmp_path)
    r = subprocess.run(
        [_tool("systemd-analyze"), "verify", str(web), str(tmp_path / "coordd.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr


def test_the_web_unit_follows_coordd_and_is_hardened_like_it() -> None:
    web = _directives((SYSTEMD / "coordd-web.service").read_text())
    daemon = _directives((SYSTEMD / "coordd.service").read_text())
    assert web["After"] == "coordd.service" and web["User"] == "coordd"
    # Stopping the dashboard must not remove the daemon's sockets.
    assert "RuntimeDirectory" not in web
    assert web["StateDirectory"] == "coordd"  # its tokens, readable by the group
    hardening = {
        key
        for key in daemon
        if key.startswith(("Protect", "Private", "Restrict", "System", "Capability"))
        or key in ("NoNewPrivileges", "LockPersonality", "RemoveIPC", "KeyringMode")
    }
    assert hardening and {k: web.get(k) for k in hardening} == {k: daemon[k] for k in hardening}


def test_systemd_analyze_security_rates_the_web_unit_well_hardened(tmp_path: Path) -> None:
    web = _web_unit_copy(tmp_path)
    r = subprocess.run(
        [
            _tool("systemd-analyze"),
            "security",
            "--offline=true",
            "--threshold=16",
            "--no-pager",
            str(web),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
