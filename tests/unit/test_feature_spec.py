"""Feature groups and model features: layout, validation, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from twotier.config import ConfigError, load_settings
from twotier.features.builtin import builtin_projects
from twotier.features.spec import FeatureGroup, ModelFeatureSpec, ProjectFeatures


def test_model_layout_is_groups_in_order_then_request_features() -> None:
    spec = builtin_projects()["memes"].model_spec("ranker")
    columns = spec.columns()
    assert columns[0] == "user_stats.views"
    assert columns[5:8] == [
        "user_stats.smiles_by_type__image",
        "user_stats.smiles_by_type__video",
        "user_stats.smiles_by_type__gif",
    ]
    assert columns.index("item_stats.views") > columns.index("user_stats.since_last_view_s")
    assert columns[-1] == "request.position"
    assert len(columns) == len(set(columns))


def test_spec_round_trips_through_json() -> None:
    spec = builtin_projects()["movielens"].model_spec("ranker")
    assert ModelFeatureSpec.from_json(spec.to_json()) == spec


def test_stored_fields_are_the_raw_features_only() -> None:
    group = builtin_projects()["movielens"].group("user_stats")
    assert group.stored_fields() == ["views", "smiles", "dislikes", "rating_sum", "last_view_ts"]
    assert group.key == "user_stats_v1"


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ([{"name": "v", "kind": "counter", "action": "view"}] * 2, "declared twice"),
        ([{"name": "r", "kind": "rate", "numerator": "a", "denominator": "b"}], "refers to 'a'"),
        ([{"name": "r", "kind": "recency", "of": "nope"}], "last_seen"),
        ([{"name": "a.b", "kind": "counter", "action": "view"}], "pattern"),
        ([{"name": "c", "kind": "counter", "action": "view", "by": "genre"}], "go together"),
        ([{"name": "c", "kind": "median", "action": "view"}], "kind"),
    ],
)
def test_invalid_groups_are_rejected_with_the_reason(features: list[dict], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FeatureGroup.model_validate({"name": "g", "entity": "user", "features": features})


def test_model_reading_an_unknown_group_is_rejected() -> None:
    with pytest.raises(ValidationError, match="unknown feature group"):
        ProjectFeatures.model_validate({"models": [{"name": "m", "feature_groups": ["nope"]}]})


def test_projects_come_from_yaml_and_unknown_ones_are_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "twotier.yaml"
    cfg.write_text(
        "projects:\n  shop:\n    feature_groups:\n      - name: u\n        entity: user\n"
        "        features: [{name: views, kind: counter, action: view}]\n"
    )
    settings = load_settings(cfg)
    assert list(settings.projects) == ["shop"]
    assert settings.project_features("shop").group("u").stored_fields() == ["views"]
    with pytest.raises(ConfigError, match="unknown project 'movielens'"):
        settings.project_features("movielens")


def test_bad_project_name_in_yaml_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "twotier.yaml"
    cfg.write_text("projects:\n  Bad-Name: {}\n")
    with pytest.raises(ConfigError, match="Bad-Name"):
        load_settings(cfg)
