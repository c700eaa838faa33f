"""Composition root and CLI: the only module that imports both ``bosh`` and ``xmpp_bridge``.

Signals: SIGTERM/SIGINT drain and exit 0 (new sessions refused, every held request answered
with system-shutdown, every upstream stream closed with ``</stream:stream>``, within
``[http] shutdown_grace``); SIGHUP re-reads the config file and applies ``[log]``, ``[bosh]``
and ``[upstream] domains`` without dropping sessions (README, "Operations"), and re-reads
the ``[prebind] api_keys_file`` when prebind is enabled (README, "Prebind").
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import signal
import ssl
import sys

from aiohttp import web

from bosh import config as config_mod
from bosh.driver import Manager
from bosh.errors import ConfigError
from bosh.hub import Hub
from bosh.limits import ClientLimits, PerIpPolicy
from bosh.metrics import Metrics
from bosh.ports import UpstreamFactory
from bosh.prebind import Prebinder, PrebindService, plain_allowed
from bosh.prebind_keys import ApiKeys, load_keys, permission_warning
from bosh.session import Limits
from bosh.web import make_app, make_runner
from bosh.wire import parse_route
from bosh.ws_driver import WsEndpoint
from bosh.ws_session import WsLimits

log = logging.getLogger("bosh")


def build_limits(cfg: config_mod.Config) -> Limits:
    """The core's per-session bounds from ``[bosh]`` (and the route allow-list)."""
    b = cfg.bosh
    routes = frozenset(r for r in map(parse_route, cfg.upstream.routes) if r is not None)
    return Limits(max_wait=b.max_wait, max_inactivity=b.max_inactivity,
                  max_hold=b.max_hold, polling=b.polling, max_pause=b.max_pause,
                  routes=routes, max_queued_bytes=b.max_queued_bytes)


def build_client_limits(cfg: config_mod.Config) -> ClientLimits:
    b = cfg.bosh
    return ClientLimits(PerIpPolicy(max_sessions_per_ip=b.max_sessions_per_ip,
                                    new_sessions_per_ip_per_minute=b.new_sessions_per_ip_per_minute))


def build_hub(cfg: config_mod.Config, upstreams: UpstreamFactory | None = None) -> Hub:
    """The process hub every transport shares: sessions, limits, metrics, the upstreams."""
    metrics = Metrics()
    if upstreams is None:
        from xmpp_bridge.upstream import XmppUpstreamFactory

        factory = XmppUpstreamFactory(cfg.upstream)
        metrics.track_bridge(factory.counters)
        upstreams = factory
    return Hub(cfg.upstream.domains, cfg.bosh.max_sessions, upstreams,
               client_limits=build_client_limits(cfg), max_stanza_bytes=cfg.bosh.max_stanza_bytes,
               see_other_uri=cfg.bosh.see_other_uri, node_id=cfg.cluster.node_id, metrics=metrics)


def build_manager(cfg: config_mod.Config, upstreams: UpstreamFactory | None = None,
                  hub: Hub | None = None) -> Manager:
    """The BOSH endpoint (on a new hub unless one is given)."""
    return Manager(build_limits(cfg), hub if hub is not None else build_hub(cfg, upstreams))


def build_ws_endpoint(cfg: config_mod.Config, hub: Hub) -> WsEndpoint:
    """The WebSocket endpoint on the same hub (RFC 7395)."""
    limits = WsLimits(max_message_bytes=cfg.bosh.max_stanza_bytes,
                      ping_interval=cfg.websocket.ping_interval)
    return WsEndpoint(hub, limits, max_queued_bytes=cfg.bosh.max_queued_bytes)


def build_prebind(cfg: config_mod.Config, manager: Manager, keys: ApiKeys) -> PrebindService:
    """The prebind API (issue 10) on the BOSH endpoint: PLAIN only when the upstream path
    is encrypted or loopback."""
    p = cfg.prebind
    prebinder = Prebinder(manager, plain_allowed=plain_allowed(cfg.upstream), timeout=p.timeout)
    return PrebindService(prebinder, keys, keys_file=p.api_keys_file,
                          per_key_per_minute=p.per_key_per_minute, path=p.path)


