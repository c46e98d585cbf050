"""``coordctl events``: follow the daemon's event stream, one line per event."""

from __future__ import annotations

import os

import click
import msgspec
import zmq

from coordctl import render
from coordctl.base import Ctx, command, fail
from coordctl.client import EXIT_UNREACHABLE
from coordd import views
from coordd.core.model import Event


def _event_line(ev: Event) -> str:
    parts = [render.iso(ev.at), ev.event]
    if ev.work_item_id:
        parts.append(ev.work_item_id)
    if ev.agent_id:
        parts.append(f"agent={ev.agent_id}")
    if ev.lease is not None:
        parts.append(f"lease={ev.lease}")
    if ev.detail:
        parts.append(ev.detail)
    return " ".join(parts)


@command("events", short_help="Follow what happens, one line per event")
@click.option("--count", type=click.IntRange(min=1), help="Exit after N events.")
@click.option("--event", "names", multiple=True, help="Only these events (repeatable).")
def events(ctx: Ctx, count: int | None, names: tuple[str, ...], as_json: bool) -> None:
    """Follow what happens (claims, stale items, recoveries...), one line per event."""
    endpoint = ctx.cfg.events_endpoint
    if endpoint.startswith("ipc://") and not os.path.exists(endpoint[len("ipc://") :]):
        # A SUB socket would wait forever in silence; say what is wrong instead.
        fail(f"coordd is not running at {endpoint} (no socket)", EXIT_UNREACHABLE)
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    for name in names or ("",):
        sock.setsockopt(zmq.SUBSCRIBE, name.encode())
    sock.connect(endpoint)
    decoder = msgspec.msgpack.Decoder(Event)
    seen = 0
    try:
        while count is None or seen < count:
            _name, payload = sock.recv_multipart()
            ev = decoder.decode(payload)
            if as_json:
                click.echo(msgspec.json.encode(views.event_view(ev)))
            else:
                click.echo(_event_line(ev))
            seen += 1
    except KeyboardInterrupt:
        pass
    finally:
        sock.close(0)


COMMANDS = [events]
