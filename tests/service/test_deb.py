"""The .deb: built once per session by packaging/build-deb.sh, then inspected."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordd import config
from tests.conftest import write_toml
from tests.service.test_notify import NotifySocket

ROOT = Path(__file__).resolve().parents[2]


class Deb:
    def __init__(self, path: Path, tmp: Path) -> None:
        self.path = path
        listing = subprocess.run(
            ["dpkg-deb", "-c", str(path)], capture_output=True, text=True, check=True
        ).stdout
        # "-rwxr-xr-x root/root 186 2026-01-01 00:00 ./usr/bin/coordd" -> {path: (mode, owner)}
        self.files: dict[str, tuple[str, str]] = {}
        for line in listing.splitlines():
            mode, owner, _size, _date, _time, name = line.split(None, 5)
            self.files[name.removeprefix(".").split(" -> ")[0]] = (mode, owner)
        self.info = subprocess.run(
            ["dpkg-deb", "-I", str(path)], capture_output=True, text=True, check=True
        ).stdout
        self.control = tmp / "DEBIAN"
        subprocess.run(["dpkg-deb", "-e", str(path), str(self.control)], check=True)
        self.root = tmp / "root"
        subprocess.run(["dpkg-deb", "-x", str(path), str(self.root)], check=True)

    def field(self, name: str) -> str:
        for line in self.info.splitlines():
            if line.strip().startswith(f"{name}:"):
                return line.split(":", 1)[1].strip()
        raise KeyError(name)


# The build (first test's setup) may take what the fixture allows it, not the suite's
# 120 s: on a loaded 2-core machine it took up to 3 minutes with the web extra installed.
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deb]:
    if shutil.which("dpkg-deb") is None:
        pytest.fail("dpkg-deb is missing: `make system-deps` installs it")
    out = tmp_path_factory.mktemp("deb")
    r = subprocess.run(
        [str(ROOT / "packaging" / "build-deb.sh"), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (path,) = out.glob("coordd_*.deb")
    yield Deb(path, tmp_path_factory.mktemp("debx"))


@pytest.mark.slow  # builds the .deb (module fixture)
def test_the_package_holds_every_file_with_the_right_mode(deb: Deb) -> None:
    expected = {
        "/usr/bin/coordd": "-rwxr-xr-x",
        "/usr/bin/coordctl": "-rwxr-xr-x",
        "/opt/coordd/bin/coordd": "-rwxr-xr-x",
        "/opt/coordd/bin/coordctl": "-rwxr-xr-x",
        "/opt/coordd/bin/python3.11": "lrwxrwxrwx",
        "/usr/lib/systemd/system/coordd.service": "-rw-r--r--",
        "/usr/lib/systemd/system/coordd-web.service": "-rw-r--r--",
        "/usr/lib/sysusers.d/coordd.conf": "-rw-r--r--",
        "/usr/lib/tmpfiles.d/coordd.conf": "-rw-r--r--",
        "/etc/coordd/coordd.toml": "-rw-r--r--",
        "/usr/share/bash-completion/completions/coordctl": "-rw-r--r--",
        "/usr/share/zsh/vendor-completions/_coordctl": "-rw-r--r--",
        "/usr/share/doc/coordd/README.md": "-rw-r--r--",
    }
    for name, mode in expected.items():
        assert name in deb.files, name
        assert deb.files[name] == (mode, "root/root"), (name, deb.files[name])
    # Our code and its dependencies are in the package's own environment.
    site = "/opt/coordd/lib/python3.11/site-packages/"
    for pkg in (
        "coordd/daemon/server.py",
        "coordctl/cli.py",
        "zmq/",
        "msgspec/",
        "sdnotify/",
        "coordd/web/static/app.js",  # the dashboard, with its page and its libraries
        "starlette/",
        "uvicorn/",
    ):
        assert any(f.startswith(site + pkg) for f in deb.files), pkg
    assert not any("/tests/" in f and f.startswith(site + "coordd") for f in deb.files)


@pytest.mark.slow  # builds the .deb (module fixture)
def test_control_fields_conffiles_and_maintainer_scripts(deb: Deb) -> None:
    assert deb.field("Package") == "coordd"
    assert deb.field("Version") == "0.1.0"
    assert "python3.11" in deb.field("Depends")
    assert (deb.control / "conffiles").read_text().split() == ["/etc/coordd/coordd.toml"]
    scripts = {}
    for name in ("postinst", "prerm", "postrm"):
        path = deb.control / name
        assert path.stat().st_mode & 0o777 == 0o755, name
        scripts[name] = path.read_text()
        subprocess.run(["sh", "-n", str(path)], check=True)
    postinst = scripts["postinst"]
    assert "systemd-sysusers /usr/lib/sysusers.d/coordd.conf" in postinst
    assert "adduser --system --group" in postinst  # where systemd-sysusers is missing
    # Nothing the administrator did not ask for: no enable, no start.
    for text in scripts.values():
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert "systemctl enable" not in code and "systemctl start" not in code


@pytest.mark.slow  # builds the .deb (module fixture)
def test_the_installed_environment_works_and_names_no_build_path(deb: Deb) -> None:
    venv = deb.root / "opt" / "coordd"
    assert (venv / "bin" / "python3.11").readlink() == Path("/usr/bin/python3.11")
    assert (venv / "bin" / "coordctl").read_text().startswith("#!/opt/coordd/bin/python\n")
    wrapper = (deb.root / "usr" / "bin" / "coordctl").read_text()
    assert "COORDD_CONFIG=/etc/coordd/coordd.toml" in wrapper
    assert "exec /opt/coordd/bin/coordctl" in wrapper
    # The extracted venv runs with Debian's interpreter and finds every dependency.
    r = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import coordd.daemon.server, coordctl.cli, anthropic",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    leftovers = subprocess.run(
        ["grep", "-rlI", "coordd-deb.", str(deb.root)], capture_output=True, text=True
    ).stdout
    assert leftovers == ""


@pytest.mark.slow  # builds the .deb (module fixture)
def test_completion_scripts_for_bash_and_zsh(deb: Deb) -> None:
    bash = (deb.root / "usr/share/bash-completion/completions/coordctl").read_text()
    assert "_COORDCTL_COMPLETE=bash_complete" in bash and "complete " in bash
    zsh = (deb.root / "usr/share/zsh/vendor-completions/_coordctl").read_text()
    assert zsh.startswith("#compdef coordctl")
    r = subprocess.run(["bash", "-n", "-c", bash], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_default_configuration_is_the_service_layout() -> None:
    cfg = config.load(str(ROOT / "packaging" / "coordd.toml"), env={})
    assert (cfg.state_dir, cfg.run_dir, cfg.control_group) == (
        "/var/lib/coordd",
        "/run/coordd",
        "coordd",
    )
    assert cfg.control_socket == "/run/coordd/control.sock"
    assert cfg.metrics_listen == "127.0.0.1:9641"


@pytest.mark.slow  # builds the .deb (module fixture)
def test_the_packaged_daemon_starts_and_tells_systemd(deb: Deb, short_tmp: Path) -> None:
    # The extracted /opt/coordd environment, run by Debian's python3.11 as systemd
    # would run it, reaches READY=1 and stops cleanly on SIGTERM.
    notify = NotifySocket(short_tmp / "notify.sock")
    conf = short_tmp / "coordd.toml"
    write_toml(
        conf,
        {
            "coordination_dir": str(short_tmp / "state"),
            "run_dir": str(short_tmp / "run"),
            "metrics_listen": "",
        },
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COORD", "JOURNAL", "NOTIFY"))}
    python = deb.root / "opt" / "coordd" / "bin" / "python"
    proc = subprocess.Popen(
        [str(python), "-m", "coordd", "run", "--config", str(conf)],
        env={**env, "NOTIFY_SOCKET": str(notify.path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        notify.wait_for("READY", "1", timeout=20)
        assert (short_tmp / "run" / "control.sock").exists()
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING", "1", timeout=10)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