def untrusted_proxy_warning(cfg: config_mod.Config) -> str | None:
    """The usual sign of a reverse proxy that is not trusted: bosh-cm listens on loopback
    (so its clients are local proxies), trusts no proxy, and limits sessions per address:
    every user then counts as the proxy's address."""
    b = cfg.bosh
    host = cfg.http.host.strip("[]").lower()
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    if not loopback or cfg.http.trusted_proxies or not (b.max_sessions_per_ip
                                                        or b.new_sessions_per_ip_per_minute):
        return None
    return (f"[http] host {cfg.http.host} is loopback and [http] trusted_proxies is empty, so "
            "X-Forwarded-For is not believed: behind a local reverse proxy every client counts "
            f"as the proxy's address for [bosh] max_sessions_per_ip ({b.max_sessions_per_ip}) "
            f"and new_sessions_per_ip_per_minute ({b.new_sessions_per_ip_per_minute}); "
            "set trusted_proxies (the default trusts loopback) or remove the key")


def server_ssl_context(http: config_mod.HttpConfig) -> ssl.SSLContext | None:
    """HTTPS when ``[http] tls_cert``/``tls_key`` are set (XEP-0124 §19.1)."""
    if not http.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(http.tls_cert, http.tls_key)
    return ctx


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    apply_log_level(level)


def apply_log_level(level: str) -> None:
    logging.getLogger().setLevel(level)
    # slixmpp's DEBUG output contains SASL payloads, i.e. passwords (design.md §5).
    logging.getLogger("slixmpp").setLevel(max(logging.INFO, logging.getLevelName(level)))


def reload_config(manager: Manager, current: config_mod.Config, path: str | None) -> config_mod.Config:
    """SIGHUP: apply ``[log]``, ``[bosh]`` and ``[upstream] domains`` again; keep sessions.

    A broken file changes nothing. Changes elsewhere are reported as needing a restart.
    """
    if path is None:
        log.warning("SIGHUP: no --config file to reload")
        return current
    try:
        new = config_mod.load(path)
    except ConfigError as exc:
        log.error("SIGHUP: config not reloaded: %s", exc)
        return current
    apply_log_level(new.log.level)
    manager.reload(build_limits(new), new.bosh.max_sessions, build_client_limits(new),
                   new.bosh.max_stanza_bytes, new.upstream.domains, new.bosh.see_other_uri)
    # [upstream] domains are live (sessions of a dropped domain get host-gone); the rest of
    # [upstream], [http] and [server] need a restart.
    live_upstream = dataclasses.replace(current.upstream, domains=new.upstream.domains)
    for section, running in (("http", current.http), ("upstream", live_upstream),
                             ("server", current.server), ("websocket", current.websocket),
                             ("discovery", current.discovery), ("cluster", current.cluster),
                             ("prebind", current.prebind)):
        if getattr(new, section) != running:
            log.warning("SIGHUP: [%s] changed; it takes effect only after a restart", section)
    # WARNING so that the notice survives a new, quieter level.
    log.warning("SIGHUP: reloaded [log] and [bosh] from %s (log level %s, max_sessions %d, "
             "max_sessions_per_ip %d, new_sessions_per_ip_per_minute %d)", path, new.log.level,
             new.bosh.max_sessions, new.bosh.max_sessions_per_ip,
             new.bosh.new_sessions_per_ip_per_minute)
    # Keep [http]/[upstream] as running: a later reload compares against what is live.
    return dataclasses.replace(current, bosh=new.bosh, log=new.log, upstream=live_upstream)


