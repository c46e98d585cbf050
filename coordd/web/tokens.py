"""The dashboard's two tokens: ``read`` to view, ``operator`` to act.

Each is a file in ``web_token_dir`` (default: the state directory), mode 0640, so the
coordd group reads it (``coordctl web-token``) and nobody else: the page must not show
local users what the 0660 control socket hides from them. ``coordd web`` creates a
missing one at start. Standard library only: coordctl imports this module.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

READ = "read"
OPERATOR = "operator"
ROLES = (READ, OPERATOR)


class TokenError(Exception):
    """A token file cannot be read or written; the message names it."""


def token_dir(token_dir_setting: str, state_dir: str) -> Path:
    return Path(token_dir_setting or state_dir)


def path_of(directory: Path, role: str) -> Path:
    return directory / f"web-{role}.token"


def ensure(directory: Path) -> dict[str, str]:
    """Both tokens, each created (random, 0640) if its file is missing."""
    directory.mkdir(parents=True, exist_ok=True)
    for role in ROLES:
        path = path_of(directory, role)
        if path.exists():
            continue
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except FileExistsError:
            continue  # made meanwhile by another process: keep that one
        except OSError as e:
            raise TokenError(f"cannot create {path}: {e}") from None
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return read(directory)


def read(directory: Path) -> dict[str, str]:
    """The tokens by role; TokenError names a missing or unreadable file."""
    out = {}
    for role in ROLES:
        path = path_of(directory, role)
        try:
            value = path.read_text().strip()
        except FileNotFoundError:
            raise TokenError(f"{path} does not exist; `coordd web` creates it at start") from None
        except PermissionError:
            raise TokenError(
                f"permission denied on {path}; the tokens are for root and the coordd group"
            ) from None
        if len(value) < 16:
            raise TokenError(f"{path} holds no usable token (at least 16 characters)")
        out[role] = value
    return out


def role_of(tokens: dict[str, str], presented: str | None) -> str | None:
    """The role a presented token grants (operator also views), compared in constant time."""
    if not presented:
        return None
    given = presented.encode()
    for role in (OPERATOR, READ):
        if hmac.compare_digest(given, tokens[role].encode()):
            return role
    return None


def fingerprint(token: str) -> str:
    """A short, non-secret name of a token for the log (which token acted)."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]
