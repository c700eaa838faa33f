"""Test support: real components (Prosody, ejabberd, nginx, bosh-cm) and black-box clients.

The pieces the scripts need too (Prosody, bosh-cm as a subprocess, the BOSH client, the XMPP
peer) live in ``scripts/lib/``; the modules of the same name here re-export them, so tests
keep importing ``from tests.support.prosody import ProsodyServer`` and scripts never import
tests (design.md §8 rule 9).
"""
