"""The status page's data side, in memory and in virtual time (``autojump_clock``).

`StatusPage` streams are driven with a scripted snapshot source (exact times of the first
snapshot, the next change, the pings; one build per tick however many viewers; `close`);
`build_snapshot` is fed real `ConnectionMetrics`; the HTTP face's three routes are called as
an ASGI app (no sockets): the public shell and its headers, the token by header or query
parameter, a stream that ends when its viewer leaves or the face shuts down. The browser
test is ``tests/integration/test_status_page.py``.
"""

from __future__ import annotations

import json
import math
from typing import Any, cast

import msgspec
import pytest
import trio

from actors._client_keys import ClientKeys, ClientStatistics
from actors._http_face import HttpFace
from actors._metrics import ConnectionMetrics, ConnectionMetricsSnapshot
from actors._status_html import BODY, SCRIPT, STYLE
from actors._status_page import (
    CONTENT_SECURITY_POLICY,
    PAGE,
    StatusPage,
    StatusSnapshot,
    Totals,
    build_snapshot,
    query_token,
    timing_view,
)
from protocol._config import GatewayConfig, Secret
from protocol._errors import ErrorKind
from protocol._messages import Usage

TOKEN = "page-t0ken"
CONFIG = GatewayConfig(port=0, tokens=[Secret(TOKEN)])


def snapshot(requests: int = 0) -> StatusSnapshot:
    totals = Totals(
        requests=requests,
        completions=requests,
        failures={},
        failovers=0,
        queued=0,
        in_flight=0,
        input_tokens=0,
        output_tokens=0,
        cost=None,
    )
    return StatusSnapshot(status="ok", totals=totals, connections=[])


class Source:
    """A scripted runtime: ``requests`` is what the next snapshot says."""

    def __init__(self) -> None:
        self.requests = 0
        self.calls = 0

    def status_snapshot(self) -> StatusSnapshot:
        self.calls += 1
        return snapshot(self.requests)


