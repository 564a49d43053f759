"""The trio supervisor: exact virtual timelines (autojump clock) of starts, exits, restarts,
shutdowns and events, for every strategy and restart type.

Each child is a `Worker` whose incarnations follow a script of behaviours; every worker and
the supervisor write into one trace of ``(time, child, what)``, so ordering and timing are
asserted together.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from actors._provider import Connection, ProviderActor
from protocol._config import ConnectionConfig
from protocol._errors import SwitchboardError
from supervisors._intensity import RestartIntensity, RestartType, Strategy
from supervisors._supervisor import (
    ChildExited,
    ChildRestarted,
    ChildSpec,
    ChildStarted,
    ChildStartFailed,
    GaveUp,
    Supervisor,
    SupervisorClosed,
    SupervisorEvent,
    SupervisorGaveUp,
    open_supervisor,
)

Trace = list[tuple[float, str, str]]


class Boom(Exception):
    pass


# Behaviours of one incarnation:
#   ("serve",)          run until the stop hook, then return at once
#   ("drain", s)        run until the stop hook, then take s seconds to return
#   ("ignore_stop",)    run forever; only cancellation ends it
#   ("crash", s)        raise Boom s seconds after starting
#   ("return", s)       return normally s seconds after starting
#   ("fail_start", s)   raise Boom s seconds into starting, before task_status.started()
#   ("hang_start",)     never call task_status.started()
Behaviour = tuple[str] | tuple[str, float]


@dataclass
class Worker:
    id: str
    trace: Trace
    script: Sequence[Behaviour] = (("serve",),)
    restart: RestartType = "permanent"
    shutdown_timeout: float = 5.0
    incarnations: int = 0
    _stop: trio.Event = field(default_factory=trio.Event)

    def note(self, what: str) -> None:
        self.trace.append((trio.current_time(), self.id, what))

    def spec(self) -> ChildSpec:
        return ChildSpec(
            self.id,
            self.start,
            restart=self.restart,
            shutdown_timeout=self.shutdown_timeout,
            stop=self.stop,
        )

    def stop(self) -> None:
        self.note("stop hook")
        self._stop.set()

    async def start(self, *, task_status: trio.TaskStatus[None]) -> None:
        self.incarnations += 1
        behaviour = self.script[min(self.incarnations, len(self.script)) - 1]
        kind = behaviour[0]
        arg = behaviour[1] if len(behaviour) > 1 else 0.0
        self._stop = trio.Event()
        if kind == "fail_start":
            await trio.sleep(arg)
            self.note("start failed")
            raise Boom(f"{self.id} cannot start")
        if kind == "hang_start":
            await trio.sleep_forever()
        task_status.started()
        self.note("started")
        try:
            if kind == "serve":
                await self._stop.wait()
            elif kind == "drain":
                await self._stop.wait()
                await trio.sleep(arg)
            elif kind == "ignore_stop":
                await trio.sleep_forever()
            elif kind == "crash":
                await trio.sleep(arg)
                self.note("crash")
                raise Boom(f"{self.id} crashed")
            elif kind == "return":
                await trio.sleep(arg)
            else:  # pragma: no cover - a typo in a test
                raise AssertionError(kind)
        except trio.Cancelled:
            self.note("cancelled")
            raise
        self.note("returned")


def workers(trace: Trace, *specs: tuple[str, Sequence[Behaviour]] | Worker) -> list[Worker]:
    return [s if isinstance(s, Worker) else Worker(s[0], trace, s[1]) for s in specs]


def summary(events: Sequence[SupervisorEvent]) -> list[tuple[object, ...]]:
    """Events as short tuples: easy to read in a failing assertion."""
    out: list[tuple[object, ...]] = []
    for e in events:
        if isinstance(e, ChildStarted):
            out.append(("started", e.id, e.at, e.incarnation))
        elif isinstance(e, ChildExited):
            out.append(("exited", e.id, e.at, e.reason))
        elif isinstance(e, ChildRestarted):
            out.append(("restarted", e.id, e.at, e.restart_count, e.cause))
        else:
            out.append(("gave_up", e.child_id, e.at, e.restarts))
    return out


async def gave_up(supervisor: Supervisor, ws: Sequence[Worker]) -> SupervisorGaveUp:
    """Run *supervisor* to completion (awaited directly) and return the give-up it raises."""
    with pytest.raises(SupervisorGaveUp) as info:
        await supervisor.run([w.spec() for w in ws])
    return info.value


# -- one_for_one --------------------------------------------------------------------------------


async def test_one_for_one_restarts_only_the_failed_child(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trace: Trace = []
    a, b = workers(trace, ("a", [("crash", 1.0), ("serve",)]), ("b", [("serve",)]))
    sup = Supervisor(strategy="one_for_one")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [a.spec(), b.spec()])
        await trio.sleep(2)
        await sup.stop()
        assert trio.current_time() == 2.0
    assert summary(sup.events) == [
        ("started", "a", 0.0, 1),
        ("started", "b", 0.0, 1),
        ("exited", "a", 1.0, "error"),
        ("restarted", "a", 1.0, 1, "a"),
        ("started", "a", 1.0, 2),
        # stop(): reverse start order
        ("exited", "b", 2.0, "shutdown"),
        ("exited", "a", 2.0, "shutdown"),
    ]
    assert (a.incarnations, b.incarnations) == (2, 1)
    crashed = sup.events[2]
    assert isinstance(crashed, ChildExited)
    assert crashed.error == "Boom: a crashed"
    assert crashed.incarnation == 1


async def test_permanent_child_returning_normally_is_restarted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trace: Trace = []
    (a,) = workers(trace, ("a", [("return", 1.0), ("serve",)]))
    sup = Supervisor()
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [a.spec()])
        await trio.sleep(1.5)
        assert [(c.id, c.state, c.incarnation, c.restart_count) for c in sup.children()] == [
            ("a", "running", 2, 1)
        ]
        await sup.stop()
    assert summary(sup.events)[1:4] == [
        ("exited", "a", 1.0, "normal"),
        ("restarted", "a", 1.0, 1, "a"),
        ("started", "a", 1.0, 2),
    ]


async def test_transient_child_restarted_on_error_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trace: Trace = []
    t_err = Worker("err", trace, [("crash", 1.0), ("serve",)], restart="transient")
    t_ok = Worker("ok", trace, [("return", 2.0)], restart="transient")
    sup = Supervisor()
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [t_err.spec(), t_ok.spec()])
        await trio.sleep(3)
        # A transient child that returned normally stays in the table, stopped (as in OTP).
        assert [(c.id, c.state) for c in sup.children()] == [("err", "running"), ("ok", "stopped")]
        await sup.stop()
    assert summary(sup.events) == [
        ("started", "err", 0.0, 1),
        ("started", "ok", 0.0, 1),
        ("exited", "err", 1.0, "error"),
        ("restarted", "err", 1.0, 1, "err"),
        ("started", "err", 1.0, 2),
        ("exited", "ok", 2.0, "normal"),
        ("exited", "err", 3.0, "shutdown"),
    ]
    assert sup.statistics().total_restarts == 1


async def test_temporary_child_is_never_restarted_and_removed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trace: Trace = []
    crash = Worker("crash", trace, [("crash", 1.0)], restart="temporary")
    ret = Worker("ret", trace, [("return", 2.0)], restart="temporary")
    sup = Supervisor()
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [crash.spec(), ret.spec()])
        await trio.sleep(3)
        assert sup.children() == ()
        await sup.stop()
    assert summary(sup.events) == [
        ("started", "crash", 0.0, 1),
        ("started", "ret", 0.0, 1),
        ("exited", "crash", 1.0, "error"),
        ("exited", "ret", 2.0, "normal"),
    ]
    assert (crash.incarnations, ret.incarnations) == (1, 1)


# -- one_for_all --------------------------------------------------------------------------------


async def test_one_for_all_stops_others_in_reverse_order_and_restarts_all(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trace: Trace = []
    a, b, c = workers(
        trace, ("a", [("serve",)]), ("b", [("crash", 1.0), ("serve",)]), ("c", [("serve",)])
    )
    sup = Supervisor(strategy="one_for_all")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [a.spec(), b.spec(), c.spec()])
        await trio.sleep(2)
        trace.append((trio.current_time(), "-", "stop"))
        await sup.stop()
    assert summary(sup.events)[3:] == [
        ("exited", "b", 1.0, "error"),
        ("exited", "c", 1.0, "shutdown"),
        ("exited", "a", 1.0, "shutdown"),
        ("restarted", "a", 1.0, 1, "b"),
        ("restarted", "b", 1.0, 1, "b"),
        ("restarted", "c", 1.0, 1, "b"),
        ("started", "a", 1.0, 2),
        ("started", "b", 1.0, 2),
        ("started", "c", 1.0, 2),
        ("exited", "c", 2.0, "shutdown"),
        ("exited", "b", 2.0, "shutdown"),
        ("exited", "a", 2.0, "shutdown"),
    ]
    # One failure costs one restart, however many children it takes down.
    assert sup.statistics().total_restarts == 1
    hooks = [(t, who) for t, who, what in trace if what == "stop hook"]
    assert hooks == [(1.0, "c"), (1.0, "a"), (2.0, "c"), (2.0, "b"), (2.0, "a")]


async def test_one_for_all_removes_temporary_bystanders(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trace: Trace = []
    tmp = Worker("tmp", trace, [("serve",)], restart="temporary")
    b, c = workers(trace, ("b", [("crash", 1.0), ("serve",)]), ("c", [("serve",)]))
    sup = Supervisor(strategy="one_for_all")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [tmp.spec(), b.spec(), c.spec()])
        await trio.sleep(2)
        assert [(ch.id, ch.state, ch.incarnation) for ch in sup.children()] == [
            ("b", "running", 2),
            ("c", "running", 2),
        ]
        await sup.stop()
    assert summary(sup.events)[3:9] == [
        ("exited", "b", 1.0, "error"),
        ("exited", "c", 1.0, "shutdown"),
        ("exited", "tmp", 1.0, "shutdown"),
        ("restarted", "b", 1.0, 1, "b"),
        ("restarted", "c", 1.0, 1, "b"),
        ("started", "b", 1.0, 2),
    ]
    assert tmp.incarnations == 1


async def test_one_for_all_restarts_a_stopped_transient_bystander_like_otp(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trace: Trace = []
    tr = Worker("tr", trace, [("return", 1.0), ("serve",)], restart="transient")
    (p,) = workers(trace, ("p", [("crash", 2.0), ("serve",)]))
    sup = Supervisor(strategy="one_for_all")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [tr.spec(), p.spec()])
        await trio.sleep(3)
        await sup.stop()
    assert summary(sup.events)[2:8] == [
        ("exited", "tr", 1.0, "normal"),
        ("exited", "p", 2.0, "error"),
        ("restarted", "tr", 2.0, 1, "p"),
        ("restarted", "p", 2.0, 1, "p"),
        ("started", "tr", 2.0, 2),
        ("started", "p", 2.0, 2),
    ]


# -- rest_for_one -------------------------------------------------------------------------------


async def test_rest_for_one_restarts_the_failed_child_and_later_ones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trace: Trace = []
    a, b, c, d = workers(
        trace,
        ("a", [("serve",)]),
        ("b", [("crash", 1.0), ("serve",)]),
        ("c", [("drain", 0.5)]),
        ("d", [("serve",)]),
    )
    sup = Supervisor(strategy="rest_for_one")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [w.spec() for w in (a, b, c, d)])
        await trio.sleep(2)
        await sup.stop()
    assert summary(sup.events)[4:13] == [
        ("exited", "b", 1.0, "error"),
        ("exited", "d", 1.0, "shutdown"),
        ("exited", "c", 1.5, "shutdown"),  # c takes 0.5 s to drain
        # decided (and counted) at 1.0, carried out once the bystanders have stopped
        ("restarted", "b", 1.0, 1, "b"),
        ("restarted", "c", 1.0, 1, "b"),
        ("restarted", "d", 1.0, 1, "b"),
        ("started", "b", 1.5, 2),
        ("started", "c", 1.5, 2),
        ("started", "d", 1.5, 2),
    ]
    assert (a.incarnations, b.incarnations, c.incarnations, d.incarnations) == (1, 2, 2, 2)


async def test_rest_for_one_removes_temporary_later_children(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trace: Trace = []
    a = Worker("a", trace, [("crash", 1.0), ("serve",)])
    tmp = Worker("tmp", trace, [("serve",)], restart="temporary")
    c = Worker("c", trace, [("serve",)])
    sup = Supervisor(strategy="rest_for_one")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [a.spec(), tmp.spec(), c.spec()])
        await trio.sleep(2)
        assert [ch.id for ch in sup.children()] == ["a", "c"]
        await sup.stop()
    assert [e for e in summary(sup.events) if e[0] == "restarted"] == [
        ("restarted", "a", 1.0, 1, "a"),
        ("restarted", "c", 1.0, 1, "a"),
    ]


# -- intensity ----------------------------------------------------------------------------------


async def test_intensity_exceeded_stops_children_in_reverse_order_and_raises(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trace: Trace = []
    first, flaky, last = workers(
        trace, ("first", [("serve",)]), ("flaky", [("crash", 1.0)]), ("last", [("serve",)])
    )
    sup = Supervisor(max_restarts=3, period=5.0)
    error = await gave_up(sup, [first, flaky, last])
    # Exits at t=1, 2, 3 are restarted; the fourth at t=4 makes 4 restarts within 5 s.
    assert trio.current_time() == 4.0
    assert error.child_id == "flaky"
    assert (error.restarts, error.max_restarts, error.period) == (4, 3, 5.0)
    assert isinstance(error.__cause__, Boom)
    assert str(error.__cause__) == "flaky crashed"
    assert isinstance(error, SwitchboardError)
    assert summary(sup.events)[-3:] == [
        ("gave_up", "flaky", 4.0, 4),
        ("exited", "last", 4.0, "shutdown"),
        ("exited", "first", 4.0, "shutdown"),
    ]
    assert [who for _, who, what in trace if what == "stop hook"] == ["last", "first"]
    assert [e[2] for e in summary(sup.events) if e[0] == "restarted"] == [1.0, 2.0, 3.0]
    assert [c.state for c in sup.children()] == ["stopped", "stopped", "stopped"]


@pytest.mark.parametrize(("last_gap", "gives_up"), [(3.0, True), (3.5, False)])
async def test_intensity_period_boundary_matches_otp(
    last_gap: float, gives_up: bool, autojump_clock: trio.testing.MockClock
) -> None:
    # Restarts at t = 1, 2, 3 and then 3 + last_gap. At t=6 the restart at t=1 is exactly
    # `period` old and still counts (OTP: R >= Now - Period); at t=6.5 it has left.
    trace: Trace = []
    script: list[Behaviour] = [("crash", 1.0), ("crash", 1.0), ("crash", 1.0)]
    script += [("crash", last_gap), ("serve",)]
    (w,) = workers(trace, ("w", script))
    sup = Supervisor(max_restarts=3, period=5.0)
    if gives_up:
        await gave_up(sup, [w])
        assert trio.current_time() == 6.0
        return
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [w.spec()])
        await trio.sleep(10)
        assert sup.statistics().restarts_in_period == 1  # t >= 10 - 5: only 6.5
        await sup.stop()
    assert [e[2] for e in summary(sup.events) if e[0] == "restarted"] == [1.0, 2.0, 3.0, 6.5]


async def test_gave_up_reaches_the_parent_nursery_as_a_group(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trace: Trace = []
    (w,) = workers(trace, ("w", [("crash", 1.0)]))
    sup = Supervisor(max_restarts=1, period=10.0)
    caught: list[BaseException] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run, [w.spec()])
            await trio.sleep_forever()
    except* SupervisorGaveUp as group:
        caught.extend(group.exceptions)
    assert trio.current_time() == 2.0
    assert len(caught) == 1
    assert isinstance(caught[0].__cause__, Boom)


async def test_statistics_restarts_in_period_decays(autojump_clock: trio.testing.MockClock) -> None:
    trace: Trace = []
    (w,) = workers(trace, ("w", [("crash", 1.0), ("crash", 1.0), ("serve",)]))
    sup = Supervisor(max_restarts=5, period=5.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [w.spec()])
        seen = []
        for t in (3.0, 6.0, 7.0, 7.5):
            await trio.sleep_until(t)
            seen.append(sup.statistics().restarts_in_period)
        stats = sup.statistics()
        await sup.stop()
    assert seen == [2, 2, 1, 0]  # restarts at t=1 and t=2
    assert stats.total_restarts == 2
    assert stats.running
    assert (stats.strategy, stats.max_restarts, stats.period) == ("one_for_one", 5, 5.0)
    assert not sup.statistics().running


# -- failing starts -----------------------------------------------------------------------------


async def test_child_failing_to_start_counts_each_time_and_intensity_gives_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trace: Trace = []
    (w,) = workers(trace, ("w", [("crash", 1.0), ("fail_start", 0.5)]))
    sup = Supervisor(max_restarts=3, period=5.0)
    error = await gave_up(sup, [w])
    # Restarts at 1.0 (crash), 1.5 and 2.0 (failed starts); the failure at 2.5 is the 4th.
    assert trio.current_time() == 2.5
    assert isinstance(error.__cause__, Boom)
    assert str(error.__cause__) == "w cannot start"
    exits = [e for e in sup.events if isinstance(e, ChildExited)]
    assert [(e.at, e.reason, e.during_start, e.incarnation) for e in exits] == [
        (1.0, "error", False, 1),
        (1.5, "error", True, 2),
        (2.0, "error", True, 3),
        (2.5, "error", True, 4),
    ]


async def test_supervisor_stays_responsive_while_a_child_keeps_failing_to_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trace: Trace = []
    (bad,) = workers(trace, ("bad", [("crash", 1.0), ("fail_start", 0.5)]))
    (good,) = workers(trace, ("good", [("serve",)]))
    sup = Supervisor(max_restarts=1000, period=5.0, backoff=(1.0, 1.0))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [bad.spec(), good.spec()])
        await trio.sleep_until(3.2)
        # Timeline of bad: crash 1.0, start 2.0 fails 2.5, start 3.5 ... we are in its backoff.
        assert [(c.id, c.state) for c in sup.children()] == [
            ("bad", "restarting"),
            ("good", "running"),
        ]
        new = Worker("new", trace, [("serve",)])
        await sup.add_child(new.spec())
        assert trio.current_time() == 3.2
        await trio.sleep_until(3.7)  # now bad's start (3.5 .. 4.0) is in progress
        assert sup.children()[0].state == "starting"
        await sup.stop()
        assert trio.current_time() == 3.7  # the start in progress is interrupted at once
    assert [(t, what) for t, who, what in trace if who == "bad"] == [
        (0.0, "started"),
        (1.0, "crash"),
        (2.5, "start failed"),
    ]
    assert summary(sup.events)[-3:] == [
        ("exited", "bad", 3.7, "shutdown"),
        ("exited", "new", 3.7, "shutdown"),
        ("exited", "good", 3.7, "shutdown"),
    ]


async def test_initial_start_failure_stops_started_children_and_fails_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trace: Trace = []
    a, b, c = workers(trace, ("a", [("serve",)]), ("b", [("serve",)]), ("c", [("fail_start", 1.0)]))
    sup = Supervisor()
    async with trio.open_nursery() as nursery:
        with pytest.raises(ChildStartFailed) as info:
            await nursery.start(sup.run, [a.spec(), b.spec(), c.spec()])
    assert info.value.child_id == "c"
    assert isinstance(info.value.__cause__, Boom)
    assert trio.current_time() == 1.0
    assert [who for _, who, what in trace if what == "stop hook"] == ["b", "a"]
    assert sup.statistics().total_restarts == 0


async def test_child_returning_without_calling_started_is_a_start_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def lazy(*, task_status: trio.TaskStatus[None]) -> None:
        return

    sup = Supervisor()
    with pytest.raises(ChildStartFailed) as info:
        await sup.run([ChildSpec("lazy", lazy)])
    assert isinstance(info.value.__cause__, RuntimeError)
    (exited,) = sup.events
    assert isinstance(exited, ChildExited)
    assert (exited.reason, exited.during_start) == ("error", True)


async def test_stop_interrupts_a_start_that_hangs(autojump_clock: trio.testing.MockClock) -> None:
    trace: Trace = []
    (w,) = workers(trace, ("w", [("crash", 1.0), ("hang_start",)]))
    sup = Supervisor()
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [w.spec()])
        await trio.sleep(100)
        assert sup.children()[0].state == "starting"
        await sup.stop()
    assert trio.current_time() == 100.0
    last = sup.events[-1]
    assert isinstance(last, ChildExited)
    assert (last.at, last.reason, last.during_start) == (100.0, "shutdown", True)


# -- backoff ------------------------------------------------------------------------------------


async def test_restart_backoff_timeline(autojump_clock: trio.testing.MockClock) -> None:
    trace: Trace = []
    (w,) = workers(trace, ("w", [("crash", 0.0)]))
    sup = Supervisor(max_restarts=10, period=100.0, backoff=(1.0, 4.0))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [w.spec()])
        await trio.sleep_until(12.0)  # in the backoff wait before the start at t=15
        await sup.stop()
        assert trio.current_time() == 12.0
    starts = [e for e in sup.events if isinstance(e, ChildStarted)]
    restarts = [e for e in sup.events if isinstance(e, ChildRestarted)]
    assert [e.at for e in starts] == [0.0, 1.0, 3.0, 7.0, 11.0]
    assert [(e.at, e.delay) for e in restarts] == [
        (0.0, 1.0),
        (1.0, 2.0),
        (3.0, 4.0),
        (7.0, 4.0),
        (11.0, 4.0),
    ]
    assert [c.state for c in sup.children()] == ["stopped"]


async def test_backoff_is_per_child_restarts_within_the_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # After a quiet period the backoff starts again from `initial`.
    trace: Trace = []
    (w,) = workers(trace, ("w", [("crash", 0.0), ("crash", 10.0), ("serve",)]))
    sup = Supervisor(max_restarts=10, period=5.0, backoff=(1.0, 8.0))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [w.spec()])
        await trio.sleep(20)
        await sup.stop()
    restarts = [(e.at, e.delay) for e in sup.events if isinstance(e, ChildRestarted)]
    assert restarts == [(0.0, 1.0), (11.0, 1.0)]


# -- shutdown -----------------------------------------------------------------------------------


async def test_stop_is_reverse_start_order_with_per_child_timeouts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trace: Trace = []
    quick = Worker("quick", trace, [("serve",)])
    stubborn = Worker("stubborn", trace, [("ignore_stop",)], shutdown_timeout=2.0)
    slow = Worker("slow", trace, [("drain", 1.0)])
    sup = Supervisor()
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [quick.spec(), stubborn.spec(), slow.spec()])
        await trio.sleep(1)
        await sup.stop()
        assert trio.current_time() == 4.0
    assert trace[3:] == [
        (1.0, "slow", "stop hook"),
        (2.0, "slow", "returned"),
        (2.0, "stubborn", "stop hook"),
        (4.0, "stubborn", "cancelled"),  # exactly at its 2 s shutdown timeout
        (4.0, "quick", "stop hook"),
        (4.0, "quick", "returned"),
    ]
    assert summary(sup.events)[3:] == [
        ("exited", "slow", 2.0, "shutdown"),
        ("exited", "stubborn", 4.0, "shutdown"),
        ("exited", "quick", 4.0, "shutdown"),
    ]


async def test_child_raising_during_shutdown_is_reported_not_restarted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def grumpy(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            raise Boom("while stopping")

    sup = Supervisor()
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [ChildSpec("g", grumpy, shutdown_timeout=1.0)])
        await sup.stop()
    assert trio.current_time() == 1.0
    last = sup.events[-1]
    assert isinstance(last, ChildExited)
    assert (last.reason, last.error) == ("shutdown", "Boom: while stopping")


async def test_stop_hook_that_raises_is_logged_and_child_still_stopped(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def child(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep_forever()

    def bad_hook() -> None:
        raise Boom("hook")

    sup = Supervisor()
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [ChildSpec("c", child, stop=bad_hook, shutdown_timeout=0.5)])
        await sup.stop()
    assert trio.current_time() == 0.5
    assert any("stop hook of child 'c' raised" in r.getMessage() for r in caplog.records)


async def test_exit_racing_with_stop_is_not_restarted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The child returns at t=1 while stop() is called at t=1: trio runs the two in either
    # order, so repeat; whichever came first, a stopping supervisor restarts nothing.
    for _ in range(30):
        trace: Trace = []
        (w,) = workers(trace, ("w", [("return", 1.0), ("serve",)]))
        sup = Supervisor()
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run, [w.spec()])
            await trio.sleep(1.0)
            await sup.stop()
        assert not [e for e in sup.events if isinstance(e, ChildRestarted)]
        assert w.incarnations == 1


async def test_outer_cancellation_does_not_restart(autojump_clock: trio.testing.MockClock) -> None:
    trace: Trace = []
    a, b = workers(trace, ("a", [("serve",)]), ("b", [("ignore_stop",)]))
    sup = Supervisor(strategy="one_for_all")
    with trio.move_on_after(2.0) as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run, [a.spec(), b.spec()])
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert trio.current_time() == 2.0
    assert sorted((t, who, what) for t, who, what in trace if what == "cancelled") == [
        (2.0, "a", "cancelled"),
        (2.0, "b", "cancelled"),
    ]
    assert not [e for e in sup.events if isinstance(e, ChildRestarted)]
    assert sorted(e[1:] for e in summary(sup.events) if e[0] == "exited") == [
        ("a", 2.0, "shutdown"),
        ("b", 2.0, "shutdown"),
    ]
    stats = sup.statistics()
    assert (stats.total_restarts, stats.running) == (0, False)
    assert (a.incarnations, b.incarnations) == (1, 1)
    await sup.stop()  # after the end: returns at once


async def test_outer_cancellation_during_backoff_and_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trace: Trace = []
    (w,) = workers(trace, ("w", [("crash", 1.0), ("hang_start",)]))
    sup = Supervisor(backoff=(1.0, 1.0))
    with trio.move_on_after(5.0):
        await sup.run([w.spec()])
    assert trio.current_time() == 5.0
    assert w.incarnations == 2
    assert not sup.statistics().running


# -- dynamic children ---------------------------------------------------------------------------


async def test_add_and_remove_children_while_running(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trace: Trace = []
    (a,) = workers(trace, ("a", [("serve",)]))
    sup = Supervisor()
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [a.spec()])
        await trio.sleep(1)
        d = Worker("d", trace, [("crash", 1.0), ("drain", 0.25)])
        await sup.add_child(d.spec())
        assert trio.current_time() == 1.0
        assert trace[-1] == (1.0, "d", "started")  # started before add_child returned
        with pytest.raises(ValueError, match="already exists"):
            await sup.add_child(Worker("a", trace).spec())
        bad = Worker("bad", trace, [("fail_start", 0.5)])
        with pytest.raises(ChildStartFailed) as info:
            await sup.add_child(bad.spec())
        assert isinstance(info.value.__cause__, Boom)
        assert trio.current_time() == 1.5
        await trio.sleep_until(3.0)  # d crashed at 2.0 and was restarted
        assert [(c.id, c.state, c.incarnation) for c in sup.children()] == [
            ("a", "running", 1),
            ("d", "running", 2),
        ]
        await sup.remove_child("d")
        assert trio.current_time() == 3.25  # graceful: the stop hook, then a 0.25 s drain
        assert [c.id for c in sup.children()] == ["a"]
        with pytest.raises(LookupError):
            await sup.remove_child("d")
        await trio.sleep(10)
        assert d.incarnations == 2  # removed children are not restarted
        await sup.stop()
    assert sup.statistics().total_restarts == 1  # d's crash; not the failed add
    assert summary(sup.events)[1:] == [
        ("started", "d", 1.0, 1),
        ("exited", "bad", 1.5, "error"),
        ("exited", "d", 2.0, "error"),
        ("restarted", "d", 2.0, 1, "d"),
        ("started", "d", 2.0, 2),
        ("exited", "d", 3.25, "shutdown"),
        ("exited", "a", 13.25, "shutdown"),
    ]
    with pytest.raises(SupervisorClosed):
        await sup.add_child(Worker("late", trace).spec())
    with pytest.raises(SupervisorClosed):
        await sup.remove_child("a")


async def test_dynamic_child_joins_the_restart_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trace: Trace = []
    (a,) = workers(trace, ("a", [("crash", 2.0), ("serve",)]))
    sup = Supervisor(strategy="rest_for_one")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [a.spec()])
        await sup.add_child(Worker("late", trace, [("serve",)]).spec())
        await trio.sleep(3)
        await sup.stop()
    assert summary(sup.events)[2:5] == [
        ("exited", "a", 2.0, "error"),
        ("exited", "late", 2.0, "shutdown"),
        ("restarted", "a", 2.0, 1, "a"),
    ]


async def test_remove_child_waiting_for_its_restart(autojump_clock: trio.testing.MockClock) -> None:
    trace: Trace = []
    (w,) = workers(trace, ("w", [("crash", 1.0)]))
    sup = Supervisor(backoff=(5.0, 5.0))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [w.spec()])
        await trio.sleep(2)
        assert sup.children()[0].state == "restarting"
        await sup.remove_child("w")
        assert sup.children() == ()
        await trio.sleep(10)
        await sup.stop()
    assert w.incarnations == 1


# -- events -------------------------------------------------------------------------------------


async def test_subscriber_sees_every_event_in_order_and_the_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trace: Trace = []
    (a,) = workers(trace, ("a", [("crash", 1.0), ("serve",)]))
    sup = Supervisor()
    channel = sup.subscribe()
    received: list[SupervisorEvent] = []

    async def consume() -> None:
        async for event in channel:
            received.append(event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await nursery.start(sup.run, [a.spec()])
        await trio.sleep(2)
        await sup.stop()
    assert received == list(sup.events)
    assert summary(received) == [
        ("started", "a", 0.0, 1),
        ("exited", "a", 1.0, "error"),
        ("restarted", "a", 1.0, 1, "a"),
        ("started", "a", 1.0, 2),
        ("exited", "a", 2.0, "shutdown"),
    ]
    # Events are typed wire data: a tagged union that round-trips through JSON.
    wire = msgspec.json.encode(received)
    assert b'"type":"child_restarted"' in wire
    assert msgspec.json.decode(wire, type=list[SupervisorEvent]) == received


async def test_slow_subscriber_never_blocks_and_keeps_the_newest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trace: Trace = []
    (w,) = workers(trace, ("w", [("crash", 1.0)]))
    sup = Supervisor(max_restarts=100, period=1.0)
    stuck = sup.subscribe(buffer=2)  # never read while running
    gone = sup.subscribe(buffer=1)
    gone.close()
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [w.spec()])
        await trio.sleep_until(10.5)
        assert sup.statistics().subscribers == 1  # the closed one was dropped
        await sup.stop()
    # The supervisor kept its exact timeline: a restart every second.
    assert [e.at for e in sup.events if isinstance(e, ChildRestarted)] == [
        float(t) for t in range(1, 11)
    ]
    total = len(sup.events)
    assert sup.statistics().events_dropped == total - 2
    left = [event async for event in stuck]  # the newest two, then the end of the channel
    assert left == list(sup.events)[-2:]


async def test_subscribe_after_the_end_gets_an_ended_channel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sup = Supervisor()
    await sup.stop()  # before run: run stops right after starting
    await sup.run([])
    channel = sup.subscribe()
    with pytest.raises(trio.EndOfChannel):
        await channel.receive()


async def test_event_history_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    trace: Trace = []
    (w,) = workers(trace, ("w", [("crash", 1.0)]))
    sup = Supervisor(max_restarts=100, period=1.0, event_history=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [w.spec()])
        await trio.sleep(5.5)
        await sup.stop()
    assert len(sup.events) == 4
    # Asked to stop at 5.5, w ignores its stop hook and crashes at 6.0: a crash while being
    # stopped is part of the shutdown, never restarted.
    last = sup.events[-1]
    assert isinstance(last, ChildExited)
    assert (last.at, last.reason, last.error) == (6.0, "shutdown", "Boom: w crashed")


async def test_every_event_is_logged(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    caplog.set_level(logging.INFO, logger="switchboard.supervisor")
    trace: Trace = []
    (w,) = workers(trace, ("w", [("crash", 1.0)]))
    sup = Supervisor(max_restarts=1, period=5.0, name="pool")
    await gave_up(sup, [w])
    records = [r for r in caplog.records if r.name == "switchboard.supervisor"]
    assert [r.levelno for r in records] == [
        logging.INFO,  # started
        logging.ERROR,  # exited: error
        logging.INFO,  # restarted
        logging.INFO,  # started
        logging.ERROR,  # exited: error
        logging.ERROR,  # gave up
    ]
    assert len(records) == len(sup.events)
    assert records[-1].getMessage().startswith("pool: gave up after child 'w'")
    assert isinstance(sup.events[-1], GaveUp)


# -- API ----------------------------------------------------------------------------------------


async def test_open_supervisor_stops_gracefully_on_exit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trace: Trace = []
    a, b = workers(trace, ("a", [("serve",)]), ("b", [("drain", 1.0)]))
    async with open_supervisor([a.spec(), b.spec()], strategy="one_for_all") as sup:
        assert [c.state for c in sup.children()] == ["running", "running"]
        await trio.sleep(1)
    assert trio.current_time() == 2.0
    assert [(t, who) for t, who, what in trace if what == "returned"] == [(2.0, "b"), (2.0, "a")]


async def test_run_only_once_and_rejects_duplicate_ids(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sup = Supervisor()
    trace: Trace = []
    with pytest.raises(ValueError, match="duplicate"):
        await sup.run([Worker("x", trace).spec(), Worker("x", trace).spec()])
    await sup.stop()
    await sup.run([])  # stop() before run(): run stops right after starting
    with pytest.raises(RuntimeError):
        await sup.run([])
    with pytest.raises(SupervisorClosed):
        await Supervisor().add_child(Worker("x", trace).spec())


def test_validation() -> None:
    async def f(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()

    with pytest.raises(ValueError, match="strategy"):
        Supervisor(strategy="all_for_one")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Supervisor(max_restarts=-1)
    with pytest.raises(ValueError):
        Supervisor(backoff=(2.0, 1.0))
    with pytest.raises(ValueError, match="id"):
        ChildSpec("", f)
    with pytest.raises(ValueError, match="restart"):
        ChildSpec("x", f, restart="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shutdown_timeout"):
        ChildSpec("x", f, shutdown_timeout=-1.0)
    with pytest.raises(ValueError, match="buffer"):
        Supervisor().subscribe(buffer=0)


@pytest.mark.parametrize("strategy", ["one_for_one", "one_for_all", "rest_for_one"])
async def test_every_strategy_gives_up_after_intensity(
    strategy: Strategy, autojump_clock: trio.testing.MockClock
) -> None:
    trace: Trace = []
    ws = workers(trace, ("a", [("serve",)]), ("b", [("crash", 1.0)]), ("c", [("serve",)]))
    sup = Supervisor(strategy=strategy, max_restarts=2, period=10.0)
    error = await gave_up(sup, ws)
    assert trio.current_time() == 3.0
    assert error.child_id == "b"
    assert [e[2] for e in summary(sup.events) if e[0] == "gave_up"] == [3.0]


async def test_child_raising_an_exception_group_is_an_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    incarnations = 0

    async def with_tasks(*, task_status: trio.TaskStatus[None]) -> None:
        nonlocal incarnations
        incarnations += 1
        async with trio.open_nursery() as nursery:
            task_status.started()
            nursery.start_soon(trio.sleep_forever)
            if incarnations == 1:
                await trio.sleep(1)
                raise Boom("inside a nursery")

    sup = Supervisor()
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [ChildSpec("n", with_tasks, shutdown_timeout=0.5)])
        await trio.sleep(2)
        await sup.stop()
    assert summary(sup.events) == [
        ("started", "n", 0.0, 1),
        ("exited", "n", 1.0, "error"),
        ("restarted", "n", 1.0, 1, "n"),
        ("started", "n", 1.0, 2),
        ("exited", "n", 2.5, "shutdown"),  # no stop hook: cancelled at the timeout
    ]
    crashed = sup.events[1]
    assert isinstance(crashed, ChildExited)
    assert crashed.error is not None
    assert crashed.error.startswith("ExceptionGroup")


async def test_supervises_a_provider_actor(autojump_clock: trio.testing.MockClock) -> None:
    # The child this supervisor exists for: the stop hook closes the connection's mailbox,
    # the actor drains and returns.
    cfg = ConnectionConfig(
        name="c", provider="openai", base_url="http://fake/v1", default_model="m"
    )
    conn = Connection(cfg, transport=httpx.MockTransport(lambda request: httpx.Response(500)))
    spec = ChildSpec("c", ProviderActor(conn).run, stop=conn.mailbox.close)
    sup = Supervisor()
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [spec])
        running = [conn.running]
        await trio.sleep(1)
        await sup.stop()
        running.append(conn.running)
    assert running == [True, False]
    assert summary(sup.events) == [("started", "c", 0.0, 1), ("exited", "c", 1.0, "shutdown")]


# -- any script: the supervisor never wedges and its events stay consistent ---------------------

behaviours = st.one_of(
    st.sampled_from([("serve",), ("ignore_stop",), ("hang_start",)]),
    st.tuples(
        st.sampled_from(["drain", "crash", "return", "fail_start"]),
        st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    ),
)


@settings(max_examples=120, deadline=None)
@given(
    strategy=st.sampled_from(["one_for_one", "one_for_all", "rest_for_one"]),
    children=st.lists(
        st.tuples(
            st.sampled_from(["permanent", "transient", "temporary"]),
            st.lists(behaviours, min_size=1, max_size=5),
        ),
        min_size=1,
        max_size=4,
    ),
    max_restarts=st.integers(0, 4),
    period=st.sampled_from([1.0, 5.0]),
    backoff=st.sampled_from([None, (0.5, 2.0)]),
    stop_at=st.sampled_from([0.0, 0.5, 1.0, 3.0, 10.0]),
    removes=st.lists(st.tuples(st.sampled_from([0.25, 1.5, 4.0]), st.integers(0, 3)), max_size=2),
)
def test_any_script_ends_cleanly_with_consistent_events(
    strategy: Strategy,
    children: list[tuple[RestartType, list[Behaviour]]],
    max_restarts: int,
    period: float,
    backoff: tuple[float, float] | None,
    stop_at: float,
    removes: list[tuple[float, int]],
) -> None:
    trace: Trace = []
    ws = [
        Worker(f"w{i}", trace, script, restart=restart, shutdown_timeout=1.0)
        for i, (restart, script) in enumerate(children)
    ]
    sup = Supervisor(strategy=strategy, max_restarts=max_restarts, period=period, backoff=backoff)
    outcome: list[str] = []

    async def remove(at: float, index: int) -> None:
        await trio.sleep_until(at)
        with contextlib.suppress(LookupError, SupervisorClosed):
            await sup.remove_child(f"w{index}")

    async def driver() -> None:
        async with trio.open_nursery() as nursery:
            for at, index in removes:
                nursery.start_soon(remove, at, index)
            await trio.sleep_until(stop_at)
            await sup.stop()

    async def main() -> None:
        with trio.fail_after(1000):  # virtual seconds: a wedged supervisor fails here
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(driver)
                    await sup.run([w.spec() for w in ws])
                    nursery.cancel_scope.cancel()
                outcome.append("stopped")
            except* SupervisorGaveUp:
                outcome.append("gave up")
            except* ChildStartFailed:
                outcome.append("start failed")

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    events = list(sup.events)
    starts = [(e.id, e.incarnation) for e in events if isinstance(e, ChildStarted)]
    exits = [(e.id, e.incarnation) for e in events if isinstance(e, ChildExited)]
    assert len(set(starts)) == len(starts)
    assert len(set(exits)) == len(exits)
    # Every incarnation that started has exited by the end, after its start.
    assert set(starts) <= set(exits)
    position = {
        (type(e), e.id, e.incarnation): i
        for i, e in enumerate(events)
        if isinstance(e, ChildStarted | ChildExited)
    }
    for child_id, incarnation in starts:
        assert (
            position[ChildStarted, child_id, incarnation]
            < position[ChildExited, child_id, incarnation]
        )
    # Event times never go backwards for decisions taken by the control loop.
    times = [e.at for e in events if not isinstance(e, ChildExited)]
    assert times == sorted(times)
    # Restart decisions (one ChildRestarted naming the failed child itself) respect intensity.
    decisions = [e.at for e in events if isinstance(e, ChildRestarted) and e.id == e.cause]
    history: tuple[float, ...] = ()
    for at in decisions:
        history, allowed = RestartIntensity(max_restarts, period).add_restart(history, at)
        assert allowed
    stats = sup.statistics()
    assert not stats.running
    assert len(decisions) <= stats.total_restarts <= len(decisions) + 1
    gave = [i for i, e in enumerate(events) if isinstance(e, GaveUp)]
    if outcome == ["gave up"]:
        assert len(gave) == 1
        after = events[gave[0] + 1 :]
        assert all(isinstance(e, ChildExited) for e in after)
    else:
        assert not gave
    assert all(c.state == "stopped" for c in sup.children())
