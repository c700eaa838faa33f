"""bosh.config: the strict TOML loader (design §8 rule 6): unknown keys and bad values are
ConfigErrors naming the file, the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bosh import config
from bosh.errors import ConfigError


def load_text(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "bosh-cm.toml"
    path.write_text(text, encoding="utf-8")
    return config.load(path)


def error_for(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    message = str(info.value)
    assert str(tmp_path / "bosh-cm.toml") in message  # names the file
    return message


def test_empty_file_gives_the_documented_defaults(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "")
    assert cfg == config.Config()
    assert cfg.http.path == "/http-bind" and cfg.http.cors_origins == ("*",)
    assert cfg.upstream.tls == "required"  # design §9: TLS upstream by default


def test_valid_file_is_loaded_with_types(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, """
[http]
port = 5281
cors_origins = ["https://app.example"]
[bosh]
max_wait = 10
[upstream]
domains = ["example.com"]
connect_timeout = 5
tls = "none"
[log]
level = "DEBUG"
""")
    assert cfg.http.port == 5281 and cfg.http.cors_origins == ("https://app.example",)
    assert cfg.bosh.max_wait == 10
    assert cfg.upstream.connect_timeout == 5.0 and isinstance(cfg.upstream.connect_timeout, float)
    assert cfg.upstream.tls == "none" and cfg.log.level == "DEBUG"


@pytest.mark.parametrize("text,must_mention", [
    ("[bosh]\nmax_wiat = 10\n", ["[bosh]", "max_wiat", "allowed", "max_wait"]),
    ("[htp]\nport = 1\n", ["[htp]", "allowed", "[http]"]),
])
def test_unknown_key_or_section_names_it_and_the_allowed_ones(tmp_path: Path, text: str,
                                                              must_mention: list[str]) -> None:
    message = error_for(tmp_path, text)
    for part in must_mention:
        assert part in message


@pytest.mark.parametrize("text,key,expected", [
    ("[bosh]\nmax_wait = \"10\"\n", "max_wait", "integer"),
    ("[bosh]\nmax_wait = 1.5\n", "max_wait", "integer"),
    ("[bosh]\nmax_wait = true\n", "max_wait", "integer"),
    ("[http]\nhost = 1\n", "host", "string"),
    ("[upstream]\nconnect_timeout = \"5\"\n", "connect_timeout", "number"),
    ("[upstream]\ndomains = \"example.com\"\n", "domains", "list"),
    ("[upstream]\ndomains = [1]\n", "domains", "list"),
    ("[http]\ncors_origins = [\"\"]\n", "cors_origins", "list"),
])
def test_wrong_type_names_the_key_and_the_expected_type(tmp_path: Path, text: str, key: str,
                                                       expected: str) -> None:
    message = error_for(tmp_path, text)
    assert key in message and expected in message


@pytest.mark.parametrize("text,key,allowed", [
    ("[http]\nport = 0\n", "port", "1 to 65535"),
    ("[http]\nport = 70000\n", "port", "1 to 65535"),
    ("[bosh]\nmax_wait = 0\n", "max_wait", "1 to 3600"),
    ("[bosh]\nmax_hold = 17\n", "max_hold", "0 to 16"),
    ("[http]\nmax_body_bytes = 10\n", "max_body_bytes", "1024"),
    ("[upstream]\nconnect_timeout = 0.0\n", "connect_timeout", "0.1"),
    ("[upstream]\ntls = \"maybe\"\n", "tls", "'required', 'none'"),
    ("[log]\nlevel = \"LOUD\"\n", "level", "'DEBUG'"),
])
def test_out_of_range_or_not_allowed_value_names_key_and_allowed_values(
        tmp_path: Path, text: str, key: str, allowed: str) -> None:
    message = error_for(tmp_path, text)
    assert key in message and "allowed" in message and allowed in message


@pytest.mark.parametrize("text", [
    "[http]\npath = \"http-bind\"\n",
    "[upstream]\ndomains = []\n",
    "[http]\nport = \n",               # not TOML
    "http = 5\n",                      # a section that is not a table
])
def test_inconsistent_or_malformed_file_is_a_config_error(tmp_path: Path, text: str) -> None:
    error_for(tmp_path, text)


def test_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path / "absent.toml")
    assert "absent.toml" in str(info.value)


@pytest.mark.parametrize("text", ["[upstream]\nkeepalive = nan\n",
                                  "[upstream]\nconnect_timeout = nan\n"])
def test_nan_is_out_of_range(tmp_path: Path, text: str) -> None:
    message = error_for(tmp_path, text)
    assert "allowed" in message


def test_one_default_per_setting_core_limits_agree_with_the_config() -> None:
    """Issue 11: a setting has one default; the core's Limits/WsLimits carry the config's."""
    import dataclasses

    from bosh import config
    from bosh.session import Limits
    from bosh.ws_session import WsLimits

    bosh_defaults = config.BoshConfig()
    for f in dataclasses.fields(Limits):
        if hasattr(bosh_defaults, f.name):
            assert f.default == getattr(bosh_defaults, f.name), f.name
    ws = WsLimits()
    assert ws.max_message_bytes == bosh_defaults.max_stanza_bytes
    assert ws.ping_interval == config.WebSocketConfig().ping_interval