class Viewer:
    """Collects one stream's writes with their (virtual) times."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, bytes]] = []

    async def write(self, data: bytes) -> None:
        self.writes.append((trio.current_time(), data))

    def events(self) -> list[tuple[float, str]]:
        """``(time, "data:<requests>" | "ping" | "retry")`` for each write."""
        out = []
        for at, data in self.writes:
            if data.startswith(b"retry:"):
                out.append((at, "retry"))
            elif data.startswith(b"event: ping"):
                out.append((at, "ping"))
            else:
                assert data.startswith(b"data: ")
                assert data.endswith(b"\n\n")
                body = json.loads(data[6:])
                out.append((at, f"data:{body['totals']['requests']}"))
        return out


# --------------------------------------------------------------------------- streams


async def test_a_stream_sends_the_snapshot_then_changes_then_pings(autojump_clock: Any) -> None:
    source = Source()
    page = StatusPage(source, interval=1.0, ping_every=3)
    viewer = Viewer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(page.stream, viewer.write)
        await trio.sleep(2.5)
        source.requests = 1  # seen at the next check, t = 3
        await trio.sleep(8)  # until t = 10.5
        nursery.cancel_scope.cancel()  # the viewer leaves
    assert viewer.events() == [
        (0.0, "retry"),
        (0.0, "data:0"),
        (3.0, "data:1"),
        (6.0, "ping"),  # three quiet checks: 4, 5, 6
        (9.0, "ping"),
    ]
    assert viewer.writes[0][1] == b"retry: 2000\n\n"
    assert page.builds == 11  # one per check, t = 0 .. 10


async def test_viewers_share_one_build_per_check(autojump_clock: Any) -> None:
    source = Source()
    page = StatusPage(source, interval=1.0)
    viewers = [Viewer() for _ in range(5)]
    async with trio.open_nursery() as nursery:
        for viewer in viewers:
            nursery.start_soon(page.stream, viewer.write)
            await trio.sleep(0.1)  # joined at 0.0, 0.1, ... 0.4
        await trio.sleep(9.55)  # until t = 10.05
        nursery.cancel_scope.cancel()
    # Checks at 0.0, 0.1, ... fall within half an interval of the first build of each second.
    assert source.calls == page.builds == 11
    assert all(v.events()[1][1] == "data:0" for v in viewers)


async def test_close_ends_every_stream_and_refuses_new_viewers(autojump_clock: Any) -> None:
    page = StatusPage(Source())
    viewers = [Viewer(), Viewer()]
    async with trio.open_nursery() as nursery:
        for viewer in viewers:
            nursery.start_soon(page.stream, viewer.write)
        await trio.sleep(5)
        page.close()
    assert trio.current_time() == 5.0  # the streams ended at once
    with page.viewer() as admitted:
        assert not admitted
    late = Viewer()
    await page.stream(late.write)  # returns at once, writes nothing
    assert late.writes == []


def test_the_number_of_viewers_is_bounded() -> None:
    page = StatusPage(Source(), max_viewers=2)
    with page.viewer() as one, page.viewer() as two, page.viewer() as three:
        assert (one, two, three) == (True, True, False)
        assert page.viewers == 2
    assert page.viewers == 0
    with page.viewer() as again:
        assert again


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        StatusPage(Source(), interval=0)
    with pytest.raises(ValueError, match="max_viewers"):
        StatusPage(Source(), max_viewers=0)


# --------------------------------------------------------------------------- the snapshot


class Row(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    provider: str = "openai"
    running: bool = True
    breaker: str = "closed"
    queued: int = 0
    in_flight: int = 0
    parked_for: float | None = None
    incarnation: int = 1


class Metrics(msgspec.Struct, frozen=True, kw_only=True):
    connections: dict[str, ConnectionMetricsSnapshot]
    failovers: int = 0
    requests: int = 0
    completions: int = 0
    failures: dict[str, int] = {}
    clients: dict[str, ClientStatistics] = {}


def test_build_snapshot_from_health_and_metrics() -> None:
    main = ConnectionMetrics()
    main.requests, main.attempts, main.retries = 3, 4, 1
    main.record_usage("gpt", Usage(input_tokens=10, output_tokens=20), cost=0.5)
    main.record_usage("gpt", Usage(input_tokens=1, output_tokens=2), cost=None, wasted=True)
    main.record_outcome(None)
    main.record_outcome(None)
    main.record_outcome(ErrorKind.TIMEOUT)
    for seconds in (0.03, 0.2, 0.2, 0.7):
        main.latency.observe(seconds)
    main.ttft.observe(120.0)  # beyond the largest bucket
    rows = [
        Row(name="main", queued=2, in_flight=1),
        Row(name="spare", breaker="open", parked_for=2.2),
        Row(name="held", breaker="forced_open", parked_for=math.inf, incarnation=3),
    ]
    metrics = Metrics(
        connections={"main": main.snapshot(), "spare": ConnectionMetrics().snapshot()},
        failovers=1,
        requests=5,
        completions=3,
        failures={"timeout": 2},
        clients={"zed": ClientStatistics(name="zed"), "ann": ClientStatistics(name="ann")},
    )
    snap = build_snapshot("degraded", rows, metrics)
    assert snap.status == "degraded"
    assert [c.name for c in snap.connections] == ["main", "spare", "held"]
    m, spare, held = snap.connections
    assert (m.queued, m.in_flight, m.requests, m.completions) == (2, 1, 3, 2)
    assert (m.attempts, m.retries, m.failures) == (4, 1, {"timeout": 1})
    assert (m.input_tokens, m.output_tokens, m.cost) == (11, 22, 0.5)
    assert m.latency.count == 4
    assert m.latency.mean == pytest.approx(0.2825)
    assert (m.latency.p50, m.latency.p95, m.latency.top) == (0.25, 1.0, 60.0)
    assert (m.first_token.count, m.first_token.p50, m.first_token.p95) == (1, None, None)
    assert (m.parked, m.parked_for) == (False, None)
    assert (spare.parked, spare.parked_for, spare.cost) == (True, 3.0, None)
    assert (held.parked, held.parked_for, held.requests, held.incarnation) == (True, None, 0, 3)
    assert held.latency.count == 0
    t = snap.totals
    assert (t.requests, t.completions, t.failures, t.failovers) == (5, 3, {"timeout": 2}, 1)
    assert (t.queued, t.in_flight, t.input_tokens, t.output_tokens, t.cost) == (2, 1, 11, 22, 0.5)
    assert [c.name for c in snap.clients] == ["ann", "zed"]
    msgspec.json.encode(snap)  # no infinity anywhere: JSON can carry it


def test_an_empty_histogram_reads_as_nothing() -> None:
    view = timing_view(ConnectionMetrics().snapshot().latency)
    assert (view.count, view.mean, view.p50, view.p95) == (0, None, None, None)


def test_the_query_token() -> None:
    assert query_token({"query_string": b"token=abc&x=1"}) == "abc"
    assert query_token({"query_string": b"token=a%2Bb%3D"}) == "a+b="
    assert query_token({"query_string": b"x=1"}) is None
    assert query_token({}) is None


def test_the_page_is_self_contained_and_its_policy_allows_exactly_its_blocks() -> None:
    html = PAGE.decode()
    assert STYLE in html
    assert SCRIPT in html
    assert "http://" not in html
    assert "https://" not in html
    assert "src=" not in html  # no external script, image or frame
    assert "innerHTML" not in SCRIPT  # text only: names can never become markup
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    assert CONTENT_SECURITY_POLICY.count("'sha256-") == 2
    assert 'id="connections"' in BODY


# --------------------------------------------------------------------------- the face


class Backend:
    """Enough of a runtime for the face's status routes."""

    def __init__(self) -> None:
        self.source = Source()

    def status_snapshot(self) -> StatusSnapshot:
        return self.source.status_snapshot()


