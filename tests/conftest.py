"""Shared fixtures: a real Prosody, a real bosh-cm process, BOSH and XMPP test clients.

Everything heavy is lazy: a session-scoped fixture starts only when a test asks for it.

* ``prosody``        session: a started :class:`ProsodyServer` with users alice, bob, carol
                     (passwords in :data:`USERS`). Missing Prosody -> fail when CI=true, else skip.
* ``boshcm``         session: a :class:`BoshCM` in front of ``prosody`` (max_wait 10, hold 1).
* ``endpoint``       parametrized over ``BOSH_ENDPOINTS`` (comma list; default ``boshcm``;
                     ``prosody`` = Prosody's own mod_bosh, the reference): an :class:`Endpoint`.
* ``ws_endpoint``    the same over ``BOSH_ENDPOINTS`` for XMPP over WebSocket (RFC 7395): ``url``
                     is bosh-cm's ``ws_url`` or Prosody's own mod_websocket (the reference).
* ``bosh_client``    async factory ``await bosh_client(url=None)`` -> :class:`BoshClient`, closed
                     after the test.
* ``ws_client``      async factory ``await ws_client(url, connect=True, **kw)`` -> :class:`WsClient`
                     (handshake done), closed after the test.
* ``xmpp_peer``      async factory ``await xmpp_peer(user, resource="tcp")`` -> logged-in
                     :class:`XmppPeer` over TCP, closed after the test.
* ``prosody_factory`` factory for dedicated servers (``prosody_factory(users=USERS)``), stopped
                     after the test (for tests that kill their server).

A second real upstream, ejabberd (tests/support/ejabberd.py), runs the tests marked
``every_upstream`` (login, messaging, stream errors, upstream death, WebSocket login; the
conformance module parametrises itself the same way):

* ``upstream_kind``  'prosody' or 'ejabberd'. Marked tests are parametrised over ``UPSTREAMS``
                     (comma list; default ``prosody,ejabberd``); unmarked tests get 'prosody'.
                     ``endpoint``/``ws_endpoint`` then point at bosh-cm in front of that server
                     (Prosody's own mod_bosh/mod_websocket reference runs with Prosody only).
* ``ejabberd``       session: a started :class:`EjabberdServer` with the :data:`USERS`.
                     Missing ejabberd -> fail when CI=true, else skip.
* ``boshcm_ejabberd`` session: a :class:`BoshCM` in front of ``ejabberd``.
* ``xmpp_server``    the session server of ``upstream_kind``.
* ``xmpp_server_factory`` dedicated servers of ``upstream_kind`` (``xmpp_server_factory()``, with
                     the :data:`USERS`), stopped after the test.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # `pytest` run without `python -m`: make `tests.support` importable
    sys.path.insert(0, str(_ROOT))

from tests.support import require  # noqa: E402
from tests.support.ejabberd import EjabberdServer  # noqa: E402
from tests.support.prosody import USERS, ProsodyServer, prosody_available  # noqa: E402
from tests.support.upstreams import (XmppServer, make_server, require_upstream,  # noqa: E402
                                     upstream_names)

# label -> a started ProsodyServer/BoshCM; their logs are attached to failing test reports
_LIVE: dict[str, object] = {}


@contextlib.contextmanager
def _live(label: str, component: Any, start: bool = False) -> Iterator[Any]:
    """``component`` (a server or bosh-cm; started here with ``start``) in :data:`_LIVE` as
    ``label`` until the block ends, then stopped. (A failed start leaves it there.)"""
    _LIVE[label] = component
    if start:
        component.start()
    try:
        yield component
    finally:
        _LIVE.pop(label, None)
        component.stop()


class _Made:
    """What a factory fixture made: in :data:`_LIVE` as ``PREFIX-N`` during the test."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.made: list[Any] = []

    def add(self, component: Any) -> Any:
        self.made.append(component)
        _LIVE[f"{self.prefix}-{len(self.made)}"] = component
        return component

    def stop_all(self) -> None:
        for i, component in enumerate(self.made, 1):
            _LIVE.pop(f"{self.prefix}-{i}", None)
            component.stop()


