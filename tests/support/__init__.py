"""Test support: real components (Prosody, bosh-cm) and a black-box BOSH client.

Importable from tests, from ``scripts/run`` (the demo launcher) and from benchmarks, with the
repository root on ``sys.path``: ``from tests.support.prosody import ProsodyServer``.
"""
