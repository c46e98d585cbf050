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


@main.command()
@config_option
@click.option("--listen", "web_listen", help="host:port (default 127.0.0.1:9642; port 0: any).")
def web(config_file: str | None, **flags: Any) -> None:
    """Serve the live dashboard (a client of the running coordd) until SIGTERM/SIGINT.

    Needs the `web` extra (Starlette, uvicorn). Viewing needs the read token, actions
    the operator token: `coordctl web-token` shows both.
    """
    try:
        from coordd.web import serve
    except ImportError as e:  # pragma: no cover - depends on the install
        click.echo(f"coordd: the web dashboard needs the web extra ({e})", err=True)
        sys.exit(1)
    cfg = _load(config_file, flags)
    logs.configure(cfg.log_format, cfg.log_level, os.environ)
    try:
        serve.run(cfg)
    except serve.WebConfigError as e:
        click.echo(f"coordd web: {e}", err=True)
        sys.exit(2)


@main.command("check-config")
@config_option
def check_config(config_file: str | None) -> None:
    """Validate the configuration and print the values in effect."""
    import msgspec

    from coordd.core.rules import threshold_warnings

    cfg = _load(config_file, {})
    for key, value in msgspec.structs.asdict(cfg).items():
        if key in SECRET_KEYS and value:
            value = "<set>"  # never print a credential to a terminal or a log
        elif key == "postgres_dsn":
            value = config_mod.redact_dsn(value)
        click.echo(f"{key} = {value!r}")
    for warning in threshold_warnings(cfg.policy()):
        click.echo(f"coordd: warning: {warning}", err=True)


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


@main.command()
@config_option
def migrate(config_file: str | None) -> None:
    """Create or upgrade coordd's schema in PostgreSQL (store = postgres).

    Versioned: each run applies the versions the database lacks, in one transaction,
    and says from which version to which. Safe to run again; the file store has none.
    """
    from coordd.storage.store import StoreError, open_store

    cfg = _load(config_file, {})
    store = open_store(cfg)
    try:
        click.echo(store.migrate())
    except StoreError as e:
        click.echo(f"coordd: {e}", err=True)
        sys.exit(1)
    finally:
        store.close()


@main.command("copy-state")
@config_option
@click.option("--from", "source", type=click.Choice(["file", "postgres"]), required=True)
@click.option("--to", "target", type=click.Choice(["file", "postgres"]), required=True)
def copy_state(config_file: str | None, source: str, target: str) -> None:
    """Copy the whole state from one store to the other (every coordd stopped).

    Both sides come from the configuration: the file store is ``state_dir``, the
    PostgreSQL store is ``cluster`` in ``postgres_dsn``. The target must be empty;
    the copy is written there as one snapshot. The source is left as it was.
    """
    import time

    import msgspec

    from coordd.core.state import State
    from coordd.storage.store import StoreError

    if source == target:
        click.echo("coordd: --from and --to name the same store", err=True)
        sys.exit(2)
    cfg = _load(config_file, {})
    os.makedirs(cfg.state_dir, exist_ok=True)
    state = State(cfg.policy())
    src = _locked_store_or_exit(msgspec.structs.replace(cfg, store=source))
    try:
        src.load(state)
    except StoreError as e:
        click.echo(f"coordd: cannot read the {source} store: {e}", err=True)
        sys.exit(1)
    finally:
        src.close()
    dst = _locked_store_or_exit(msgspec.structs.replace(cfg, store=target))
    try:
        already = State(cfg.policy())
        dst.load(already)
        if already.items or already.agents or already.completions:
            click.echo(
                f"coordd: the {target} store is not empty ({len(already.items)} items,"
                f" {len(already.agents)} agents); refusing to overwrite it",
                err=True,
            )
            sys.exit(1)
        result = dst.snapshot(state, time.time())
    except StoreError as e:
        click.echo(f"coordd: cannot write the {target} store: {e}", err=True)
        sys.exit(1)
    finally:
        dst.close()
    if not result.ok:
        click.echo(f"coordd: the copy failed: {result.reason}", err=True)
        sys.exit(1)
    click.echo(
        f"copied {len(state.items)} items, {len(state.agents)} agents,"
        f" {len(state.completions)} completions from the {source} store to the {target} store"
    )
