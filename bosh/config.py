"""Typed, frozen settings and a strict TOML loader.

Every key has a type, a default and (for numbers) a range. Unknown sections or keys, wrong
types and out-of-range values raise :class:`ConfigError` naming the file, the key and what
is allowed. ``conf/bosh-cm.toml`` documents every key; a test keeps the two in step.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from bosh.errors import ConfigError
from bosh.limits import LOOPBACK_PROXIES, parse_networks
from bosh.wire import parse_route

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_NODE_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def _meta(help: str, lo: float | None = None, hi: float | None = None,
          choices: tuple[str, ...] | None = None) -> dict[str, Any]:
    return {"help": help, "lo": lo, "hi": hi, "choices": choices}


@dataclass(frozen=True, slots=True)
class HttpConfig:
    host: str = field(default="127.0.0.1", metadata=_meta("listen address"))
    port: int = field(default=5280, metadata=_meta("listen port", 1, 65535))
    path: str = field(default="/http-bind", metadata=_meta("BOSH endpoint path, starts with '/'"))
    cors_origins: tuple[str, ...] = field(
        default=("*",), metadata=_meta("allowed origins for CORS; [\"*\"] allows any"))
    max_body_bytes: int = field(
        default=1_048_576, metadata=_meta("largest request body accepted, bytes", 1024, 67_108_864))
    trusted_proxies: tuple[str, ...] = field(
        default=LOOPBACK_PROXIES,
        metadata=_meta("proxy addresses/CIDRs whose X-Forwarded-For is believed; default: loopback"))
    tls_cert: str = field(default="", metadata=_meta("PEM certificate chain for HTTPS; empty = plain HTTP"))
    tls_key: str = field(default="", metadata=_meta("PEM private key for tls_cert"))
    shutdown_grace: float = field(
        default=10.0, metadata=_meta("seconds SIGTERM waits for answers to be written", 0, 300))


@dataclass(frozen=True, slots=True)
class BoshConfig:
    max_wait: int = field(default=60, metadata=_meta("seconds; upper bound for a client's 'wait'", 1, 3600))
    max_inactivity: int = field(
        default=60, metadata=_meta("seconds without a request before a session ends", 1, 3600))
    max_hold: int = field(default=1, metadata=_meta("upper bound for a client's 'hold'", 0, 16))
    polling: int = field(default=2, metadata=_meta("seconds, advertised shortest polling interval", 0, 3600))
    max_sessions: int = field(default=10_000, metadata=_meta("sessions open at once", 1, 1_000_000))
    max_pause: int = field(
        default=120, metadata=_meta("seconds; longest 'pause' a client may ask for, 0 = no pausing", 0, 86400))
    max_sessions_per_ip: int = field(
        default=2_000, metadata=_meta("sessions open at once per client address; 0 = unlimited", 0, 1_000_000))
    new_sessions_per_ip_per_minute: int = field(
        default=1_000, metadata=_meta("new sessions per client address in any 60 s; 0 = unlimited", 0, 1_000_000))
    max_queued_bytes: int = field(
        default=1_048_576,
        metadata=_meta("bytes of server data queued per session before upstream reading pauses",
                       1024, 268_435_456))
    max_stanza_bytes: int = field(
        default=262_144, metadata=_meta("largest single payload element from a client, bytes", 256, 67_108_864))
    see_other_uri: str = field(
        default="", metadata=_meta("when set, new sessions are sent to this BOSH URL with "
                                   "see-other-uri (§17.2), e.g. to drain this node; empty = off"))


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    domains: tuple[str, ...] = field(
        default=("localhost",), metadata=_meta("the 'to' domains served; others get host-unknown"))
    host: str = field(
        default="", metadata=_meta("fixed upstream server; empty = SRV _xmpp-client._tcp of 'to'"))
    port: int = field(default=5222, metadata=_meta("upstream port for a fixed host", 1, 65535))
    tls: str = field(default="required", metadata=_meta("upstream STARTTLS", choices=("required", "none")))
    routes: tuple[str, ...] = field(
        default=(), metadata=_meta("'route' values a client may ask for, as \"xmpp:host:port\""))
    ca_file: str = field(default="", metadata=_meta("extra trust anchor (PEM); empty = system store"))
    connect_timeout: float = field(
        default=10.0, metadata=_meta("seconds to connect and open the stream", 0.1, 300))
    keepalive: float = field(
        default=60.0, metadata=_meta("seconds between whitespace keepalives upstream; 0 = off", 0, 3600))
    max_stanza_bytes: int = field(default=1_048_576, metadata=_meta(
        "bytes one element from the server may take; past it the session ends "
        "(policy-violation upstream)", 1024, 10_000_000))
    max_stanza_depth: int = field(default=64, metadata=_meta(
        "how deep the server's elements may nest; past it the session ends", 4, 255))
    proxy_protocol: str = field(default="off", metadata=_meta(
        "send HAProxy's PROXY protocol header (v1 text, v2 binary) with the client's address "
        "first on each upstream connection; the server must expect it", choices=("off", "v1", "v2")))


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = field(default="INFO", metadata=_meta("log level", choices=_LOG_LEVELS))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    event_loop: str = field(default="asyncio", metadata=_meta(
        "event loop; 'uvloop' needs the uvloop package (pip install 'bosh-cm[uvloop]'); "
        "a change needs a restart", choices=("asyncio", "uvloop")))


@dataclass(frozen=True, slots=True)
class WebSocketConfig:
    enabled: bool = field(default=True, metadata=_meta(
        "serve XMPP over WebSocket (RFC 7395) on the [http] listener"))
    path: str = field(default="/xmpp-websocket", metadata=_meta(
        "WebSocket endpoint path, starts with '/'"))
    origins: tuple[str, ...] = field(default=(), metadata=_meta(
        "allowed Origin values; [] = the same as [http] cors_origins; [\"*\"] = any"))
    ping_interval: float = field(default=30.0, metadata=_meta(
        "seconds between WebSocket pings; 2 missed pongs close it; 0 = off", 0, 3600))
    compress: bool = field(default=False, metadata=_meta(
        "permessage-deflate (costs a zlib state per connection)"))


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    bosh_url: str = field(default="", metadata=_meta(
        "public BOSH URL listed in /.well-known/host-meta (XEP-0156); empty = not listed"))
    websocket_url: str = field(default="", metadata=_meta(
        "public WebSocket URL listed in /.well-known/host-meta (XEP-0156); empty = not listed"))


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    node_id: str = field(default="", metadata=_meta(
        "this node's id behind a balancer, 1-16 characters [a-z0-9]; empty = standalone"))
    drain_timeout: float = field(default=300.0, metadata=_meta(
        "seconds a draining node (SIGTERM with node_id set) keeps serving its BOSH sessions",
        0, 86400))


@dataclass(frozen=True, slots=True)
class PrebindConfig:
    enabled: bool = field(default=False, metadata=_meta(
        "serve the prebind API: bosh-cm logs a user in with their password and hands back "
        "a live BOSH session (README, \"Prebind\")"))
    path: str = field(default="/prebind", metadata=_meta("prebind API path, starts with '/'"))
    api_keys_file: str = field(default="", metadata=_meta(
        "file with one API key per line (Authorization: Bearer KEY); re-read on SIGHUP"))
    per_key_per_minute: int = field(default=60, metadata=_meta(
        "prebind requests per API key in any 60 s; 0 = unlimited", 0, 1_000_000))
    timeout: float = field(default=20.0, metadata=_meta(
        "seconds for one whole login (connect, SASL, bind) before 504", 1, 300))


@dataclass(frozen=True, slots=True)
class Config:
    http: HttpConfig = HttpConfig()
    bosh: BoshConfig = BoshConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    log: LogConfig = LogConfig()
    server: ServerConfig = ServerConfig()
    websocket: WebSocketConfig = WebSocketConfig()
    discovery: DiscoveryConfig = DiscoveryConfig()
    cluster: ClusterConfig = ClusterConfig()
    prebind: PrebindConfig = PrebindConfig()


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string",
            bool: "true or false"}.get(tp, "a list of strings")


def _convert(where: str, tp: Any, meta: Mapping[str, Any], value: Any) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is int:
        if not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
    elif tp is float:
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where}: {value!r} is out of range; allowed: a finite number")
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
    else:  # tuple[str, ...]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{where}: expected a list of non-empty strings, got {value!r}")
        value = tuple(value)
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    if lo is not None and value < lo or hi is not None and value > hi:
        raise ConfigError(f"{where}: {value!r} is out of range; allowed: {lo} to {hi}")
    if choices is not None and value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{where}: {value!r} is not allowed; allowed: {allowed}")
    return value


def from_mapping(data: Mapping[str, Any], source: str = "<config>") -> Config:
    """Build a :class:`Config` from parsed TOML, strictly."""
    sections = typing.get_type_hints(Config)
    built: dict[str, Any] = {}
    for name, table in data.items():
        if name not in sections:
            raise ConfigError(f"{source}: unknown section [{name}]; allowed: "
                              + ", ".join(f"[{s}]" for s in sections))
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
        cls = sections[name]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in table.items():
            where = f"{source}: [{name}] {key}"
            if key not in fields:
                raise ConfigError(f"{source}: unknown key [{name}] {key}; allowed: " + ", ".join(fields))
            kwargs[key] = _convert(where, hints[key], fields[key].metadata, value)
        built[name] = cls(**kwargs)
    cfg = Config(**built)
    _check_consistency(cfg, source)
    return cfg


def _check_consistency(cfg: Config, source: str) -> None:
    if not cfg.http.path.startswith("/"):
        raise ConfigError(f"{source}: [http] path: {cfg.http.path!r} must start with '/'")
    if cfg.http.path in ("/healthz", "/readyz", "/metrics"):
        raise ConfigError(f"{source}: [http] path: {cfg.http.path!r} is taken by the operations "
                          "endpoints; allowed: any other path, e.g. \"/http-bind\"")
    if not cfg.upstream.domains:
        raise ConfigError(f"{source}: [upstream] domains: must list at least one domain")
    if bool(cfg.http.tls_cert) != bool(cfg.http.tls_key):
        raise ConfigError(f"{source}: [http] tls_cert and tls_key: set both (HTTPS) or neither (HTTP)")
    try:
        parse_networks(cfg.http.trusted_proxies)
    except ValueError as exc:
        raise ConfigError(f"{source}: [http] trusted_proxies: {exc}; allowed: addresses or CIDRs, "
                          "e.g. [\"127.0.0.1\", \"10.0.0.0/8\"]") from None
    ws = cfg.websocket
    if not ws.path.startswith("/"):
        raise ConfigError(f"{source}: [websocket] path: {ws.path!r} must start with '/'")
    if ws.enabled and ws.path in (cfg.http.path, "/healthz", "/readyz", "/metrics") \
            or ws.path.startswith("/.well-known/"):
        raise ConfigError(f"{source}: [websocket] path: {ws.path!r} is taken by [http] path or "
                          "the operations or discovery endpoints; allowed: another path, e.g. "
                          "\"/xmpp-websocket\"")
    node_id = cfg.cluster.node_id
    if node_id and not (len(node_id) <= 16 and all(c in _NODE_ID_CHARS for c in node_id)):
        raise ConfigError(f"{source}: [cluster] node_id: {node_id!r} is not allowed; allowed: 1 to 16 "
                          "characters a-z and 0-9, e.g. \"n1\", or \"\" (standalone)")
    for key, schemes in (("bosh_url", ("https",)), ("websocket_url", ("wss",))):
        _check_discovery_url(source, key, getattr(cfg.discovery, key), schemes)
    for route in cfg.upstream.routes:
        if parse_route(route) is None:
            raise ConfigError(f"{source}: [upstream] routes: {route!r} is not allowed; "
                              "allowed: \"proto:host:port\", e.g. \"xmpp:chat.example.org:5222\"")
    _check_prebind(cfg, source)


def _check_prebind(cfg: Config, source: str) -> None:
    p = cfg.prebind
    taken = (cfg.http.path, "/healthz", "/readyz", "/metrics") + (
        (cfg.websocket.path,) if cfg.websocket.enabled else ())
    if not p.path.startswith("/") or p.enabled and (p.path in taken
                                                    or p.path.startswith("/.well-known/")):
        raise ConfigError(f"{source}: [prebind] path: {p.path!r} is not allowed; allowed: a path "
                          "starting with '/' that no other endpoint uses, e.g. \"/prebind\"")
    if p.enabled and not p.api_keys_file:
        raise ConfigError(f"{source}: [prebind] api_keys_file: must name a file of API keys "
                          "when [prebind] enabled = true, e.g. \"/etc/bosh-cm/prebind.keys\"")


_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def _check_discovery_url(source: str, key: str, url: str, schemes: tuple[str, ...]) -> None:
    """XEP-0156 §3: only secure URLs may be listed (https/wss); plain http/ws only for a
    loopback host (a local demo or test)."""
    if not url:
        return
    scheme, sep, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    host = host if host.startswith("[") else host.split(":", 1)[0]
    plain = {"https": "http", "wss": "ws"}[schemes[0]]
    is_loopback = host.lower() in _LOOPBACK_HOSTS or host.startswith("127.")
    if not sep or not host or not (scheme in schemes or (scheme == plain and is_loopback)):
        raise ConfigError(f"{source}: [discovery] {key}: {url!r} is not allowed; allowed: an "
                          f"{schemes[0]}:// URL (XEP-0156), or {plain}:// on a loopback host, "
                          f"e.g. \"{schemes[0]}://chat.example.org/"
                          f"{'http-bind' if plain == 'http' else 'xmpp-websocket'}\"")


def load(path: str | Path) -> Config:
    """Read and validate a TOML config file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return from_mapping(data, str(p))
