"""CURVE keys for a tcp:// agent endpoint: the server key pair, the allow-list, ZAP.

The key directory (config ``curve_dir``) holds

- ``server.key`` / ``server.key_secret``: the daemon's key pair, in the certificate
  format of ``zmq.auth.create_certificates`` (``coordctl keys generate``);
- ``allowed/<agent_id>.key``: one public key per agent allowed in, named after the one
  agent id that key may act as (``coordctl keys allow <agent_id> <file>``).

The daemon answers ZeroMQ's ZAP requests itself, on its loop (no extra thread): a
client whose key is not in ``allowed/`` fails the handshake and never reaches a
handler. The ``User-Id`` ZAP gives a connection is the client's public key (Z85), so
every later message carries it and the server can hold the agent to its own id.
This module reads files and builds replies; it keeps no sockets.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import zmq.auth
from zmq.utils import z85

SERVER_NAME = "server"
ALLOWED_DIR = "allowed"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"coordd-agents"
ZAP_VERSION = b"1.0"
KEY_SUFFIX = ".key"


class KeysError(Exception):
    """The key directory is missing or unreadable; the message says which file."""


class KeyRing(msgspec.Struct, kw_only=True):
    """The server's key pair and the allowed agents, by public key (Z85)."""

    public: bytes
    secret: bytes
    allowed: dict[str, str]  # Z85 public key -> the agent id it may act as


def load(curve_dir: str) -> KeyRing:
    """Read the server key pair and the allow-list. Raises KeysError."""
    secret_file = Path(curve_dir) / f"{SERVER_NAME}.key_secret"
    try:
        public, secret = zmq.auth.load_certificate(secret_file)
    except (OSError, ValueError) as e:
        raise KeysError(
            f"cannot read the server key {secret_file}: {e}; create it with"
            " `coordctl keys generate`"
        ) from None
    if not secret:
        raise KeysError(f"{secret_file} holds no secret key")
    return KeyRing(public=public, secret=secret, allowed=load_allowed(curve_dir))


def load_allowed(curve_dir: str) -> dict[str, str]:
    """Every ``allowed/<agent_id>.key`` as {public key: agent_id}."""
    folder = Path(curve_dir) / ALLOWED_DIR
    if not folder.is_dir():
        raise KeysError(f"{folder} does not exist; create it with `coordctl keys generate`")
    out: dict[str, str] = {}
    for path in sorted(folder.glob("*" + KEY_SUFFIX)):
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as e:
            raise KeysError(f"cannot read the agent key {path}: {e}") from None
        out[public.decode()] = path.name[: -len(KEY_SUFFIX)]
    return out


def is_loopback(endpoint: str) -> bool:
    """Whether a tcp:// endpoint listens on loopback only (127/8, ::1, localhost, lo)."""
    host = urlsplit(endpoint).hostname or ""
    if host in ("localhost", "lo"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name, a host name: beyond loopback


def curve_wanted(endpoint: str, require_curve: bool) -> bool:
    """A tcp:// agent endpoint needs CURVE beyond loopback, or whenever required."""
    if not endpoint.startswith("tcp://"):
        return False  # ipc:// is protected by file permissions instead
    return require_curve or not is_loopback(endpoint)


def secure_server(sock: zmq.Socket[Any], ring: KeyRing) -> None:
    """Make ``sock`` a CURVE server whose handshakes go to our ZAP handler (before bind)."""
    sock.curve_server = True
    sock.curve_secretkey = ring.secret
    sock.curve_publickey = ring.public
    sock.zap_domain = ZAP_DOMAIN


class ZapDecision(msgspec.Struct, kw_only=True):
    """What the ZAP handler answered, and what to log."""

    reply: list[bytes]
    allowed: bool
    address: str
    client_key: str
    agent_id: str | None = None
    reason: str = ""


def zap_decide(ring: KeyRing, frames: list[bytes]) -> ZapDecision:
    """Answer one ZAP request (RFC 27): allow only CURVE clients whose key is allowed."""
    if len(frames) < 6:
        # Not a ZAP request we can even answer by id; ZeroMQ never sends these.
        return ZapDecision(reply=[], allowed=False, address="", client_key="", reason="short")
    version, request_id, domain, address, _identity, mechanism = frames[:6]
    credentials = frames[6:]
    addr = address.decode(errors="replace")
    key = ""
    if mechanism == b"CURVE" and credentials and len(credentials[0]) == 32:
        key = z85.encode(credentials[0]).decode()
    agent_id = ring.allowed.get(key) if key else None
    if version != ZAP_VERSION or domain != ZAP_DOMAIN:
        reason = "unexpected ZAP domain or version"
    elif mechanism != b"CURVE":
        reason = f"mechanism {mechanism.decode(errors='replace')} is not CURVE"
    elif agent_id is None:
        reason = "public key not in allowed/"
    else:
        ok = [ZAP_VERSION, request_id, b"200", b"OK", key.encode(), b""]
        return ZapDecision(reply=ok, allowed=True, address=addr, client_key=key, agent_id=agent_id)
    no = [ZAP_VERSION, request_id, b"400", reason.encode(), b"", b""]
    return ZapDecision(reply=no, allowed=False, address=addr, client_key=key, reason=reason)


def identity_refusal(ring: KeyRing, client_key: str, agent_id: str | None) -> str | None:
    """Why a request from ``client_key`` naming ``agent_id`` is refused, or None.

    A key acts only as the agent it was allowed for; a key revoked since its connection
    was accepted is refused from the next message on (ZAP runs only at the handshake).
    """
    own = ring.allowed.get(client_key)
    if own is None:
        return "this CURVE key has been revoked"
    if agent_id is not None and agent_id != own:
        return f"this CURVE key may act only as agent {own!r}, not {agent_id!r}"
    return None


# --- the key directory, for `coordctl keys` ------------------------------------------


def generate_server(curve_dir: str, force: bool = False) -> Path:
    """Create the server key pair and ``allowed/``; return the public key file."""
    folder = Path(curve_dir)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o750)
    (folder / ALLOWED_DIR).mkdir(mode=0o750, exist_ok=True)
    public = folder / f"{SERVER_NAME}.key"
    if public.exists() and not force:
        raise KeysError(f"{public} exists; pass --force to replace the server key pair")
    return _create_pair(folder, SERVER_NAME)


