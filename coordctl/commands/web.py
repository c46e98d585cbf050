"""``coordctl web-token``: the dashboard's tokens, for members of the coordd group.

Reads the files ``coordd web`` made (never the socket): the read token lets a person
view the page, the operator token lets them act (recover, release, retry, AI).
"""

from __future__ import annotations

import json

import click

from coordctl.base import Ctx, command, fail
from coordd.web import tokens


@command("web-token")
@click.option("--operator", "role", flag_value=tokens.OPERATOR, help="Only the operator token.")
@click.option("--read", "role", flag_value=tokens.READ, help="Only the read token.")
def web_token(ctx: Ctx, role: str | None, as_json: bool) -> None:
    """Show the web dashboard's address and tokens.

    The read token lets a person view the page, the operator token also act.
    """
    directory = tokens.token_dir(ctx.cfg.web_token_dir, ctx.cfg.state_dir)
    try:
        values = tokens.read(directory)
    except tokens.TokenError as e:
        fail(str(e), 1)
    url = f"http://{ctx.cfg.web_listen}/"
    if ctx.cfg.web_tls_cert:
        url = f"https://{ctx.cfg.web_listen}/"
    if role:
        click.echo(json.dumps({role: values[role]}) if as_json else values[role])
        return
    if as_json:
        click.echo(json.dumps({**values, "url": url}, indent=2, sort_keys=True))
        return
    click.echo(f"dashboard: {url}")
    click.echo(f"read token (view):       {values[tokens.READ]}")
    click.echo(f"operator token (act):    {values[tokens.OPERATOR]}")


COMMANDS = [web_token]
