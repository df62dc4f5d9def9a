"""Every setting is documented in the README (a setting nobody can find does not exist)."""

from pathlib import Path

from vectordb.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_setting_is_in_the_readme():
    text = README.read_text()
    missing = [f"VECTORDB_{name.upper()}" for name in Settings.model_fields if f"VECTORDB_{name.upper()}" not in text]
    assert not missing, f"settings missing from README.md: {missing}"