def generate_agent(out_dir: str, name: str) -> Path:
    """Create an agent key pair ``<name>.key`` / ``<name>.key_secret`` in ``out_dir``."""
    check_name(name)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / f"{name}{KEY_SUFFIX}").exists():
        raise KeysError(f"{folder / (name + KEY_SUFFIX)} exists; choose another name")
    return _create_pair(folder, name)


def _create_pair(folder: Path, name: str) -> Path:
    # The secret file is created private: pyzmq writes it with the process umask.
    old = os.umask(0o077)
    try:
        public, _secret = zmq.auth.create_certificates(folder, name)
    finally:
        os.umask(old)
    os.chmod(public, 0o644)
    return Path(public)


def check_name(agent_id: str) -> None:
    """An agent id must be usable as a file name in ``allowed/``."""
    if not agent_id or "/" in agent_id or agent_id.startswith(".") or "\0" in agent_id:
        raise KeysError(f"{agent_id!r} cannot name a key file (no '/', no leading '.')")


def allow(curve_dir: str, agent_id: str, public_key: str) -> Path:
    """Write ``allowed/<agent_id>.key`` holding ``public_key`` (Z85, 40 characters)."""
    check_name(agent_id)
    if len(public_key) != 40:
        raise KeysError(f"a CURVE public key is 40 Z85 characters; got {len(public_key)}")
    try:
        z85.decode(public_key.encode())
    except (ValueError, KeyError, IndexError):
        raise KeysError(f"{public_key!r} is not a Z85 key") from None
    path = Path(curve_dir) / ALLOWED_DIR / f"{agent_id}{KEY_SUFFIX}"
    if not path.parent.is_dir():
        raise KeysError(f"{path.parent} does not exist; run `coordctl keys generate` first")
    path.write_text(
        f"# coordd: agent {agent_id} may connect with this key\n"
        f'metadata\ncurve\n    public-key = "{public_key}"\n'
    )
    return path


def read_public(source: str) -> str:
    """A public key given as a certificate file or as the Z85 text itself."""
    if os.path.exists(source):
        try:
            public, _ = zmq.auth.load_certificate(source)
        except (OSError, ValueError) as e:
            raise KeysError(f"cannot read {source}: {e}") from None
        return public.decode()
    return source


def revoke(curve_dir: str, agent_id: str) -> Path:
    """Remove ``allowed/<agent_id>.key``."""
    check_name(agent_id)
    path = Path(curve_dir) / ALLOWED_DIR / f"{agent_id}{KEY_SUFFIX}"
    try:
        path.unlink()
    except FileNotFoundError:
        raise KeysError(f"no allowed key for agent {agent_id!r} ({path})") from None
    return path
