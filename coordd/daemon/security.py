"""CURVE on tcp:// endpoints: the key ring, the ZAP handler, per-agent identity.

ZeroMQ asks ``ZAP_ENDPOINT`` whether each CURVE handshake may proceed; the loop
polls the ZAP socket and calls ``serve_zap``. The decisions themselves are
``keys.zap_decide`` and ``keys.identity_refusal``; here only the sockets and the
reload of ``allowed/`` (SIGHUP).
"""

from __future__ import annotations

import msgspec
import structlog
import zmq

from coordd import keys
from coordd.config import Config

log = structlog.get_logger("coordd")


class CurveError(Exception):
    """CURVE is needed but cannot be set up; the message says what to do."""


class Curve:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.keyring: keys.KeyRing | None = None  # set when a tcp endpoint uses CURVE
        self.zap_sock: zmq.Socket[bytes] | None = None

    def setup(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        """Load the keys and answer ZAP when a tcp:// endpoint needs them. Raises CurveError."""
        cfg = self.cfg
        wanted = [
            f"{key} {endpoint}"
            for key, endpoint in (
                ("agent_endpoint", cfg.agent_endpoint),
                ("events_endpoint", cfg.events_endpoint),
            )
            if keys.curve_wanted(endpoint, cfg.require_curve)
        ]
        if not wanted:
            return
        if not cfg.curve_dir:
            raise CurveError(
                f"{' and '.join(wanted)}: tcp:// beyond loopback (or require_curve) needs"
                " CURVE: set curve_dir to a key directory made by `coordctl keys generate`"
                " (see README, Security)"
            )
        try:
            self.keyring = keys.load(cfg.curve_dir)
        except keys.KeysError as e:
            raise CurveError(str(e)) from None
        # The ZAP handler must exist before the CURVE socket accepts a connection.
        zap: zmq.Socket[bytes] = ctx.socket(zmq.REP)
        zap.setsockopt(zmq.LINGER, 0)
        zap.bind(keys.ZAP_ENDPOINT)
        self.zap_sock = zap
        log.info("curve_enabled", curve_dir=cfg.curve_dir, allowed=len(self.keyring.allowed))

    def ring_for(self, endpoint: str) -> keys.KeyRing | None:
        if keys.curve_wanted(endpoint, self.cfg.require_curve):
            return self.keyring
        return None

    def serve_zap(self) -> None:
        """Answer the ZAP requests waiting (one CURVE handshake each)."""
        assert self.zap_sock is not None and self.keyring is not None
        while True:
            try:
                frames = self.zap_sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            decision = keys.zap_decide(self.keyring, frames)
            if not decision.allowed:
                log.warning(
                    "curve_refused",
                    address=decision.address,
                    client_key=decision.client_key,
                    reason=decision.reason,
                )
            self.zap_sock.send_multipart(decision.reply or [b"1.0", b"", b"500", b"", b"", b""])

    def identity_refusal(self, client_key: str | None, agent_id: str | None) -> str | None:
        """Why this CURVE key may not act as ``agent_id`` (None: it may)."""
        if self.keyring is None:
            return None
        refusal = keys.identity_refusal(self.keyring, client_key or "", agent_id)
        if refusal is not None:
            log.warning("identity_refused", agent_id=agent_id)
        return refusal

    def reload_keys(self) -> None:
        """Re-read ``allowed/``; on error keep the old list (a typo must not lock all out)."""
        if self.keyring is None:
            return
        try:
            allowed = keys.load_allowed(self.cfg.curve_dir)
        except keys.KeysError as e:
            log.error("keys_reload_failed", error=str(e))
            return
        self.keyring = msgspec.structs.replace(self.keyring, allowed=allowed)
        log.info("keys_reloaded", allowed=len(allowed))

    def close(self) -> None:
        if self.zap_sock is not None:
            self.zap_sock.close(linger=500)
            self.zap_sock = None
