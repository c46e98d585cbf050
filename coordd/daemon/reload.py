"""What a reload (SIGHUP, ``systemctl reload coordd``) may change in a running daemon.

Thresholds, the recovery policy, tick and heartbeat intervals and the AI provider
settings change in place; state is kept. Paths, endpoints, limits, the metrics
address and logging are bound at start: a reload keeps their old values and names
them, so the operator knows a restart is needed.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import structlog

from coordd.config import Config, ConfigError
from coordd.core.rules import threshold_warnings
from coordd.core.state import State

log = structlog.get_logger("coordd")

RELOADABLE = frozenset(
    {
        # freshness
        "stale_threshold",
        "heartbeat_interval",
        "tick_interval",
        "recovery",
        "max_retries",
        "retry_escalation",
        "max_recoveries",
        "work_types",
        # durability policy that the journal reads on each write
        "snapshot_interval",
        "legacy_export",
        # AI providers (read by coordd/ai when it builds a request)
        "ai_provider",
        "ollama_host",
        "ollama_model",
        "claude_model",
        "anthropic_base_url",
        "anthropic_api_key",
        "ai_timeout",
    }
)


def merge(old: Config, new: Config) -> tuple[Config, list[str]]:
    """``new`` for the reloadable keys, ``old`` for the rest; and the keys that differ
    but need a restart."""
    changes = {}
    needs_restart = []
    for field in msgspec.structs.fields(Config):
        name = field.name
        before, after = getattr(old, name), getattr(new, name)
        if before == after:
            continue
        if name in RELOADABLE:
            changes[name] = after
        else:
            needs_restart.append(name)
    return msgspec.structs.replace(old, **changes), needs_restart


def reload(cfg: Config, load: Callable[[], Config] | None, state: State) -> Config | None:
    """Re-read the configuration and apply the policy to ``state``. The new ``Config``,
    or None when the file is bad (logged; nothing changes)."""
    try:
        new = load() if load is not None else cfg
    except ConfigError as e:
        log.error("reload_failed", error=str(e))
        return None
    merged, needs_restart = merge(cfg, new)
    state.set_policy(merged.policy())
    warn_thresholds(merged)
    log.info(
        "reloaded",
        stale_threshold=merged.stale_threshold,
        recovery=merged.recovery,
        ai_provider=merged.ai_provider,
        needs_restart=",".join(needs_restart) or None,
    )
    return merged


def warn_thresholds(cfg: Config) -> None:
    """A threshold under two heartbeat intervals recovers live agents' work: say so
    (at start and at every reload)."""
    for warning in threshold_warnings(cfg.policy()):
        log.warning("threshold_below_heartbeat", detail=warning)
