"""What every coordctl command module uses: the group, its context, call, emit, fail.

Command modules (``coordctl.commands.*``) import this module and nothing imports
them but ``coordctl.cli``, which adds their commands to the group: no cycle.
Exit statuses: 0 ok, 1 refused by the daemon, 2 usage, 3 nothing pending,
4 daemon unreachable, 5 stale items found (``check-stale``); see ``coordctl.client``.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
import msgspec

from coordctl.client import (
    EXIT_NOTHING_PENDING,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    Client,
    Refused,
    Unreachable,
)
from coordd import config as config_mod
from coordd import protocol, rpc, views
from coordd.kinds import Priority, Status, Strategy


class Ctx:
    """What every command needs: the configuration and a client (made lazily).

    With ``endpoints`` set (``COORDD_ENDPOINTS``: an agent on another host) every
    request goes to the agent endpoint, with CURVE keys when configured; operator
    requests are then refused there and say they need the local control socket."""

    def __init__(self, cfg: config_mod.Config, ai_provider: str | None = None) -> None:
        self.cfg = cfg
        # The AI provider asked for in this command's environment (validated with the
        # configuration); sent with each analysis, it overrides the daemon's default.
        self.ai_provider = ai_provider
        self._client: Client | None = None

    @property
    def remote(self) -> bool:
        return bool(self.cfg.endpoints)

    def link(self) -> rpc.Link:
        """Where agent-side clients connect (the SDK, the heartbeater, ``run``)."""
        try:
            return rpc.agent_link(self.cfg)
        except rpc.KeyFileError as e:
            fail(str(e), 2)

    @property
    def client(self) -> Client:
        if self._client is None:
            target = self.link() if self.remote else self.cfg.control_socket
            self._client = Client(target, self.cfg.client_timeout)
        return self._client

    def agent_id(self, given: str | None) -> str | None:
        return given or self.cfg.agent_id or None

    def required_agent(self, given: str | None) -> str:
        agent_id = self.agent_id(given)
        if not agent_id:
            fail("name the agent (argument, --agent or $AGENT_ID)", 2)
        return agent_id


def coordination_dir(ctx: Ctx) -> Path:
    """COORDINATION_DIR, created if missing: reports and the heartbeater's files live there."""
    d = Path(ctx.cfg.coordination_dir)
    d.mkdir(parents=True, exist_ok=True)
    return d


# coordctl's own error codes under --json, by exit status (a daemon refusal keeps the
# daemon's code: unknown_work, lease_lost, ...).
CODES = {1: "refused", 2: "usage", 3: "nothing_pending", 4: "unreachable"}


def json_wanted() -> bool:
    """Whether the running command was given ``--json`` (so a refusal is JSON too)."""
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.params.get("as_json"):
            return True
        ctx = ctx.parent
    return False


def fail(
    message: str, status: int, code: str | None = None, line: str | None = None, **extra: Any
) -> NoReturn:
    """Stop with ``status``: one line on stderr for people (``line``, else the message);
    under ``--json`` also the refusal as ``{"error": {...}}`` on stdout."""
    click.echo(f"coordctl: {line or message}", err=True)
    if json_wanted():
        body = views.ErrorBody(
            code=code or CODES.get(status, "refused"), message=message, exit_status=status, **extra
        )
        click.echo(views.encode(views.ErrorView(error=body)))
    sys.exit(status)


def call(ctx: Ctx, req: protocol.Request) -> Any:
    """Send and map failures to one line and an exit status."""
    try:
        return ctx.client.call(req)
    except Unreachable as e:
        fail(str(e), EXIT_UNREACHABLE, "unreachable")
    except Refused as e:
        if e.code == "nothing_pending":
            fail(e.message, EXIT_NOTHING_PENDING, e.code)
        if ctx.remote and e.code == "not_allowed" and "control socket" in e.message:
            line = needs_control_socket(ctx, type(req).__name__)
            fail(line, EXIT_REFUSED, e.code, line=line)
        fail(e.message, EXIT_REFUSED, e.code, line=f"refused ({e.code}): {e.message}")


def needs_control_socket(ctx: Ctx, what: str) -> str:
    return (
        f"{what} is an operator request: it needs the local control socket"
        f" ({ctx.cfg.control_socket}), run it on coordd's host without COORDD_ENDPOINTS;"
        " over COORDD_ENDPOINTS only agent commands work"
    )


def emit(as_json: bool, view: msgspec.Struct, human: Callable[[Any], str]) -> None:
    """Print a view: ``human(view)`` for people, the view's JSON with ``--json``."""
    if as_json:
        click.echo(views.encode(view))
    else:
        click.echo(human(view))


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """Every command takes ``--json``."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


def command(name: str | None = None, **kw: Any) -> Callable[..., click.Command]:
    """A coordctl command with ``--json`` and the shared context. It is not on the
    group yet: ``coordctl.cli`` adds each module's ``COMMANDS``."""

    def wrap(f: Callable[..., Any]) -> click.Command:
        @functools.wraps(f)
        @click.pass_obj
        def inner(obj: Ctx, *args: Any, **kwargs: Any) -> Any:
            return f(obj, *args, **kwargs)

        return click.command(name, **kw)(json_option(inner))

    return wrap


class Group(click.Group):
    """coordctl's group: a command's module is imported when that command is asked
    for (``lazy``, filled by ``coordctl.cli``); a usage error under ``--json`` is a
    JSON refusal too."""

    lazy: dict[str, Callable[[], Any]] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            self.lazy[cmd_name]()
        return self.commands.get(cmd_name)

    def main(self, args: Any = None, prog_name: str | None = None, **kw: Any) -> Any:  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        kw.pop("standalone_mode", None)
        try:
            return super().main(argv, prog_name, standalone_mode=False, **kw)
        except click.ClickException as e:
            if "--json" not in argv:
                e.show()
                sys.exit(e.exit_code)
            click.echo(f"coordctl: {e.format_message()}", err=True)
            body = views.ErrorBody(code="usage", message=e.format_message(), exit_status=2)
            click.echo(views.encode(views.ErrorView(error=body)))
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)


@click.group(cls=Group)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML configuration file (default: $COORDD_CONFIG).",
)
@click.option("--coordination-dir", help="Where coordd lives ($COORDINATION_DIR).")
@click.option(
    "--timeout", "client_timeout", type=float, help="Seconds to wait for the daemon (default 5)."
)
@click.version_option(package_name="coordd")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, **flags: Any) -> None:
    """Drive coordd: claim work, report progress, watch freshness."""
    try:
        cfg = config_mod.load(config_file, os.environ, flags)
    except config_mod.ConfigError as e:
        fail(str(e), 2)
    ctx.obj = Ctx(cfg, config_mod.provider_from_env(os.environ))


# Shared argument types. The choices are listed in the order `--help` has always shown.
# Priority words in any case (HIGH, High): click gives back the canonical lower-case one.
PRIORITY = click.Choice([p.value for p in reversed(Priority)], case_sensitive=False)
STATUS = click.Choice([s.value for s in Status])
RECOVERY = click.Choice([s.value for s in (Strategy.REASSIGN, Strategy.FAIL, Strategy.RETRY)])
