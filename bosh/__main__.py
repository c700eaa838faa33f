"""Composition root and CLI: the only module that imports both ``bosh`` and ``xmpp_bridge``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from aiohttp import web

from bosh import config as config_mod
from bosh.driver import Manager
from bosh.errors import ConfigError
from bosh.session import Limits
from bosh.web import make_app
from bosh.wire import parse_route

log = logging.getLogger("bosh")


def build_manager(cfg: config_mod.Config) -> Manager:
    from xmpp_bridge.upstream import XmppUpstreamFactory

    b = cfg.bosh
    routes = frozenset(r for r in map(parse_route, cfg.upstream.routes) if r is not None)
    limits = Limits(max_wait=b.max_wait, max_inactivity=b.max_inactivity,
                    max_hold=b.max_hold, polling=b.polling, max_pause=b.max_pause,
                    routes=routes)
    return Manager(limits, cfg.upstream.domains, b.max_sessions, XmppUpstreamFactory(cfg.upstream))


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # slixmpp's DEBUG output contains SASL payloads, i.e. passwords (design.md §5).
    logging.getLogger("slixmpp").setLevel(max(logging.INFO, logging.getLevelName(level)))


async def serve(cfg: config_mod.Config) -> int:
    manager = build_manager(cfg)
    app = make_app(manager, cfg.http)
    # Handler cancellation tells us at once when a client drops a held request.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.http.host, cfg.http.port)
    try:
        await site.start()
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", cfg.http.host, cfg.http.port, exc.strerror)
        await runner.cleanup()
        return 1
    host = f"[{cfg.http.host}]" if ":" in cfg.http.host else cfg.http.host
    log.info("listening on http://%s:%d%s", host, cfg.http.port, cfg.http.path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await manager.shutdown()
    await runner.cleanup()
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
    setup_logging(cfg.log.level)
    return asyncio.run(serve(cfg))


if __name__ == "__main__":
    sys.exit(main())