class Call:
    """One request to the face's ASGI app."""

    def __init__(self, face: HttpFace, path: str, *, query: bytes = b"", auth: bool = True):
        headers = [(b"authorization", f"Bearer {TOKEN}".encode())] if auth else []
        self.face = face
        self.scope = {
            "type": "http",
            "method": "GET",
            "path": path,
            "query_string": query,
            "headers": headers,
            "client": ("127.0.0.1", 5555),
        }
        self.sent: list[dict[str, Any]] = []
        self.requested = False
        self.left = trio.Event()

    async def receive(self) -> dict[str, Any]:
        if not self.requested:
            self.requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def run(self) -> Call:
        await self.face(self.scope, self.receive, self.send)
        return self

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])

    @property
    def ended(self) -> bool:
        return bool(self.sent) and not self.sent[-1].get("more_body", False)


def make_face(*, status: bool = True) -> tuple[HttpFace, Backend]:
    backend = Backend()
    face = HttpFace(
        cast(Any, backend),
        CONFIG,
        clients=ClientKeys(CONFIG),
        status=backend if status else None,
    )
    return face, backend


async def test_the_shell_is_public_and_locked_down() -> None:
    face, _ = make_face()
    call = await Call(face, "/", auth=False).run()
    assert call.status == 200
    assert call.body == PAGE
    headers = call.headers
    assert headers[b"content-type"] == b"text/html; charset=utf-8"
    assert headers[b"content-security-policy"] == CONTENT_SECURITY_POLICY.encode()
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"referrer-policy"] == b"no-referrer"
    assert headers[b"x-frame-options"] == b"DENY"


async def test_the_data_needs_a_token_by_header_or_query() -> None:
    face, _ = make_face()
    anonymous = await Call(face, "/status", auth=False).run()
    wrong = await Call(face, "/status", query=b"token=nope", auth=False).run()
    by_header = await Call(face, "/status").run()
    by_query = await Call(face, "/status", query=f"token={TOKEN}".encode(), auth=False).run()
    events = await Call(face, "/status/events", auth=False).run()
    assert (anonymous.status, wrong.status, events.status) == (401, 401, 401)
    assert b"nope" not in wrong.body
    assert by_header.status == by_query.status == 200
    assert json.loads(by_query.body)["status"] == "ok"
    assert by_query.headers[b"cache-control"] == b"no-store"
    assert TOKEN.encode() not in by_query.body


async def test_without_a_status_source_the_page_is_not_there() -> None:
    face, _ = make_face(status=False)
    assert face.status_page is None
    for path in ("/", "/status", "/status/events"):
        assert (await Call(face, path).run()).status == 404


async def test_a_stream_ends_when_its_viewer_leaves(autojump_clock: Any) -> None:
    face, backend = make_face()
    page = face.status_page
    assert page is not None
    call = Call(face, "/status/events")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(call.run)
        await trio.sleep(2.5)
        assert page.viewers == 1
        backend.source.requests = 7
        await trio.sleep(1)
        call.left.set()
    assert trio.current_time() == 3.5  # no lingering after the viewer left
    assert page.viewers == 0
    assert call.status == 200
    assert call.headers[b"content-type"] == b"text/event-stream"
    assert call.body.count(b"data: ") == 2
    assert b'"requests":7' in call.body
    assert face.statistics().disconnects == 0  # a viewer leaving is no failed request


async def test_shutdown_ends_the_streams_at_once(autojump_clock: Any) -> None:
    face, _ = make_face()
    call = Call(face, "/status/events")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(call.run)
        await trio.sleep(1.5)
        await face.shutdown(drain_s=10.0)
    assert trio.current_time() == 1.5  # the streams do not hold up the drain
    assert call.ended
    refused = await Call(face, "/status/events").run()
    assert refused.status == 503


async def test_a_full_house_gets_503_with_retry_after(autojump_clock: Any) -> None:
    face, _ = make_face()
    page = face.status_page
    assert page is not None
    page.max_viewers = 1
    first = Call(face, "/status/events")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(first.run)
        await trio.sleep(1)
        second = await Call(face, "/status/events").run()
        first.left.set()
    assert second.status == 503
    assert second.headers[b"retry-after"] == b"5"
    assert json.loads(second.body)["error"]["code"] == "too_many_viewers"
