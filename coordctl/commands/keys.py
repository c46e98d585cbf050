"""``coordctl keys``: the CURVE key directory of a tcp:// agent endpoint.

These commands work on files only (``curve_dir``), never on the socket: the daemon
reads the allow-list at start and on ``SIGHUP``, so each change ends with the
reminder to reload (``systemctl reload coordd`` or ``kill -HUP <pid>``).
"""

from __future__ import annotations

from pathlib import Path

import click

from coordctl.base import Ctx, fail, json_option
from coordd import keys, views

RELOAD_HINT = "reload coordd to apply: systemctl reload coordd (or kill -HUP <coordd pid>)"


def _curve_dir(ctx: Ctx, given: str | None) -> str:
    curve_dir = given or ctx.cfg.curve_dir
    if not curve_dir:
        fail("name the key directory (--dir or curve_dir in the configuration)", 2)
    return curve_dir


dir_option = click.option(
    "--dir", "curve_dir", help="Key directory (default: curve_dir from the configuration)."
)


@click.group("keys", short_help="CURVE keys: generate, list, allow, revoke")
def keys_group() -> None:
    """CURVE keys of the agent endpoint: generate, list, allow, revoke."""


@keys_group.command("generate")
@dir_option
@click.option("--agent", "agent", help="Make an agent key pair named AGENT instead.")
@click.option("--out", "out_dir", default=".", help="Where --agent writes its pair.")
@click.option("--force", is_flag=True, help="Replace an existing server key pair.")
@click.pass_obj
def generate(ctx: Ctx, curve_dir: str | None, agent: str | None, out_dir: str, force: bool) -> None:
    """Create the server key pair and allowed/ (or, with --agent, an agent's pair)."""
    try:
        if agent:
            public = keys.generate_agent(out_dir, agent)
            click.echo(f"agent key pair {public} and {public}_secret (keep the secret private)")
            click.echo(f"allow it with: coordctl keys allow {agent} {public}")
            return
        public = keys.generate_server(_curve_dir(ctx, curve_dir), force)
    except keys.KeysError as e:
        fail(str(e), 1)
    click.echo(f"server key pair {public} and {public}_secret; give agents {public}")
    click.echo("a new server key pair takes effect when coordd restarts")


@keys_group.command("list")
@dir_option
@json_option
@click.pass_obj
def list_keys(ctx: Ctx, curve_dir: str | None, as_json: bool) -> None:
    """The server's public key and every allowed agent with its key."""
    folder = _curve_dir(ctx, curve_dir)
    try:
        server = keys.read_public(str(Path(folder) / f"{keys.SERVER_NAME}.key"))
        allowed = keys.load_allowed(folder)
    except keys.KeysError as e:
        fail(str(e), 1)
    if as_json:
        agents = dict(sorted((agent, key) for key, agent in allowed.items()))
        click.echo(views.encode(views.KeysView(server=server, allowed=agents)))
        return
    click.echo(f"server {server}")
    for key, agent in sorted(allowed.items(), key=lambda kv: kv[1]):
        click.echo(f"allowed {agent} {key}")


@keys_group.command("allow")
@dir_option
@click.argument("agent_id")
@click.argument("public_key")
@click.pass_obj
def allow(ctx: Ctx, curve_dir: str | None, agent_id: str, public_key: str) -> None:
    """Let AGENT_ID in with PUBLIC_KEY (a .key file or the 40-character Z85 key)."""
    try:
        path = keys.allow(_curve_dir(ctx, curve_dir), agent_id, keys.read_public(public_key))
    except keys.KeysError as e:
        fail(str(e), 1)
    click.echo(f"allowed {agent_id} ({path}); {RELOAD_HINT}")


@keys_group.command("revoke")
@dir_option
@click.argument("agent_id")
@click.pass_obj
def revoke(ctx: Ctx, curve_dir: str | None, agent_id: str) -> None:
    """Remove AGENT_ID's key from allowed/."""
    try:
        path = keys.revoke(_curve_dir(ctx, curve_dir), agent_id)
    except keys.KeysError as e:
        fail(str(e), 1)
    click.echo(f"revoked {agent_id} (removed {path}); {RELOAD_HINT}")


COMMANDS = [keys_group]
