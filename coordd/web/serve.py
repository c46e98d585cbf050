"""``coordd web``: check where to listen, make the tokens, run the app on uvicorn.

Loopback by default (``web_listen = 127.0.0.1:9642``). Beyond loopback it refuses to
start without TLS (``web_tls_cert`` and ``web_tls_key``): the tokens travel in a cookie.
The socket is bound here, before uvicorn starts, so a port of 0 works (tests) and the
address actually bound is printed.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from coordd.config import Config


class WebConfigError(Exception):
    """``coordd web`` cannot start as configured; the message says what to set."""


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    tls: bool


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:port``) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise WebConfigError(f"web_listen must be host:port, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve beyond loopback


def check(cfg: Config) -> Listen:
    """Where to listen, or WebConfigError (beyond loopback without TLS, half a TLS pair)."""
    host, port = parse_listen(cfg.web_listen)
    if bool(cfg.web_tls_cert) != bool(cfg.web_tls_key):
        raise WebConfigError("set both web_tls_cert and web_tls_key, or neither")
    tls = bool(cfg.web_tls_cert)
    if not is_loopback(host) and not tls:
        raise WebConfigError(
            f"web_listen {cfg.web_listen} is beyond loopback: set web_tls_cert and"
            " web_tls_key (the tokens must not cross a network in clear), or listen on"
            " 127.0.0.1 behind a TLS proxy (then list its origin in web_origins)"
        )
    return Listen(host, port, tls)


def bind(listen: Listen) -> socket.socket:
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listen.host, listen.port))
    except OSError as e:
        sock.close()
        raise WebConfigError(f"cannot listen on {listen.host}:{listen.port}: {e}") from None
    sock.listen(128)
    return sock


def run(cfg: Config) -> None:
    """Serve until SIGTERM/SIGINT (uvicorn's handlers)."""
    import uvicorn

    from coordd.web import tokens
    from coordd.web.app import Hub, Site, create_app

    listen = check(cfg)
    try:
        token_values = tokens.ensure(tokens.token_dir(cfg.web_token_dir, cfg.state_dir))
    except tokens.TokenError as e:
        raise WebConfigError(str(e)) from None
    sock = bind(listen)
    port = sock.getsockname()[1]
    origins = [o.strip() for o in cfg.web_origins.split(",") if o.strip()]
    site = Site.of(listen.host, port, listen.tls, origins)
    hub = Hub(cfg, site, token_values)
    config = uvicorn.Config(
        create_app(hub),
        log_level="warning",
        access_log=False,
        ssl_certfile=cfg.web_tls_cert or None,
        ssl_keyfile=cfg.web_tls_key or None,
        ws_max_size=64 * 1024,  # a page sends only small queries
    )
    scheme = "https" if listen.tls else "http"
    shown = f"[{listen.host}]" if ":" in listen.host else listen.host
    print(
        f"coordd web: serving {scheme}://{shown}:{port}/ (coordctl web-token shows the tokens)",
        flush=True,
    )
    uvicorn.Server(config).run(sockets=[sock])
