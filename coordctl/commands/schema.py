"""``coordctl schema [COMMAND]``: the published JSON Schema of ``--json`` output.

The schema is generated from the view types of ``coordd.views`` (the same document is
in the repository as ``schema/coordctl.json``), so it always matches what is printed.
"""

from __future__ import annotations

import json

import click

from coordctl.base import Ctx, command, fail
from coordd import views


@command(short_help="The JSON Schema of --json output")
@click.argument("name", required=False, metavar="[COMMAND]")
def schema(ctx: Ctx, name: str | None, as_json: bool) -> None:
    """Print the JSON Schema of a command's --json output (all commands without one).

    A refusal under --json is {"error": {"code", "message", "exit_status"}} for every
    command; the schema of each command says so.
    """
    if name is None:
        doc = views.schema_document()
    elif name in views.OUTPUTS:
        doc = views.command_schema(name)
    else:
        known = ", ".join(sorted(views.OUTPUTS))
        fail(f"no command {name!r}; one of: {known}", 2, "usage")
    click.echo(json.dumps(doc, indent=2, sort_keys=True))


COMMANDS = [schema]
