"""Where to connect for a stream: pure helpers, no I/O.

Allow-listing of ``route`` and of ``to`` happens on the BOSH side before a stream is
opened; by the time :func:`plan_route` runs, ``params.route`` is trusted.
"""

from __future__ import annotations

from dataclasses import dataclass

from bosh.config import UpstreamConfig
from bosh.ports import StreamParams

__all__ = ["DEFAULT_CLIENT_PORT", "SRV_SERVICE", "RoutePlan", "plan_route", "srv_name",
           "order_srv_answers"]

#: RFC 6120 §3.2.3: the fallback when no SRV record exists.
DEFAULT_CLIENT_PORT = 5222
#: RFC 6120 §3.2.1: the service name for client-to-server streams.
SRV_SERVICE = "xmpp-client"


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """How to reach the server for one stream.

    ``srv_domain`` set: look up ``_xmpp-client._tcp.<srv_domain>`` first and try its
    targets in order; ``fallback`` is used when the lookup yields nothing (RFC 6120 §3.2.2).
    ``srv_domain`` unset: try ``fallback`` only.
    """

    fallback: tuple[tuple[str, int], ...]
    srv_domain: str | None = None


def srv_name(domain: str) -> str:
    """The SRV owner name queried for ``domain`` (RFC 6120 §3.2.1)."""
    return f"_{SRV_SERVICE}._tcp.{domain}"


def plan_route(config: UpstreamConfig, params: StreamParams) -> RoutePlan:
    """Decide the connection targets for ``params`` under ``config``.

    Priority: an (already allow-listed) ``route`` from the client (XEP-0124 §7: "route"),
    then the configured fixed host, then SRV of the ``to`` domain.
    """
    if params.route is not None:
        host, port = params.route
        return RoutePlan(fallback=((host, port),))
    if config.host:
        return RoutePlan(fallback=((config.host, config.port),))
    return RoutePlan(fallback=((params.to, DEFAULT_CLIENT_PORT),), srv_domain=params.to)


def order_srv_answers(answers: list[tuple[str, int]],
                      fallback: tuple[tuple[str, int], ...]) -> list[tuple[str, int]]:
    """Targets to try, given already priority/weight-ordered SRV answers.

    RFC 2782 / RFC 6120 §3.2.1: a single target of ``.`` means the service is decidedly
    not available at this domain: no targets at all. No answers: use the fallback.
    """
    if len(answers) == 1 and answers[0][0] in (".", ""):
        return []
    cleaned = [(host.rstrip("."), port) for host, port in answers if host not in (".", "")]
    return cleaned if cleaned else list(fallback)
