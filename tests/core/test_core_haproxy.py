"""bosh.haproxy (the HAProxy config renderer) and the pure helpers of bosh.cluster (node
configs, nodes.json, Prometheus targets), issue 9. No process is started here: the rendered
config is checked by the real HAProxy in tests/integration/test_cluster.py."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from bosh import config
from bosh.cluster import (NodeSpec, node_config, node_trusted_proxies, nodes_document,
                          prometheus_targets, render_toml)
from bosh.haproxy import (SID_NODE_FETCH, SID_PRESENT, HaproxyNode, maxconn_for_fd_limit,
                          render_haproxy_cfg)
from bosh.registry import mint_sid

NODES = [HaproxyNode("n1", "127.0.0.1", 6001), HaproxyNode("n2", "127.0.0.1", 6002),
         HaproxyNode("n3", "10.0.0.3", 5280)]


def render(**kw: object) -> str:
    args: dict[str, object] = {"host": "127.0.0.1", "port": 5280, "max_wait": 60}
    args.update(kw)
    return render_haproxy_cfg(NODES, **args)  # type: ignore[arg-type]


def section(cfg: str, name: str) -> list[str]:
    """The stripped lines of one section ('frontend bosh', 'backend bosh_new', ...)."""
    lines = cfg.splitlines()
    start = lines.index(name) + 1
    out = []
    for line in lines[start:]:
        if line and not line.startswith(" "):
            break
        if line.strip():
            out.append(line.strip())
    return out


# ---------------------------------------------------------------- the sid extraction
def _python_regex(haproxy_regex: str) -> str:
    # PCRE's POSIX class as Python's re spells it; the rest is the same syntax.
    return haproxy_regex.replace("[[:space:]]", r"\s")


def extract_node(body: str) -> str | None:
    """What the frontend's set-var rule computes, in Python: None when the guard ACL does
    not match (no sid attribute in the <body> start tag)."""
    guard = _python_regex(SID_PRESENT.split(" -m reg ", 1)[1])
    if not re.search(guard, body):
        return None
    m = re.fullmatch(r"req\.body,regsub\((.*),\),field\(1,\.\)", SID_NODE_FETCH)
    assert m, SID_NODE_FETCH
    cut = re.sub(_python_regex(m.group(1)), "", body, count=1)
    return cut.split(".", 1)[0]


@pytest.mark.parametrize("node", ["n1", "n12", "a", "abcdefghij012345"])
def test_the_node_id_of_a_minted_sid_is_extracted_whatever_the_quoting(node: str) -> None:
    sid = mint_sid(node)
    for body in (f"<body rid='1' xmlns='http://jabber.org/protocol/httpbind' sid='{sid}'/>",
                 f'<body xmlns="http://jabber.org/protocol/httpbind"\n sid="{sid}" rid="2">'
                 f"<message to='a.example' id='sid=x.y'/></body>",
                 f"<body\tsid='{sid}' rid='3' xmlns='http://jabber.org/protocol/httpbind'/>"):
        assert extract_node(body) == node, body


def test_a_creation_request_names_no_node() -> None:
    for body in ("<body rid='1' to='n1.example.org' xmlns='http://jabber.org/protocol/httpbind' "
                 "xml:lang='en' wait='60' hold='1' ver='1.6' xmpp:version='1.0' "
                 "xmlns:xmpp='urn:xmpp:xbosh'/>",
                 "<body rid='1' xsid='n1.q' xmlns='x'/>",
                 # a sid inside the payload is not the session's
                 "<body rid='1' xmlns='x'><iq sid='n2.abc'/></body>", ""):
        assert extract_node(body) is None, body


def test_no_parenthesis_or_comma_inside_the_unquoted_converter_arguments() -> None:
    # design.md §10: a '(' inside an unquoted argument ends the argument list.
    inner = re.fullmatch(r"req\.body,regsub\((.*)\),field\(1,\.\)", SID_NODE_FETCH)
    assert inner is not None
    pattern, replacement = inner.group(1).rsplit(",", 1)
    assert "(" not in pattern and ")" not in pattern and "," not in pattern and replacement == ""
    assert "$" not in SID_NODE_FETCH and '"' not in SID_NODE_FETCH


# ---------------------------------------------------------------- the rendered config
def test_frontend_buffers_the_body_and_routes_named_sids_to_the_owner_backend() -> None:
    front = section(render(), "frontend bosh")
    assert "bind 127.0.0.1:5280" in front
    assert "option http-buffer-request" in front
    assert (f"http-request set-var(txn.node) {SID_NODE_FETCH} if {{ method POST }} "
            f"{{ path /http-bind }} {{ {SID_PRESENT} }}") in front
    assert "use_backend bosh_owner if { var(txn.node) -m found }" in front
    assert front[-1] == "default_backend bosh_new"
    assert "http-request set-header X-Forwarded-Proto http" in front
    assert "http-request deny deny_status 404 if { path,url_dec -m str /healthz /readyz /metrics }" in front
    assert "http-request del-header X-Forwarded-For" not in front


def test_owner_backend_pins_each_sid_to_its_node_and_checks_healthz() -> None:
    owner = section(render(), "backend bosh_owner")
    assert "option httpchk GET /healthz" in owner
    for n in NODES:
        assert f"use-server {n.node_id} if {{ var(txn.node) -m str {n.node_id} }}" in owner
        assert f"server {n.node_id} {n.host}:{n.port} check inter 500ms fall 2 rise 2" in owner
    # use-server without force-persist: a node that is down falls back to normal balancing
    assert not any("force-persist" in line for line in owner)


def test_creation_backend_balances_leastconn_over_ready_nodes() -> None:
    new = section(render(), "backend bosh_new")
    assert "balance leastconn" in new and "option httpchk GET /readyz" in new
    assert [line for line in new if line.startswith("server ")] == [
        f"server {n.node_id} {n.host}:{n.port} check inter 500ms fall 2 rise 2" for n in NODES]
    assert not any(line.startswith("use-server") for line in new)


def test_timeouts_exceed_max_wait_and_refused_connections_are_retried_elsewhere() -> None:
    defaults = section(render(max_wait=45), "defaults")
    seconds = {}
    for line in defaults:
        m = re.fullmatch(r"timeout (\S+) (\d+)s", line)
        if m:
            seconds[m.group(1)] = int(m.group(2))
    assert seconds["client"] > 45 and seconds["server"] > 45 and seconds["http-keep-alive"] > 45
    assert seconds["tunnel"] >= 3600
    for line in ("option forwardfor", "option redispatch 1", "retries 3",
                 "retry-on conn-failure empty-response 503", "mode http"):
        assert line in defaults


def test_tls_sets_https_and_the_certificate() -> None:
    front = section(render(tls_pem="/run/x/haproxy.pem"), "frontend bosh")
    assert "bind 127.0.0.1:5280 ssl crt /run/x/haproxy.pem" in front
    assert "http-request set-header X-Forwarded-Proto https" in front


def test_stats_frontend_with_the_prometheus_exporter_on_loopback() -> None:
    cfg = render(stats_port=9101, stats_socket="/run/x/haproxy.sock")
    stats = section(cfg, "frontend stats")
    assert stats[0] == "bind 127.0.0.1:9101"
    assert "http-request use-service prometheus-exporter if { path /haproxy-metrics }" in stats
    assert "stats uri /haproxy-stats" in stats
    assert "stats socket /run/x/haproxy.sock mode 600 level admin" in section(cfg, "global")
    assert "frontend stats" not in render()
    no_promex = section(render(stats_port=9101, prometheus=False), "frontend stats")
    assert not any("prometheus" in line for line in no_promex)


def test_ipv6_and_wildcard_listeners() -> None:
    assert "bind [::1]:5280" in section(render(host="::1"), "frontend bosh")
    assert "bind [::]:5280" in section(render(host="[::]"), "frontend bosh")
    assert "bind 0.0.0.0:5280" in section(render(host="0.0.0.0"), "frontend bosh")


def test_untrusted_front_drops_the_clients_own_forwarded_for() -> None:
    front = section(render(keep_forwarded_for=False), "frontend bosh")
    assert "http-request del-header X-Forwarded-For" in front
    assert "option forwardfor" in section(render(keep_forwarded_for=False), "defaults")


def test_maxconn_fits_the_file_descriptor_limit() -> None:
    # HAProxy refuses to start when 2 * maxconn + its own sockets exceed the limit
    # (measured with 2.6: maxconn 9990 needs 20014 descriptors, 9964 fits in 20000).
    assert maxconn_for_fd_limit(20_000, 3) == (20_000 - 112) // 2
    assert 2 * maxconn_for_fd_limit(20_000, 3) + 34 <= 20_000
    assert maxconn_for_fd_limit(256, 3) == 72
    assert maxconn_for_fd_limit(10, 3) == 64
    assert maxconn_for_fd_limit(10**7, 3) == 100_000
    assert "maxconn 5000" in section(render(maxconn=5000), "global")


@pytest.mark.parametrize("kw,match", [
    ({"path": "http-bind"}, "path"),
    ({"path": "/a b"}, "path"),
    ({"path": "/x#y"}, "path"),
    ({"port": 0}, "port"),
    ({"max_wait": 0}, "max_wait"),
    ({"tls_pem": "/a b.pem"}, "tls_pem"),
])
def test_bad_arguments_are_refused(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        render(**kw)


@pytest.mark.parametrize("nodes,match", [
    ([], "at least one"),
    ([HaproxyNode("N1", "127.0.0.1", 1)], "a-z"),
    ([HaproxyNode("n1.x", "127.0.0.1", 1)], "a-z"),
    ([HaproxyNode("n1", "127.0.0.1", 1), HaproxyNode("n1", "127.0.0.1", 2)], "twice"),
    ([HaproxyNode("n1", "127.0.0.1", 70000)], "port"),
])
def test_bad_nodes_are_refused(nodes: list[HaproxyNode], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        render_haproxy_cfg(nodes, host="127.0.0.1", port=5280)


# ---------------------------------------------------------------- bosh.cluster helpers
BASE: dict[str, dict[str, Any]] = {
    "http": {"host": "0.0.0.0", "port": 443, "path": "/bind", "tls_cert": "/c.pem", "tls_key": "/k.pem",
             "cors_origins": ["https://a.example", "https://b.example"]},
    "bosh": {"max_wait": 30, "max_sessions_per_ip": 3},
    "upstream": {"domains": ["example.org"], "host": "10.0.0.5", "connect_timeout": 2.5},
    "cluster": {"drain_timeout": 3.0, "node_id": "x"},
    "websocket": {"enabled": True, "origins": ["https://a.example"]},
    "discovery": {"bosh_url": "https://chat.example.org/bind"},
    "log": {"level": "INFO"},
}


def test_a_node_config_is_the_base_on_loopback_with_its_id(tmp_path: Path) -> None:
    trusted, keep = node_trusted_proxies(["10.0.0.0/8"])
    assert trusted == ["10.0.0.0/8", "127.0.0.1"] and keep
    text = render_toml(node_config(BASE, NodeSpec("n2", 40002), trusted))
    path = tmp_path / "n2.toml"
    path.write_text(text)
    cfg = config.load(path)  # the node accepts it
    assert (cfg.http.host, cfg.http.port, cfg.http.path) == ("127.0.0.1", 40002, "/bind")
    assert cfg.http.tls_cert == "" and cfg.http.tls_key == ""
    assert cfg.http.trusted_proxies == ("10.0.0.0/8", "127.0.0.1")
    assert cfg.cluster.node_id == "n2" and cfg.cluster.drain_timeout == 3.0
    assert cfg.http.cors_origins == ("https://a.example", "https://b.example")
    assert cfg.bosh.max_wait == 30 and cfg.bosh.max_sessions_per_ip == 3
    assert cfg.upstream.connect_timeout == 2.5 and cfg.discovery.bosh_url.endswith("/bind")
    assert BASE["http"]["host"] == "0.0.0.0"  # the base mapping is not modified


def test_trusted_proxies_for_nodes() -> None:
    assert node_trusted_proxies(["127.0.0.0/8", "::1"]) == (["127.0.0.0/8", "::1"], True)
    # nobody trusted in front: HAProxy drops the client's header, the node trusts HAProxy
    assert node_trusted_proxies([]) == (["127.0.0.1"], False)


def test_toml_strings_are_escaped() -> None:
    text = render_toml({"upstream": {"ca_file": 'C:\\a "b"\n\x7f\u00e9', "routes": ["x:y:1"]}})
    assert tomllib.loads(text)["upstream"] == {"ca_file": 'C:\\a "b"\n\x7f\u00e9', "routes": ["x:y:1"]}


def test_nodes_json_has_the_documented_shape() -> None:
    specs = [NodeSpec("n1", 41001), NodeSpec("n2", 41002)]
    doc = nodes_document(100, "http://127.0.0.1:5280/http-bind", specs, {"n1": 101, "n2": None},
                         "/http-bind")
    assert doc == {
        "haproxy": {"pid": 100, "url": "http://127.0.0.1:5280/http-bind"},
        "nodes": [
            {"node_id": "n1", "pid": 101, "port": 41001, "url": "http://127.0.0.1:41001/http-bind"},
            {"node_id": "n2", "pid": None, "port": 41002, "url": "http://127.0.0.1:41002/http-bind"},
        ],
    }


def test_prometheus_targets_list_every_node_and_the_exporter() -> None:
    targets = prometheus_targets([NodeSpec("n1", 41001), NodeSpec("n2", 41002)], 9101, True)
    assert targets[:2] == [
        {"targets": ["127.0.0.1:41001"], "labels": {"component": "bosh-cm", "node_id": "n1"}},
        {"targets": ["127.0.0.1:41002"], "labels": {"component": "bosh-cm", "node_id": "n2"}},
    ]
    assert targets[2]["targets"] == ["127.0.0.1:9101"]
    assert targets[2]["labels"]["__metrics_path__"] == "/haproxy-metrics"
    assert len(prometheus_targets([NodeSpec("n1", 1)], 0, True)) == 1


def test_the_commented_example_routes_with_the_same_lines_as_the_launcher() -> None:
    """conf/haproxy-bosh.cfg must not drift from what the launcher runs (and the tests check
    with real traffic): the routing, checking and retry lines are the same text."""
    example = (Path(__file__).resolve().parents[2] / "conf" / "haproxy-bosh.cfg").read_text()
    lines = {line.strip() for line in example.splitlines() if not line.strip().startswith("#")}
    ex_nodes = [HaproxyNode(f"n{i}", f"10.0.0.1{i}", 5280) for i in (1, 2, 3)]
    rendered = render_haproxy_cfg(ex_nodes, host="0.0.0.0", port=80, max_wait=60,
                                  private_paths=("/prebind",))
    for name in ("frontend bosh", "backend bosh_owner", "backend bosh_new", "defaults"):
        for line in section(rendered, name):
            if line.startswith(("bind ", "http-request set-header X-Forwarded-Proto", "timeout ")):
                continue  # TLS, the public address and the timeouts differ on purpose
            assert line in lines, (name, line)


def test_private_paths_are_refused_on_the_public_listener_too() -> None:
    """Review: the prebind path must not be reachable through the public HAProxy."""
    front = section(render(private_paths=("/prebind",)), "frontend bosh")
    assert "http-request deny deny_status 404 if { path,url_dec -m str /healthz /readyz /metrics " \
        "/prebind }" in front