async def serve(cfg: config_mod.Config, config_path: str | None = None) -> int:
    try:
        tls = server_ssl_context(cfg.http)
    except (OSError, ssl.SSLError) as exc:
        log.error("cannot load [http] tls_cert/tls_key: %s", exc)
        return 2
    warning = untrusted_proxy_warning(cfg)
    if warning is not None:
        log.warning("%s", warning)
    manager = build_manager(cfg)
    websocket = build_ws_endpoint(cfg, manager.hub) if cfg.websocket.enabled else None
    prebind = None
    if cfg.prebind.enabled:
        try:
            keys = load_keys(cfg.prebind.api_keys_file)
        except ConfigError as exc:  # main() checked it; the file changed since
            log.error("config error: %s: %s", config_path, exc)
            return 2
        warning = permission_warning(cfg.prebind.api_keys_file)
        if warning is not None:
            log.warning("%s", warning)
        prebind = build_prebind(cfg, manager, keys)
    app = make_app(manager, cfg.http, websocket=websocket, ws_config=cfg.websocket,
                   discovery_config=cfg.discovery, prebind=prebind)
    runner = make_runner(app, cfg.http.shutdown_grace)
    await runner.setup()
    site = web.TCPSite(runner, cfg.http.host, cfg.http.port, ssl_context=tls)
    try:
        await site.start()
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", cfg.http.host, cfg.http.port, exc.strerror)
        await runner.cleanup()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    live = [cfg]

    def on_hup() -> None:
        live[0] = reload_config(manager, live[0], config_path)
        if prebind is not None:
            prebind.reload_keys()  # revoked keys stop working without a restart

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    # Announced only once the signal handlers are in place (launchers wait for this line).
    host = f"[{cfg.http.host}]" if ":" in cfg.http.host else cfg.http.host
    scheme = "https" if tls is not None else "http"
    log.info("listening on %s://%s:%d%s", scheme, host, cfg.http.port, cfg.http.path)
    if websocket is not None:
        log.info("websocket on %s://%s:%d%s", "wss" if tls is not None else "ws", host,
                 cfg.http.port, cfg.websocket.path)
    if prebind is not None:
        log.info("prebind API on %s://%s:%d%s (%d key(s); keep it off the public proxy)",
                 scheme, host, cfg.http.port, cfg.prebind.path, len(prebind.keys))
    await stop.wait()
    started = loop.time()
    hub = manager.hub
    if cfg.cluster.node_id:
        # Issue 9: a cluster node drains (BOSH sessions served up to drain_timeout, WebSocket
        # sessions released for resumption elsewhere); a second signal stops at once.
        log.info("node %s draining: %d session(s), drain_timeout %g s", cfg.cluster.node_id,
                 len(hub.registry), cfg.cluster.drain_timeout)
        stop.clear()
        drain = loop.create_task(hub.drain(cfg.cluster.drain_timeout))
        second = loop.create_task(stop.wait())
        await asyncio.wait({drain, second}, return_when=asyncio.FIRST_COMPLETED)
        second.cancel()
        if not drain.done():
            log.warning("second stop signal: ending the drain now")
            drain.cancel()
    log.info("shutting down: draining %d session(s), grace %g s", len(hub.registry),
             cfg.http.shutdown_grace)
    # Not ready any more (GET /readyz -> 503); every held request gets system-shutdown
    # and every upstream stream its </stream:stream> (XEP-0124 §17.2); a WebSocket session
    # the server keeps resumable gets close 1012 and its stream is dropped without the
    # footer, for the client to resume elsewhere (XEP-0198 §5); other WebSocket sessions
    # get system-shutdown and <close/> (RFC 7395 §3.6).
    await manager.shutdown()
    # Stops listening, closes idle connections, then waits (at most shutdown_grace) for
    # the handlers, whose answers are all decided now, to write them.
    await runner.cleanup()
    log.info("stopped in %.3f s", loop.time() - started)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bosh-cm", description="BOSH connection manager for XMPP")
    parser.add_argument("--config", "-c", help="TOML config file (see conf/bosh-cm.toml)")
    args = parser.parse_args(argv)
    try:
        cfg = config_mod.load(args.config) if args.config else config_mod.Config()
    except ConfigError as exc:
        print(f"bosh-cm: config error: {exc}", file=sys.stderr)
        return 2
    if cfg.prebind.enabled:
        try:
            load_keys(cfg.prebind.api_keys_file)  # refused at start-up: missing or empty
        except ConfigError as exc:
            print(f"bosh-cm: config error: {args.config}: {exc}", file=sys.stderr)
            return 2
    if cfg.server.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            print(f"bosh-cm: config error: {args.config}: [server] event_loop: 'uvloop' needs "
                  "the uvloop package (pip install 'bosh-cm[uvloop]')", file=sys.stderr)
            return 2
        # Python 3.11's asyncio.run has no loop_factory: set the policy instead.
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    setup_logging(cfg.log.level)
    # Thousands of long-lived sessions make the cyclic collector's scans expensive, and the
    # default thresholds run them every 700 allocations: at 9,000 sessions that cost 0.76 ms
    # CPU per delivered message, these thresholds 0.35 ms (docs/performance.md). Garbage
    # cycles are still collected, just less often.
    gc.set_threshold(100_000, 50, 1_000)
    return asyncio.run(serve(cfg, args.config))


if __name__ == "__main__":
    sys.exit(main())
