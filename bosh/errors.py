"""BOSH terminal conditions (XEP-0124 §17.2) and the exception that carries one.

Errors are raised with a :class:`Condition` and translated into a terminate body exactly
once, at the boundary (``bosh.wire.render_terminate``).
"""

from __future__ import annotations

import enum


class Condition(enum.Enum):
    """The terminal binding conditions of XEP-0124 §17.2, with their exact strings."""

    BAD_REQUEST = "bad-request"
    HOST_GONE = "host-gone"
    HOST_UNKNOWN = "host-unknown"
    IMPROPER_ADDRESSING = "improper-addressing"
    INTERNAL_SERVER_ERROR = "internal-server-error"
    ITEM_NOT_FOUND = "item-not-found"
    OTHER_REQUEST = "other-request"
    POLICY_VIOLATION = "policy-violation"
    REMOTE_CONNECTION_FAILED = "remote-connection-failed"
    REMOTE_STREAM_ERROR = "remote-stream-error"
    SEE_OTHER_URI = "see-other-uri"
    SYSTEM_SHUTDOWN = "system-shutdown"
    UNDEFINED_CONDITION = "undefined-condition"

    @property
    def legacy_http_status(self) -> int:
        """HTTP status for a client that sent no 'ver' (XEP-0124 §17.1, deprecated codes).

        Only the three starred conditions of §17.2 have a legacy code; all others are 200.
        """
        return _LEGACY_STATUS.get(self, 200)


_LEGACY_STATUS = {
    Condition.BAD_REQUEST: 400,
    Condition.POLICY_VIOLATION: 403,
    Condition.ITEM_NOT_FOUND: 404,
}


class BoshError(Exception):
    """A failure that ends (or prevents) a session with a terminal condition."""

    def __init__(self, condition: Condition, detail: str = "") -> None:
        super().__init__(f"{condition.value}: {detail}" if detail else condition.value)
        self.condition = condition
        self.detail = detail
        # Set by the parser when the body was readable enough to name its session, so that
        # session can be ended properly (checklist #93) instead of left dangling.
        self.sid: str | None = None
        self.ver: str | None = None


class ConfigError(Exception):
    """A configuration mistake; the message names the file, the key and what is allowed."""


class StreamCondition(enum.Enum):
    """The stream error conditions (RFC 6120 §4.9.3) that bosh-cm itself sends over
    WebSocket (RFC 7395 §3.5), with their exact element names."""

    HOST_UNKNOWN = "host-unknown"
    INVALID_NAMESPACE = "invalid-namespace"
    INVALID_XML = "invalid-xml"
    NOT_WELL_FORMED = "not-well-formed"
    POLICY_VIOLATION = "policy-violation"
    RESTRICTED_XML = "restricted-xml"
    SYSTEM_SHUTDOWN = "system-shutdown"
    HOST_GONE = "host-gone"
    CONNECTION_TIMEOUT = "connection-timeout"
    INTERNAL_SERVER_ERROR = "internal-server-error"
    UNSUPPORTED_ENCODING = "unsupported-encoding"
    UNSUPPORTED_VERSION = "unsupported-version"


class XmlRefused(Exception):
    """A client document the hardened parser refuses (``bosh.xmlsafe``); each transport maps
    ``kind`` to its own condition once, at its boundary."""

    NOT_WELL_FORMED = "not-well-formed"   # not XML, or not UTF-8
    RESTRICTED = "restricted-xml"         # DOCTYPE, comment, processing instruction
    TOO_COMPLEX = "policy-violation"      # nesting or attribute bounds exceeded
    INVALID = "invalid-xml"               # well-formed but not acceptable (text where none may be)

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
