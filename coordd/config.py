"""One ``Config`` from defaults < TOML file < environment < command-line flags.

The only module that reads ``os.environ`` (callers pass it in). Every key can be
set in the environment as ``COORDD_<KEY>``; the old script's variables
(``COORDINATION_DIR``, ``STALE_THRESHOLD``, ``HEARTBEAT_INTERVAL``, ``AI_PROVIDER``,
``OLLAMA_HOST``, ``AGENT_ID``) work too, and lose to ``COORDD_<KEY>`` when both are set.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from coordd import protocol
from coordd.core.rules import Policy, TypeRule, validate_policy
from coordd.kinds import FsyncPolicy, Strategy

# The old script's names for our keys.
LEGACY_ENV = {
    "COORDINATION_DIR": "coordination_dir",
    "STALE_THRESHOLD": "stale_threshold",
    "HEARTBEAT_INTERVAL": "heartbeat_interval",
    "AI_PROVIDER": "ai_provider",
    "OLLAMA_HOST": "ollama_host",
    "AGENT_ID": "agent_id",
}

FSYNC_POLICIES = tuple(FsyncPolicy)
STORES = ("file", "postgres")
AI_PROVIDERS = ("ollama", "claude", "auto")
LOG_FORMATS = ("auto", "console", "json", "journal")
# sun_path in sockaddr_un is 108 bytes including the terminating NUL.
MAX_UNIX_PATH = 107


class ConfigError(Exception):
    """Invalid configuration; the message names every bad key and its allowed values."""


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # where things live
    coordination_dir: str = "coordination"
    state_dir: str = ""  # default: coordination_dir
    run_dir: str = ""  # default: <coordination_dir>/run
    agent_endpoint: str = ""  # default: ipc://<run_dir>/agents.sock
    control_socket: str = ""  # default: <run_dir>/control.sock
    events_endpoint: str = ""  # default: ipc://<run_dir>/events.sock
    control_group: str = ""  # group given the control socket (e.g. "coordd"); "" keeps ours
    curve_dir: str = ""  # CURVE keys for a tcp:// agent endpoint (server.key*, allowed/)
    require_curve: bool = False  # CURVE even on a loopback tcp:// endpoint
    # freshness
    stale_threshold: float = 300.0
    heartbeat_interval: float = 60.0
    tick_interval: float = 1.0
    recovery: str = Strategy.REASSIGN
    max_retries: int = 3
    retry_escalation: str = Strategy.FAIL
    max_recoveries: int = 3  # recoveries (any strategy) before an item fails: dead letter
    work_types: dict[str, TypeRule] = {}
    publish_heartbeats: bool = False  # a "heartbeat" event per heartbeat message
    # durability
    snapshot_interval: float = 30.0
    fsync: str = FsyncPolicy.ALWAYS
    # Seconds a completed or failed item, and a completion-log entry, are kept after
    # they finish (7 days); 0 (or legacy_export) keeps them forever. Team velocity
    # totals are always kept.
    retention: float = 7 * 24 * 3600.0
    legacy_export: bool = False
    legacy_import: bool = True
    # where the state is kept: "file" (state_dir) or "postgres" (README, Stores)
    store: str = "file"
    postgres_dsn: str = ""  # libpq URL or key=value string; its password is never logged
    postgres_password_file: str = ""  # a file holding the password (else DSN or PGPASSWORD)
    postgres_timeout: float = 5.0  # seconds any PostgreSQL call may take
    cluster: str = "coordd"  # coordd processes with the same cluster name share one state
    # The leader lease (PostgreSQL store). Anchors: Kubernetes leases 15 s / renew
    # deadline 10 s / retry 2 s; River 15 s TTL, elects every 5 s. A leader renews every
    # lease_renew and steps down lease_renew before expiry (15 - 5 = Kubernetes' 10 s
    # renew deadline), so two renewals may fail before it does; a standby tries every
    # lease_retry, so it serves within lease_duration + lease_retry of a leader's death.
    lease_duration: float = 15.0
    lease_renew: float = 5.0
    lease_retry: float = 2.0
    # How long a request id is remembered (a resend within it is answered, not applied
    # again): well beyond a failover (lease_duration + a client's retries).
    request_id_ttl: float = 600.0
    # limits
    max_items: int = 5_000_000
    max_agents: int = 100_000
    max_message_bytes: int = 1_048_576
    # Reply bytes coordd holds for one peer that does not read them (beyond ZeroMQ's
    # own queue of 64 replies); past it that peer's replies are dropped.
    max_peer_reply_bytes: int = 4 * 1_048_576
    max_batch: int = 10_000
    max_id_len: int = protocol.MAX_ID_LEN
    max_description_len: int = protocol.MAX_TEXT_LEN
    # AI
    ai_provider: str = "ollama"
    ollama_host: str = "http://localhost:11434"
    ollama_model: str = "llama2"
    claude_model: str = "claude-sonnet-4-6"  # 4-5 reaches end-of-life 2026-11-30
    anthropic_base_url: str = ""
    anthropic_api_key: str = ""
    ai_timeout: float = 30.0
    ai_cache_ttl: float = 300.0  # seconds an analysis answer is reused; 0 turns the cache off
    ai_models: dict[str, str] = {}  # Ollama model per analysis (file only), e.g. priorities
    # operations
    # None: the default address (127.0.0.1:9641) when it is free; "" : off. An address
    # given here must be bound, or the start stops (see daemon/metrics.py).
    metrics_listen: str | None = None
    log_format: str = "auto"
    log_level: str = "info"
    # the web dashboard (`coordd web`)
    web_listen: str = "127.0.0.1:9642"  # beyond loopback only with web_tls_cert/key
    web_tls_cert: str = ""
    web_tls_key: str = ""
    web_token_dir: str = ""  # default: state_dir (web-read.token, web-operator.token)
    web_origins: str = ""  # extra origins allowed, comma-separated (a TLS proxy's)
    # clients
    agent_id: str = ""
    client_timeout: float = 5.0
    # Agents on another host: the agent endpoint(s) to connect to (COORDD_ENDPOINTS,
    # comma-separated), the agent's CURVE key pair file (``NAME.key_secret`` of
    # ``coordctl keys generate --agent``) and the server's public key (its
    # ``server.key`` file or the Z85 key itself). ``agent_endpoint`` is the daemon's
    # bind address, not this.
    endpoints: list[str] = []
    curve_key: str = ""
    server_key: str = ""

    def policy(self) -> Policy:
        return Policy(
            stale_threshold=self.stale_threshold,
            recovery=self.recovery,
            max_retries=self.max_retries,
            retry_escalation=self.retry_escalation,
            max_recoveries=self.max_recoveries,
            heartbeat_interval=self.heartbeat_interval,
            work_types=dict(self.work_types),
        )


_DSN_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*(@)|(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


def redact_dsn(dsn: str) -> str:
    """A libpq DSN (URL or key=value) with its password replaced by ``***``."""
    return _DSN_PASSWORD.sub(lambda m: f"{m[1]}***{m[2]}" if m[1] else f"{m[3]}***", dsn)


def _fill_paths(cfg: Config) -> Config:
    base = Path(cfg.coordination_dir)
    state_dir = cfg.state_dir or str(base)
    run_dir = cfg.run_dir or str(base / "run")
    return msgspec.structs.replace(
        cfg,
        state_dir=state_dir,
        run_dir=run_dir,
        agent_endpoint=cfg.agent_endpoint or f"ipc://{Path(run_dir).resolve()}/agents.sock",
        control_socket=cfg.control_socket or str(Path(run_dir).resolve() / "control.sock"),
        events_endpoint=cfg.events_endpoint or f"ipc://{Path(run_dir).resolve()}/events.sock",
    )


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for legacy, key in LEGACY_ENV.items():
        # The old script read these as ${VAR:-default}: empty means unset, as before.
        if env.get(legacy):
            out[key] = env[legacy]
    for field in msgspec.structs.fields(Config):
        name = "COORDD_" + field.name.upper()
        # Set is set, even to "": COORDD_METRICS_LISTEN= turns metrics off, as documented.
        if field.name not in ("work_types", "ai_models", "endpoints") and name in env:
            out[field.name] = env[name]
    if env.get("COORDD_ENDPOINTS"):
        out["endpoints"] = split_endpoints(env["COORDD_ENDPOINTS"])
    # The Anthropic SDK's own variables, so a Claude user sets nothing new.
    if env.get("ANTHROPIC_API_KEY") and "anthropic_api_key" not in out:
        out["anthropic_api_key"] = env["ANTHROPIC_API_KEY"]
    if env.get("ANTHROPIC_BASE_URL") and "anthropic_base_url" not in out:
        out["anthropic_base_url"] = env["ANTHROPIC_BASE_URL"]
    return out


def provider_from_env(env: Mapping[str, str]) -> str | None:
    """The AI provider set in the environment for one command (``COORDD_AI_PROVIDER``,
    else ``AI_PROVIDER``), or None: coordctl sends it with the request, so it wins over
    the daemon's configured provider for that analysis only."""
    return env.get("COORDD_AI_PROVIDER") or env.get("AI_PROVIDER") or None


