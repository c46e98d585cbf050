"""``coordd run``, ``coordd check-config``: the daemon's own command line."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import click

from coordd import config as config_mod
from coordd import logs

if TYPE_CHECKING:
    from coordd.storage.store import Store


def _load(config_file: str | None, flags: dict[str, Any]) -> config_mod.Config:
    try:
        return config_mod.load(config_file, os.environ, flags)
    except config_mod.ConfigError as e:
        click.echo(f"coordd: {e}", err=True)
        sys.exit(2)


SECRET_KEYS = frozenset({"anthropic_api_key"})

config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML configuration file (default: $COORDD_CONFIG, else built-in defaults).",
)


@click.group()
@click.version_option(package_name="coordd")
def main() -> None:
    """coordd: keeps a fleet of agents honest about who is working on what."""


@main.command()
@config_option
@click.option("--coordination-dir", help="Where state and sockets live ($COORDINATION_DIR).")
@click.option("--stale-threshold", type=float, help="Seconds of silence before an item is stale.")
@click.option("--recovery", help="reassign | retry | fail | none")
@click.option("--fsync", help="always | everysec | never")
@click.option("--log-format", help="auto | console | json | journal")
def run(config_file: str | None, **flags: Any) -> None:
    """Run the daemon in the foreground until SIGTERM/SIGINT."""
    from coordd.daemon.notify import Notifier
    from coordd.daemon.server import Daemon, StartupError
    from coordd.storage.store import StoreError

    cfg = _load(config_file, flags)
    logs.configure(cfg.log_format, cfg.log_level, os.environ)
    daemon = Daemon(
        cfg,
        notifier=Notifier(os.environ),
        # SIGHUP re-reads the same sources (file, environment, flags) as the start did.
        load_config=lambda: config_mod.load(config_file, os.environ, flags),
    )
    try:
        daemon.start()
    except StartupError as e:
        click.echo(f"coordd: {e}", err=True)
        daemon.close()
        sys.exit(1)
    try:
        daemon.run()
    except StoreError as e:
        click.echo(f"coordd: {e}", err=True)
        sys.exit(1)
    finally:
        daemon.close()


@main.command("check-config")
@config_option
def check_config(config_file: str | None) -> None:
    """Validate the configuration and print the values in effect."""
    import msgspec

    cfg = _load(config_file, {})
    for key, value in msgspec.structs.asdict(cfg).items():
        if key in SECRET_KEYS and value:
            value = "<set>"  # never print a credential to a terminal or a log
        click.echo(f"{key} = {value!r}")


@main.command("import")
@config_option
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
def import_(config_file: str | None, directory: str) -> None:
    """Import the old script's JSON files from DIRECTORY (coordd must be stopped).

    Reads work_claims.json, agent_status.json, coordination_log.json and
    velocity_log.txt without changing them; importing twice adds nothing twice.
    The import is written to the journal and followed by a snapshot.
    """
    import time

    from coordd import legacy
    from coordd.core.model import Limits
    from coordd.core.state import State
    from coordd.storage.store import StoreError

    cfg = _load(config_file, {})
    os.makedirs(cfg.state_dir, exist_ok=True)
    store = _locked_store_or_exit(cfg)
    try:
        state = State(cfg.policy(), Limits(max_items=cfg.max_items, max_agents=cfg.max_agents))
        store.load(state)
        records, summary = legacy.import_dir(directory, state, time.time())
        store.append(records)
        store.sync()
        export = None
        if cfg.legacy_export:
            export = lambda: legacy.export_dir(cfg.coordination_dir, state)  # noqa: E731
        result = store.snapshot(state, time.time(), export)
    except StoreError as e:
        click.echo(f"coordd: {e}", err=True)
        sys.exit(1)
    finally:
        store.close()  # also releases the lock
    for line in summary.lines():
        click.echo(line)
    if not result.ok:
        click.echo(f"coordd: imported into the journal, but the snapshot failed: {result.reason}")
        sys.exit(1)


@main.command()
@config_option
@click.option("--repair", is_flag=True, help="Salvage what can be read (copying every file first).")
def fsck(config_file: str | None, repair: bool) -> None:
    """Check the snapshot and journal in the state directory (coordd must be stopped).

    With --repair: every file is copied as it was into ``fsck-copy-<time>-<pid>/``;
    every record whose checksum holds is kept (damaged snapshot blocks filled in from
    the previous generation when it can be), a fresh, consistent snapshot and journal
    are written, and what was kept and lost is printed. Exit status 1 when problems
    remain.
    """
    import time

    cfg = _load(config_file, {})
    store = _locked_store_or_exit(cfg)
    try:
        report = store.fsck(repair, time.time())
    finally:
        store.close()
    for line in report.problems:
        click.echo(f"problem: {line}")
    for line in report.actions:
        click.echo(f"repair: {line}")
    if report.kept:
        kept = ", ".join(f"{k}={v}" for k, v in report.kept.items())
        lost = ", ".join(f"{k}={v}" for k, v in report.dropped.items()) or "nothing counted"
        click.echo(f"repair: kept {kept}; lost {lost}")
    if report.clean:
        click.echo(f"{cfg.state_dir}: snapshot and journal are consistent")
    elif not repair:
        click.echo("run `coordd fsck --repair` to repair (copies of what is cut are kept)")
        sys.exit(1)


def _locked_store_or_exit(cfg: config_mod.Config) -> Store:
    """The store of ``cfg``, held by this process (coordd must be stopped)."""
    from coordd.storage.store import StoreError, open_store

    store = open_store(cfg)
    try:
        store.lock()
    except StoreError as e:
        click.echo(f"coordd: {e}", err=True)
        sys.exit(1)
    return store
