"""The events every transport's session core emits towards its upstream (sans-IO).

A session core (``bosh.session`` for BOSH, ``bosh.ws_session`` for WebSocket) returns lists
of frozen events; its driver executes them. The upstream-facing ones live here so that one
piece of driver code (``bosh.hub.UpstreamLink``) runs them for every transport; each core
adds its own client-facing events (BOSH: ``Respond``; WebSocket: ``SendText``,
``CloseSocket``...).
"""

from __future__ import annotations

from dataclasses import dataclass

from bosh.errors import Condition, StreamCondition
from bosh.ports import ClientElement, StreamParams

__all__ = ["OpenUpstream", "SendUpstream", "RestartUpstream", "CloseUpstream", "FinishUpstream",
           "FlowControl",
           "SessionEnded", "EndCondition"]

#: Why a session ended: a BOSH condition (XEP-0124 §17.2) or a stream error condition
#: (RFC 6120 §4.9.3) of a WebSocket session; None = a normal end.
EndCondition = Condition | StreamCondition | None


@dataclass(frozen=True, slots=True)
class OpenUpstream:
    params: StreamParams


@dataclass(frozen=True, slots=True)
class SendUpstream:
    elements: tuple[ClientElement, ...]


@dataclass(frozen=True, slots=True)
class RestartUpstream:
    params: StreamParams


@dataclass(frozen=True, slots=True)
class CloseUpstream:
    """Close the upstream stream; ``end_stream=False`` drops the TCP connection without
    ``</stream:stream>`` so the server keeps an XEP-0198 session resumable (§5)."""

    end_stream: bool = True


@dataclass(frozen=True, slots=True)
class FinishUpstream:
    """Send ``</stream:stream>`` and keep reading until the server closes its stream too
    (RFC 6120 §4.4): what it sent meanwhile still arrives; ``upstream_closed`` follows."""


@dataclass(frozen=True, slots=True)
class FlowControl:
    """Pause (``paused=True``) or resume reading from the server: the queue for a client
    that does not keep up must not grow without bound."""

    paused: bool


@dataclass(frozen=True, slots=True)
class SessionEnded:
    condition: EndCondition