def split_endpoints(text: str) -> list[str]:
    """``COORDD_ENDPOINTS``: connect addresses separated by commas or spaces."""
    return [e for e in text.replace(",", " ").split() if e]


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    # Accept both a flat file and one with a [coordd] table.
    inner = data.pop("coordd", None)
    if isinstance(inner, dict):
        data.update(inner)
    return data


def load(
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Build and validate the configuration. Raises ConfigError naming every problem."""
    env = os.environ if env is None else env
    config_file = config_file or env.get("COORDD_CONFIG") or None
    merged: dict[str, Any] = {}
    if config_file:
        merged.update(_read_toml(config_file))
    merged.update(_from_env(env))
    merged.update({k: v for k, v in (flags or {}).items() if v is not None})
    try:
        cfg = msgspec.convert(merged, Config, strict=False)
    except msgspec.ValidationError as e:
        raise ConfigError(f"invalid configuration: {_explain(e, merged)}") from None
    problems = validate(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return _fill_paths(cfg)


def _explain(e: msgspec.ValidationError, merged: dict[str, Any]) -> str:
    msg = str(e)
    if "Object contains unknown field" in msg:
        known = sorted(f.name for f in msgspec.structs.fields(Config))
        return f"{msg}; known keys: {', '.join(known)}"
    return msg


def _choice(problems: list[str], key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        problems.append(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def _positive(problems: list[str], key: str, value: float) -> None:
    # Finite too: an ``inf`` interval would never fire, ``nan`` compares false everywhere.
    if not 0 < value < math.inf:
        problems.append(f"{key} must be > 0 and finite, got {value}")


def _at_most(problems: list[str], key: str, value: int, ceiling: int) -> None:
    # The protocol's own limit is enforced by the decoder; a config can only tighten it.
    if value > ceiling:
        problems.append(f"{key} must be <= {ceiling} (the protocol's limit), got {value}")


def _check_store(problems: list[str], cfg: Config) -> None:
    _choice(problems, "store", cfg.store, STORES)
    if cfg.store == "postgres" and not cfg.postgres_dsn:
        problems.append(
            "store = postgres needs postgres_dsn (a libpq URL, e.g. postgresql:///coordd)"
        )
    if not cfg.cluster:
        problems.append("cluster must not be empty")
    # The leader steps down lease_renew before expiry: at least one retry must fit.
    if cfg.lease_renew > 0 and not cfg.lease_renew * 2 <= cfg.lease_duration:
        problems.append(
            f"lease_renew ({cfg.lease_renew}) must be at most half of lease_duration"
            f" ({cfg.lease_duration})"
        )
    if cfg.lease_retry > cfg.lease_renew:
        problems.append(
            f"lease_retry ({cfg.lease_retry}) must not exceed lease_renew ({cfg.lease_renew})"
        )


def validate(cfg: Config) -> list[str]:
    problems = validate_policy(cfg.policy())
    _choice(problems, "fsync", cfg.fsync, FSYNC_POLICIES)
    _choice(problems, "ai_provider", cfg.ai_provider, AI_PROVIDERS)
    _check_store(problems, cfg)
    if not 0 <= cfg.retention < math.inf:
        problems.append(f"retention must be >= 0 seconds and finite, got {cfg.retention}")
    if not 0 <= cfg.ai_cache_ttl < math.inf:
        problems.append(f"ai_cache_ttl must be >= 0 and finite, got {cfg.ai_cache_ttl}")
    _choice(problems, "log_format", cfg.log_format, LOG_FORMATS)
    _choice(problems, "log_level", cfg.log_level, ("debug", "info", "warning", "error"))
    for key in (
        "heartbeat_interval",
        "tick_interval",
        "snapshot_interval",
        "ai_timeout",
        "client_timeout",
        "postgres_timeout",
        "lease_duration",
        "lease_renew",
        "lease_retry",
        "request_id_ttl",
        "max_items",
        "max_agents",
        "max_message_bytes",
        "max_peer_reply_bytes",
        "max_batch",
        "max_id_len",
        "max_description_len",
    ):
        _positive(problems, key, getattr(cfg, key))
    _at_most(problems, "max_id_len", cfg.max_id_len, protocol.MAX_ID_LEN)
    _at_most(problems, "max_description_len", cfg.max_description_len, protocol.MAX_TEXT_LEN)
    _at_most(problems, "max_batch", cfg.max_batch, protocol.MAX_BATCH_ITEMS)
    for endpoint in cfg.endpoints:
        if not endpoint.startswith(("tcp://", "ipc://")):
            problems.append(f"endpoints: {endpoint!r} is not a tcp:// or ipc:// address")
    if bool(cfg.curve_key) != bool(cfg.server_key):
        problems.append("curve_key and server_key go together: set both or neither")
    if not cfg.coordination_dir:
        problems.append("coordination_dir must not be empty")
    sock = cfg.control_socket or str(
        Path(cfg.run_dir or Path(cfg.coordination_dir) / "run").resolve() / "control.sock"
    )
    if len(sock.encode()) > MAX_UNIX_PATH:
        problems.append(
            f"control socket path {sock} is {len(sock.encode())} bytes; Unix sockets allow"
            f" {MAX_UNIX_PATH}: set run_dir (COORDD_RUN_DIR) to a shorter directory"
        )
    return problems