def require_prosody() -> None:
    """Design §7: a test that needs a real component fails (CI) or skips (dev box) without it."""
    require(None if prosody_available() else
            "prosody/prosodyctl/openssl not installed (bash scripts/test installs them)")


def _make_prosody(workdir: Path, users: dict[str, str] | None = None, **kw: object) -> ProsodyServer:
    server = ProsodyServer(workdir, **kw)  # type: ignore[arg-type]
    server.start()
    for user, password in (users or {}).items():
        server.register(user, password)
    return server


@pytest.fixture(scope="session")
def prosody(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProsodyServer]:
    require_prosody()
    with _live("prosody", _make_prosody(tmp_path_factory.mktemp("prosody"), USERS)) as server:
        yield server


@pytest.fixture
def prosody_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ProsodyServer]]:
    require_prosody()
    made = _Made("prosody-own")

    def factory(users: dict[str, str] | None = None, **kw: object) -> ProsodyServer:
        server: ProsodyServer = made.add(_make_prosody(tmp_path_factory.mktemp("prosody-own"),
                                                       USERS if users is None else users, **kw))
        return server

    yield factory
    made.stop_all()


@pytest.fixture(scope="session")
def ejabberd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EjabberdServer]:
    require_upstream("ejabberd")
    server = make_server("ejabberd", tmp_path_factory.mktemp("ejabberd"), USERS)
    assert isinstance(server, EjabberdServer)
    with _live("ejabberd", server):
        yield server


@pytest.fixture
def upstream_kind(request: pytest.FixtureRequest) -> str:
    """The upstream server of this test: the ``every_upstream`` parameter, else Prosody."""
    return str(getattr(request, "param", "prosody"))


@pytest.fixture
def xmpp_server(request: pytest.FixtureRequest, upstream_kind: str) -> XmppServer:
    server: XmppServer = request.getfixturevalue(upstream_kind)
    return server


@pytest.fixture
def xmpp_server_factory(upstream_kind: str, tmp_path_factory: pytest.TempPathFactory
                        ) -> Iterator[Callable[..., XmppServer]]:
    require_upstream(upstream_kind)
    made = _Made(f"{upstream_kind}-own")

    def factory(users: dict[str, str] | None = None) -> XmppServer:
        server: XmppServer = made.add(make_server(
            upstream_kind, tmp_path_factory.mktemp(f"{upstream_kind}-own"),
            USERS if users is None else users))
        return server

    yield factory
    made.stop_all()


