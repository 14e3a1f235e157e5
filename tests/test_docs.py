"""The README documents every setting (the table is the reference users read)."""

from __future__ import annotations

from inferq.devstack import ROOT
from inferq.settings import Settings


def test_every_setting_is_in_the_readme_table():
    readme = (ROOT / "README.md").read_text()
    missing = [
        name.upper() for name in Settings.model_fields if f"| `{name.upper()}` |" not in readme
    ]
    assert not missing, f"README's configuration table lacks: {missing}"
