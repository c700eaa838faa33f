"""The shipped operations examples agree with the config defaults (issue 4): nginx holds a
request longer than max_wait and does not buffer; the systemd unit reloads with SIGHUP and
waits longer than shutdown_grace."""

import re
from pathlib import Path

from bosh.config import Config

CONF = Path(__file__).resolve().parents[2] / "conf"


def _seconds(text: str, key: str) -> float:
    m = re.search(rf"^\s*{key}\s+(\d+)s?;", text, re.M)
    assert m, key
    return float(m.group(1))


def test_nginx_example_outlasts_max_wait_and_does_not_buffer() -> None:
    text = (CONF / "nginx-bosh.conf").read_text()
    assert _seconds(text, "proxy_read_timeout") > Config().bosh.max_wait
    assert re.search(r"^\s*proxy_buffering off;", text, re.M)
    assert "X-Forwarded-For" in text and "trusted_proxies" in text
    assert re.search(r"client_max_body_size 1m;", text) and Config().http.max_body_bytes == 1 << 20


def test_systemd_unit_reloads_with_sighup_and_outwaits_the_grace() -> None:
    text = (CONF / "bosh-cm.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text
    assert "KillSignal=SIGTERM" in text
    stop = re.search(r"^TimeoutStopSec=(\d+)", text, re.M)
    assert stop and float(stop.group(1)) > Config().http.shutdown_grace
