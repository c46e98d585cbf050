"""A client with several endpoints finds the leader: follows a not_leader hint, moves on
after a timeout, and waits on a standby rather than return to a leader that went silent."""

from __future__ import annotations

from coordd.endpoints import Endpoints


def test_a_hint_moves_the_client_to_the_leader() -> None:
    e = Endpoints(["ipc://a", "ipc://b"])
    assert e.current() == "ipc://a" and e.several
    assert e.not_leader("ipc://a", "ipc://b") is True
    assert e.current() == "ipc://b" and e.moves == 1


def test_a_timeout_moves_on_and_a_hint_back_to_the_silent_one_is_ignored() -> None:
    e = Endpoints(["ipc://a", "ipc://b", "ipc://c"])
    e.timed_out("ipc://a")  # the leader died
    assert e.current() == "ipc://b"
    # b is a standby that still names a as leader (the lease has not expired yet):
    assert e.not_leader("ipc://b", "ipc://a") is False
    assert e.current() == "ipc://b"  # wait here; b takes over
    # a restarted and answered again: a hint to it is followed.
    e.answered("ipc://a")
    assert e.not_leader("ipc://b", "ipc://a") is True and e.current() == "ipc://a"


def test_a_timeout_prefers_an_endpoint_not_known_silent() -> None:
    e = Endpoints(["ipc://a", "ipc://b", "ipc://c"])
    e.timed_out("ipc://a")
    e.timed_out("ipc://b")
    assert e.current() == "ipc://c"
    e.timed_out("ipc://c")  # all silent: go round anyway
    assert e.current() == "ipc://a"


def test_an_unknown_leader_is_added_and_a_stale_report_changes_nothing() -> None:
    e = Endpoints(["ipc://a", "ipc://b"])
    e.not_leader("ipc://a", None)
    assert e.current() == "ipc://a"
    assert e.not_leader("ipc://a", "tcp://10.0.0.9:5555") is True
    assert e.current() == "tcp://10.0.0.9:5555"
    e.timed_out("ipc://a")  # an old report about another endpoint: we stay
    assert e.current() == "tcp://10.0.0.9:5555"
