"""docs/configuration.md is exactly what docs/gen_config_reference.py generates."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import BaseModel

from twotier.config import Settings

REPO = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_config_reference", REPO / "docs" / "gen_config_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_reference_equals_generated() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == _generator().render(), (
        "docs/configuration.md is stale: run .venv/bin/python docs/gen_config_reference.py"
    )


def test_every_field_has_a_row_with_env_name_and_meaning() -> None:
    text = _generator().render()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z_.]+)` \|.*$", text, re.M)}
    for name, field in Settings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            for sub in section.model_fields:
                row = rows[f"{name}.{sub}"]
                assert f"`TWOTIER_{name.upper()}__{sub.upper()}`" in row
                assert not row.rstrip().endswith("|  |"), f"{name}.{sub} has no meaning"
        else:
            assert f"`TWOTIER_{name.upper()}`" in rows[name]


def test_check_mode_reports_a_stale_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gen = _generator()
    stale = tmp_path / "configuration.md"
    stale.write_text("# old\n")
    setattr(gen, "OUTPUT", stale)  # noqa: B010 - the module is loaded from a file path
    assert gen.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().out
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0
    assert stale.read_text() == gen.render()
