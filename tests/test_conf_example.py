"""The documented example config stays complete and loadable (issue: every key documented)."""

import dataclasses
import subprocess
import sys
from pathlib import Path

from bosh import config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "conf" / "bosh-cm.toml"


def test_example_config_loads_and_equals_the_defaults() -> None:
    assert config.load(EXAMPLE) == config.Config()


def test_example_config_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    for section in dataclasses.fields(config.Config):
        assert f"[{section.name}]" in text
        for key in dataclasses.fields(section.default.__class__):
            assert f"\n{key.name} = " in text, f"[{section.name}] {key.name} missing from {EXAMPLE}"


def test_bad_config_exits_2_naming_file_key_and_allowed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[upstream]\ntls = "sometimes"\n')
    proc = subprocess.run([sys.executable, "-m", "bosh", "--config", str(bad)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "tls" in proc.stderr and "'required'" in proc.stderr