@pytest.fixture(scope="session")
def boshcm_ejabberd(ejabberd: EjabberdServer, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from tests.support.boshcm import BoshCM

    with _live("bosh-cm-ejabberd", BoshCM(tmp_path_factory.mktemp("boshcm-ejabberd"), ejabberd),
               start=True) as cm:
        yield cm


@pytest.fixture(scope="session")
def boshcm(prosody: ProsodyServer, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from tests.support.boshcm import BoshCM

    with _live("bosh-cm", BoshCM(tmp_path_factory.mktemp("boshcm"), prosody), start=True) as cm:
        yield cm


@pytest.fixture
def boshcm_factory(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``boshcm_factory(prosody, bosh={...}, upstream={...})`` -> a started, dedicated BoshCM."""
    from tests.support.boshcm import BoshCM

    made = _Made("bosh-cm-own")

    def factory(server: XmppServer | None, **kw: object) -> BoshCM:
        cm: BoshCM = made.add(BoshCM(tmp_path_factory.mktemp("boshcm-own"), server, **kw))  # type: ignore[arg-type]
        cm.start()
        return cm

    yield factory
    made.stop_all()


@dataclass(frozen=True)
class Endpoint:
    """A BOSH endpoint under test: ``name`` is 'boshcm' or 'prosody' (the reference);
    ``server`` is the upstream XMPP server behind it (Prosody or ejabberd)."""

    name: str
    url: str
    domain: str
    server: XmppServer

    @property
    def is_reference(self) -> bool:
        return self.name == "prosody"

    @property
    def prosody(self) -> XmppServer:
        """The upstream server (named before ejabberd joined; :attr:`server`)."""
        return self.server


def _endpoint_names() -> list[str]:
    names = [n.strip() for n in os.environ.get("BOSH_ENDPOINTS", "boshcm").split(",") if n.strip()]
    bad = set(names) - {"boshcm", "prosody"}
    if bad:
        raise pytest.UsageError(f"BOSH_ENDPOINTS: unknown {sorted(bad)}; allowed: boshcm, prosody")
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    kinds = (upstream_names() if metafunc.definition.get_closest_marker("every_upstream")
             and "upstream_kind" in metafunc.fixturenames else None)
    for name in ("endpoint", "ws_endpoint"):
        if name not in metafunc.fixturenames:
            continue
        if kinds is None:
            metafunc.parametrize(name, _endpoint_names(), indirect=True)
            continue
        # bosh-cm in front of each server; Prosody's own endpoint (the reference) only
        # in front of itself.
        combos = [(e, k) for k in kinds for e in _endpoint_names() if e == "boshcm" or k == "prosody"]
        metafunc.parametrize((name, "upstream_kind"), combos, indirect=True,
                             ids=[f"boshcm-{k}" if e == "boshcm" else e for e, k in combos])
        kinds = None  # parametrised
    if kinds is not None:
        metafunc.parametrize("upstream_kind", kinds, indirect=True)


def _boshcm_for(request: pytest.FixtureRequest, kind: str) -> Any:
    """The session bosh-cm in front of the session server of ``kind``."""
    return request.getfixturevalue("boshcm" if kind == "prosody" else "boshcm_ejabberd")


def _endpoint(request: pytest.FixtureRequest, upstream_kind: str, websocket: bool) -> Endpoint:
    """``endpoint`` (BOSH) or ``ws_endpoint`` (``websocket``) of ``request.param``."""
    if request.param == "prosody":
        prosody: ProsodyServer = request.getfixturevalue("prosody")
        return Endpoint("prosody", prosody.ws_url if websocket else prosody.bosh_url,
                        prosody.domain, prosody)
    server: XmppServer = request.getfixturevalue(upstream_kind)
    cm = _boshcm_for(request, upstream_kind)
    return Endpoint("boshcm", cm.ws_url if websocket else cm.url, server.domain, server)


@pytest.fixture
def endpoint(request: pytest.FixtureRequest, upstream_kind: str) -> Endpoint:
    return _endpoint(request, upstream_kind, websocket=False)


@pytest.fixture
def ws_endpoint(request: pytest.FixtureRequest, upstream_kind: str) -> Endpoint:
    return _endpoint(request, upstream_kind, websocket=True)


@pytest.fixture
async def bosh_client() -> AsyncIterator[Callable[..., Awaitable[object]]]:
    from tests.support.boshclient import BoshClient

    made: list[BoshClient] = []

    async def factory(url: str, **kw: object) -> BoshClient:
        client = BoshClient(url, **kw)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield factory
    for client in made:
        await client.close()


@pytest.fixture
async def ws_client() -> AsyncIterator[Callable[..., Awaitable[object]]]:
    from tests.support.wsclient import WsClient

    made: list[WsClient] = []

    async def factory(url: str, connect: bool = True, **kw: object) -> WsClient:
        client = WsClient(url, **kw)  # type: ignore[arg-type]
        made.append(client)
        if connect:
            await client.connect()
        return client

    yield factory
    for client in made:
        await client.aclose()


@pytest.fixture
async def xmpp_peer() -> AsyncIterator[Callable[..., Awaitable[object]]]:
    from tests.support.xmppclient import XmppPeer

    made: list[XmppPeer] = []

    async def factory(server: XmppServer, user: str, resource: str = "tcp") -> XmppPeer:
        peer = await XmppPeer.connect_to(server, user, USERS[user], resource)
        made.append(peer)
        return peer

    yield factory
    for peer in made:
        await peer.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """On failure, attach the log tails of the live bosh-cm / Prosody processes."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for label, proc in list(_LIVE.items()):
            report.sections.append((f"{label} log", proc.log_tail(limit=3000)))
