"""A throwaway Prosody for the tests: re-exported from :mod:`scripts.lib.prosody`, the one
copy (the scripts use it too and do not import tests; design.md §8 rule 9)."""

from __future__ import annotations

from scripts.lib.prosody import (USERS, ProsodyError, ProsodyServer, encode_store_name,
                                 free_port, lua, make_self_signed_cert, port_open,
                                 prosody_available, scram_account_text)

__all__ = ["ProsodyServer", "ProsodyError", "prosody_available", "free_port", "USERS",
           "make_self_signed_cert"]

# The names these helpers had here before they moved (tests/support/ejabberd.py uses one).
_lua = lua
_port_open = port_open
_encode_store_name = encode_store_name
