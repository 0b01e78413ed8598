"""docs/tutorial.md, followed: its configuration validates and the CLI shows what it says."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from twotier.config import load_settings

TUTORIAL = Path(__file__).resolve().parents[2] / "docs" / "tutorial.md"


def _config(tmp_path: Path) -> Path:
    block = re.search(r"```yaml\n(.*?)```", TUTORIAL.read_text(), re.S)
    assert block, "the tutorial's configuration block is gone"
    path = tmp_path / "twotier.yaml"
    path.write_text(block.group(1))
    return path


def _twotier(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOTIER_")}
    env |= {"TWOTIER_CONFIG": str(config), "TWOTIER_DATA_DIR": str(config.parent / "data")}
    return subprocess.run(
        [sys.executable, "-c", "from twotier.cli import main; main()", *args],
        env={**env, "COLUMNS": "80"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tutorial_project_validates_with_every_feature_kind(tmp_path: Path) -> None:
    config = _config(tmp_path)
    settings = load_settings(config, data_dir=tmp_path)
    assert settings.project == "shorts" and list(settings.projects) == ["shorts"]
    spec = settings.project_features("shorts").model_spec("ranker")
    columns = spec.columns()
    assert "item_attrs.topic__music" in columns and "item_attrs.length_s" in columns
    assert "affinity.topic_like_share" in columns
    assert columns[-3:] == ["request.tier1_score", "request.tier1_rank", "request.popular_rank"]
    kinds = {f.kind for g in spec.groups for f in g.features}
    assert kinds == {"counter", "last_seen", "recency", "rate", "attribute"}


def test_the_tutorial_commands_say_what_it_says(tmp_path: Path) -> None:
    config = _config(tmp_path)
    check = _twotier(config, "config", "--check")
    assert check.returncode == 0 and check.stdout == "", check.stderr
    projects = json.loads(_twotier(config, "projects", "--json").stdout)
    assert [p["project"] for p in projects] == ["shorts"] and projects[0]["default"]
    attrs = _twotier(config, "features", "item_attrs")
    assert (
        attrs.returncode == 0
        and "topic__music … (3)" in attrs.stdout
        and "length_s" in attrs.stdout
    )


def test_the_tutorial_error_example_is_what_twotier_prints(tmp_path: Path) -> None:
    config = _config(tmp_path)
    data = yaml.safe_load(config.read_text())
    group = data["projects"]["shorts"]["feature_groups"][3]
    group["features"][0]["values"] = ["music", "sport"]
    config.write_text(yaml.safe_dump(data))
    bad = _twotier(config, "config", "--check")
    assert bad.returncode == 2
    assert "declare the same values" in bad.stderr and "Traceback" not in bad.stderr
