"""The checks, one per item of docs/spec-checklist.md (numbers and levels from there).

Each check gets a :class:`~conformance.scope.Scope` (sessions opened through it are closed
afterwards) and returns an optional note, or raises ``Fail``/``Skip``. Conventions
(checklist §0.1): CREATE asks wait=--wait (4 s) and hold=1 unless a check says otherwise;
"immediate" means answered within --slack (1 s) and "held" means not answered within it.

Checks that need server data without an account use a SASL <auth/> with a mechanism nobody
offers: the server answers <failure/> at once and keeps the stream (RFC 6120 §6.4.5).

One module per section of the checklist; importing this package registers all 128 items in
:data:`conformance.registry.CHECKS`:

    transport          A  HTTP transport (§5, §7.1, §17.1, §18.1)          #1-#9
    body               B  <body/> wrapper and payloads (§6; 0206 §2)       #10-#18
    creation_request   C  session creation request (§7.1; 0206 §3)         #19-#30
    creation_response  D  session creation response (§7.2; 0206 §4)       #31-#44
    hold_wait          E  request handling, hold and wait (§4, §8)         #45-#54
    rids               F  rids, ordering and retransmission (§14)          #55-#63
    acks               G  acknowledgements (§9)                            #64-#68
    inactivity         H  inactivity and pause (§10)                       #69-#77
    polling            I  overactivity and polling (§11, §12)              #78-#85
    terminate          J  terminating the session (§13)                    #86-#88
    errors             K  error reporting (§17; 0206 §6)                   #89-#101
    streams            L  multiple streams (§16)                           #102-#113
    keys               M  key sequencing (§15)                             #114-#117
    xmpp               N  XMPP specifics (0206 §3-§7; §19.2)               #118-#126
    security           O  security behaviour (§19)                         #127-#128

``common`` holds what several sections use (session creation, the shared default-CREATE
``profile``, timing helpers, ``always_skip``). Shared scenarios (``ctx.once``) live with the
section that owns them; #100 (errors) reuses the repeat-held scenario of #60 (rids).
"""

from conformance.checks import (acks, body, creation_request, creation_response, errors,
                                hold_wait, inactivity, keys, polling, rids, security, streams,
                                terminate, transport, xmpp)

SECTIONS = (transport, body, creation_request, creation_response, hold_wait, rids, acks,
            inactivity, polling, terminate, errors, streams, keys, xmpp, security)
