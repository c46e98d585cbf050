"""`coordctl keys`: the key directory as an operator sees it (files only, no daemon)."""

from __future__ import annotations

import json
import stat
from typing import Any

from tests.conftest import CoorddProcess


def _ok(out: Any) -> str:
    assert out.returncode == 0, out
    return str(out.stdout)


def test_generate_allow_list_revoke(coordd_factory: Any) -> None:
    d: CoorddProcess = coordd_factory({"curve_dir": "keys"}, start=False)
    assert "give agents" in _ok(d.ctl("keys", "generate"))
    again = d.ctl("keys", "generate")
    assert again.returncode == 1 and "--force" in again.stderr
    _ok(d.ctl("keys", "generate", "--agent", "a1", "--out", "mine"))
    secret = d.base / "keys" / "server.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((d.base / "mine" / "a1.key_secret").stat().st_mode) == 0o600
    assert "reload coordd" in _ok(d.ctl("keys", "allow", "a1", "mine/a1.key"))
    listed = json.loads(_ok(d.ctl("keys", "list", "--json")))
    assert list(listed["allowed"]) == ["a1"] and len(listed["server"]) == 40
    assert "revoked a1" in _ok(d.ctl("keys", "revoke", "a1"))
    assert json.loads(_ok(d.ctl("keys", "list", "--json")))["allowed"] == {}


def test_bad_input_is_refused_with_a_reason(coordd_factory: Any) -> None:
    d: CoorddProcess = coordd_factory({}, start=False)
    out = d.ctl("keys", "list")
    assert out.returncode == 2 and "curve_dir" in out.stderr
    _ok(d.ctl("keys", "generate", "--dir", "k"))
    for args, words in [
        (("allow", "a1", "too-short"), "40 Z85"),
        (("allow", "../evil", "x" * 40), "cannot name a key file"),
        (("revoke", "nobody-here"), "no allowed key"),
    ]:
        out = d.ctl("keys", args[0], "--dir", "k", *args[1:])
        assert out.returncode == 1 and words in out.stderr, out
