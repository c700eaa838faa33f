"""The one fake ``bosh.ports.UpstreamFactory`` of the tests (design §8 rules 7 and 9: fake only
the edges, one fake upstream). It records what the session sends and lets the test play the
server by calling the listener: ``upstream_ready``, ``upstream_elements``, ``upstream_closed``.

``FakeUpstreamFactory(auto=True)`` plays a live server by itself instead (the web, limits and
fault tests): each stream becomes ready on the next loop turn, a restart is answered with a
new header and the features, and (``echo=True``, the default there) every ``<message/>`` is
echoed back; ``factory.live`` counts the streams not yet closed (leak checks).

Imported as ``tests.driver._fakes``.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable, Sequence, TypeVar

if TYPE_CHECKING:
    from bosh.driver import Manager

from bosh.hub import Hub
from bosh.session import Limits
from bosh.ports import NS_HTTPBIND, NS_XBOSH, ClientElement, StreamInfo, StreamParams, UpstreamListener

NS = NS_HTTPBIND
XB = NS_XBOSH
FEATURES = (b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
            b"<mechanism>PLAIN</mechanism></mechanisms></stream:features>")
INFO = StreamInfo(from_="example.com", id="s1", version="1.0")
RESTARTED = StreamInfo(from_="example.com", id="s2", version="1.0")  # the header after a restart
PATH = "/http-bind"  # the BOSH endpoint path in the web tests
DEADLINE = 3.0  # seconds any single await in these tests may take

T = TypeVar("T")

# max_wait 1 s keeps the timer tests short; inactivity is long so it never interferes.
TEST_LIMITS = Limits(max_wait=1, max_inactivity=30, max_hold=1, polling=2)


@dataclass
class FakeUpstream:
    params: StreamParams
    listener: UpstreamListener
    sent: list[ClientElement] = field(default_factory=list)
    restarts: list[StreamParams] = field(default_factory=list)
    closed: int = 0  # close() calls
    paused: bool = False
    pauses: int = 0
    resumes: int = 0
    closed_event: asyncio.Event = field(default_factory=asyncio.Event)
    sent_event: asyncio.Event = field(default_factory=asyncio.Event)
    fail_send: bool = False
    end_stream: bool | None = None  # how the last close() was asked for
    finished: int = 0               # finish() calls (our </stream:stream>, still reading)
    hold_finish: bool = False       # the server does not answer our closing tag by itself
    lost: bool = False  # lose() was played
    #: Play the server by itself (see the module docstring); ``echo`` only with ``auto``.
    auto: bool = False
    echo: bool = False

    def __post_init__(self) -> None:
        if self.auto:
            asyncio.get_running_loop().call_soon(self._auto_ready)

    @property
    def live(self) -> bool:
        """Neither closed by the session nor lost."""
        return not self.closed and not self.lost

    # -- bosh.ports.Upstream --
    def send(self, elements: Sequence[ClientElement]) -> None:
        if self.fail_send:
            raise RuntimeError("injected upstream failure")
        if self.auto:
            assert self.live, "send after close"
        self.sent.extend(elements)
        self.sent_event.set()
        echo = [e.data for e in elements if e.name == "message"]
        if echo and self.echo:
            asyncio.get_running_loop().call_soon(self._if_live, self.deliver, *echo)

    def restart(self, params: StreamParams) -> None:
        self.restarts.append(params)
        if self.auto and self.live:
            asyncio.get_running_loop().call_soon(self._if_live, self._auto_restarted)

    def close(self, end_stream: bool = True) -> None:
        self.closed += 1
        self.end_stream = end_stream
        self.closed_event.set()

    def finish(self) -> None:
        """Our closing tag: a prompt server answers with its own on the next loop turn
        (unless the test holds it with ``hold_finish``), then the stream is gone."""
        self.finished += 1
        if not self.hold_finish:
            asyncio.get_running_loop().call_soon(self._finished)

    def _finished(self) -> None:
        if not self.closed and not self.lost:
            self.lose()

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False
        self.resumes += 1

    # -- playing the server --
    def ready(self, info: StreamInfo = INFO, features: bytes = FEATURES) -> None:
        self.listener.upstream_ready(info, features)

    def deliver(self, *elements: bytes) -> None:
        self.listener.upstream_elements(list(elements))

    def lose(self, stream_error: bytes | None = None) -> None:
        """The server ends the stream (with ``stream_error``) or the connection is lost."""
        if self.auto and not self.live:
            return  # a server that is gone says nothing more
        self.lost = True
        self.listener.upstream_closed(stream_error)

    def restarted(self, info: StreamInfo = INFO) -> None:
        self.listener.upstream_header(info)

    @property
    def sent_data(self) -> list[bytes]:
        return [e.data for e in self.sent]

    # -- auto mode: callbacks on later loop turns, dropped once the stream is gone --
    def _if_live(self, fn: Callable[..., object], *args: object) -> None:
        if self.live:
            fn(*args)

    def _auto_ready(self) -> None:
        self._if_live(self.ready)

    def _auto_restarted(self) -> None:
        self.restarted(RESTARTED)
        self.deliver(FEATURES)


class FakeUpstreamFactory:
    """Implements ``bosh.ports.UpstreamFactory``; ``open`` returns at once. With ``auto`` its
    streams play a live server by themselves (and ``echo`` messages back)."""

    def __init__(self, auto: bool = False, echo: bool | None = None) -> None:
        self.auto = auto
        self.echo = auto if echo is None else echo
        self.opened: list[FakeUpstream] = []
        self._opened_event = asyncio.Event()

    @property
    def live(self) -> int:
        """Streams opened and neither closed nor lost (leak checks)."""
        return sum(1 for up in self.opened if up.live)

    def open(self, params: StreamParams, listener: UpstreamListener) -> FakeUpstream:
        up = FakeUpstream(params, listener, auto=self.auto, echo=self.echo)
        self.opened.append(up)
        self._opened_event.set()
        return up

    async def next_open(self, count: int) -> FakeUpstream:
        """The ``count``-th upstream opened (1-based), waiting for it with a deadline."""
        async def wait() -> FakeUpstream:
            while len(self.opened) < count:
                self._opened_event.clear()
                await self._opened_event.wait()
            return self.opened[count - 1]
        return await asyncio.wait_for(wait(), DEADLINE)


def make_manager(limits: Limits, domains: Sequence[str], max_sessions: int,
                 upstreams: object, **hub_options: object) -> "Manager":
    """``clock=ManualClock()`` among ``hub_options`` turns time by hand."""
    """The BOSH endpoint on a fresh hub (what ``bosh.__main__.build_manager`` builds)."""
    from bosh.driver import Manager

    hub = Hub(domains, max_sessions, upstreams, **hub_options)  # type: ignore[arg-type]
    return Manager(limits, hub)


class ManualClock:
    """A ``bosh.ports.Clock`` the test turns by hand (Twisted's ``task.Clock``, design.md §8
    rule 7): ``advance(dt)`` runs every timer that falls due, in order."""

    class _Timer:
        def __init__(self, clock: "ManualClock", when: float, callback: Callable[[], object]) -> None:
            self.when, self.callback, self.cancelled = when, callback, False
            clock._timers.append(self)

        def cancel(self) -> None:
            self.cancelled = True

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._timers: list[ManualClock._Timer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> "ManualClock._Timer":
        return ManualClock._Timer(self, when, callback)

    def advance(self, seconds: float) -> None:
        target = self.now + seconds
        while True:
            due = [t for t in self._timers if not t.cancelled and t.when <= target]
            if not due:
                break
            timer = min(due, key=lambda t: t.when)
            self._timers.remove(timer)
            self.now = max(self.now, timer.when)
            timer.callback()
        self.now = target
        self._timers = [t for t in self._timers if not t.cancelled]


class Closing:
    """An ``is_closing`` callable the test can flip, like a transport that went away."""

    def __init__(self) -> None:
        self.closed = False

    def __call__(self) -> bool:
        return self.closed


def never_closing() -> bool:
    return False


async def until(predicate: Callable[[], bool], rounds: int = 200) -> None:
    """Let other tasks run (without sleeping for time) until ``predicate`` holds."""
    for _ in range(rounds):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def within(aw: Awaitable[T], timeout: float = DEADLINE) -> T:
    return await asyncio.wait_for(aw, timeout)


def create_body(**over: str | None) -> bytes:
    attrs: dict[str, str | None] = {"rid": "1000", "to": "example.com", "xml:lang": "en",
                                    "ver": "1.11", "wait": "5", "hold": "1", "xmpp:version": "1.0"}
    attrs.update(over)
    parts = [f"<body xmlns='{NS}' xmlns:xmpp='{XB}'"]
    parts += [f" {k}='{v}'" for k, v in attrs.items() if v is not None]
    return ("".join(parts) + "/>").encode()


def req_body(sid: str, rid: int, payload: str = "", **attrs: str) -> bytes:
    extra = "".join(f" {k.replace('xmpp_', 'xmpp:').replace('xml_', 'xml:')}='{v}'"
                    for k, v in attrs.items())
    head = f"<body xmlns='{NS}' xmlns:xmpp='{XB}' sid='{sid}' rid='{rid}'{extra}"
    return (head + (f">{payload}</body>" if payload else "/>")).encode()


def sid_of(body: bytes) -> str:
    m = re.search(rb"sid='([^']+)'", body)
    assert m, body
    return m.group(1).decode()
