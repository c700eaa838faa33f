"""Pieces the scripts (bench, soak, demo, conformance comparison) and the tests share.

Scripts stand alone and do not import ``tests`` (design.md §8 rule 9); the test suite's
``tests/support/<name>.py`` re-exports the module of the same name here, so there is one copy:

* :mod:`scripts.lib.prosody` - a throwaway Prosody (loopback, STARTTLS, users)
* :mod:`scripts.lib.boshcm` - bosh-cm as a subprocess
* :mod:`scripts.lib.boshclient` - the black-box BOSH client (SASL from :mod:`bosh.sasl`)
* :mod:`scripts.lib.xmpplogin` - the login steps (SASL, restart, bind) every test client and
  the conformance checker share; standard library, lxml and :mod:`bosh.sasl` only
* :mod:`scripts.lib.xmppclient` - a plain XMPP-over-TCP peer (slixmpp)
* :mod:`scripts.lib.upstreams` - :class:`XmppServer`, what both throwaway servers offer
* :mod:`scripts.lib.procs` - free ports, waiting for a child to start, stopping it
  (SIGTERM, deadline, SIGKILL): what every launcher above and in tests/support does

Import with the repository root on ``sys.path``: ``from scripts.lib.prosody import ProsodyServer``.
"""
