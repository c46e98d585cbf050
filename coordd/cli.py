"""``coordd run``, ``coordd check-config``: the daemon's own command line."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from coordd import config as config_mod
from coordd import logs


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
    from coordd.notify import Notifier
    from coordd.server import Daemon, StartupError

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
