"""The black-box BOSH test client: re-exported from :mod:`scripts.lib.boshclient`, the one
BOSH client of the tests and the scripts (design.md §8 rule 9); its SASL is :mod:`bosh.sasl`.

    async with BoshClient(url) as c:
        await c.create("localhost")
        await c.login("alice", "pw", mechanism="SCRAM-SHA-1")   # SASL, restart, bind
"""

from __future__ import annotations

from scripts.lib.boshclient import (BODY, FEATURES, NS_BIND, NS_CLIENT, NS_HTTPBIND, NS_SASL,
                                    NS_STANZAS, NS_STREAM, NS_STREAMS_ERR, NS_XBOSH, NS_XML,
                                    BoshClient, BoshProtocolError, BoshResponse, BoshTerminated,
                                    Predicate, SaslFailure, is_message, is_presence, is_tag,
                                    bind_resource, parse_body, sasl_exchange,
                                    scram_sha1_client)

__all__ = [
    "NS_HTTPBIND", "NS_XBOSH", "NS_STREAM", "NS_CLIENT", "NS_SASL", "NS_BIND", "NS_STANZAS",
    "NS_STREAMS_ERR", "NS_XML", "BODY", "FEATURES", "Predicate",
    "BoshResponse", "BoshClient", "BoshTerminated", "BoshProtocolError", "SaslFailure",
    "parse_body", "is_tag", "is_message", "is_presence", "scram_sha1_client", "sasl_exchange",
    "bind_resource",
]
