"""Static item attributes, counters by an item attribute and affinities: definitions,
column order, defaults, multi-valued attributes and the errors that name the fix."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from twotier.events import Event
from twotier.feature_jobs.enrich import group_updates
from twotier.features.builtin import GENRES, builtin_projects
from twotier.features.derive import (
    affinity_matrix,
    attribute_values,
    group_matrix,
    raw_arrays,
    raw_defaults,
    static_arrays,
)
from twotier.features.spec import (
    AttributeFeature,
    FeatureGroup,
    ProjectFeatures,
    value_field,
)

MOVIELENS = builtin_projects()["movielens"]


def _attrs_group(**extra: Any) -> FeatureGroup:
    return FeatureGroup.model_validate(
        {
            "name": "item_attrs",
            "entity": "item",
            "features": [
                {"name": "genre", "kind": "attribute", "attribute": "genres",
                 "values": ["Drama", "Sci-Fi", "War"]},
                {"name": "year", "kind": "attribute", "attribute": "year", "default": -1},
            ],
            **extra,
        }
    )  # fmt: skip


def test_attribute_columns_follow_the_declared_values_and_are_store_safe() -> None:
    group = _attrs_group()
    assert group.static and not group.from_events()
    assert group.columns() == ["genre__Drama", "genre__Sci_Fi", "genre__War", "year"]
    assert group.stored_fields() == group.columns()
    assert group.source_attributes() == ["genres", "year"]
    assert value_field("views_by_genre", "Film-Noir") == "views_by_genre__Film_Noir"
    cols = MOVIELENS.model_spec("ranker").columns()
    genres = [c for c in cols if c.startswith("item_attrs.genre__")]
    assert genres == [f"item_attrs.genre__{g.replace('-', '_')}" for g in GENRES]
    assert cols.index("item_attrs.year") == cols.index("item_attrs.genre__Western") + 1


def test_multi_valued_attributes_are_multi_hot_and_numbers_parse() -> None:
    group = _attrs_group()
    raw = static_arrays(
        group,
        [
            {"genres": ["War", "Drama"], "year": "1957"},
            {"genres": "Sci-Fi", "year": ["1982"]},  # a string, a list of one
            {"genres": [], "year": "unknown"},  # no genre; not a number: the default
            None,  # not in the item data at all
        ],
    )
    x = group_matrix(group, raw, now_ms=0.0)
    np.testing.assert_array_equal(
        x, [[1, 0, 1, 1957], [0, 1, 0, 1982], [0, 0, 0, -1], [0, 0, 0, -1]]
    )
    assert raw_defaults(group) == {"genre__Drama": 0, "genre__Sci_Fi": 0, "genre__War": 0,
                                   "year": -1}  # fmt: skip
    year = AttributeFeature(name="year", attribute="year")
    assert attribute_values(year, float("nan")) == [0.0]
    # raw_arrays reads a static group's documents as item data.
    np.testing.assert_array_equal(raw_arrays(group, [None])["year"], [-1])


@pytest.mark.parametrize(
    ("features", "entity", "message"),
    [
        (
            [{"name": "g", "kind": "attribute", "attribute": "genres", "values": ["A", "A"]}],
            "item",
            "same field twice",
        ),
        (
            [{"name": "g", "kind": "attribute", "attribute": "genres",
              "values": ["Sci-Fi", "Sci_Fi"]}],
            "item",
            "same field twice",
        ),
        (
            [{"name": "g", "kind": "attribute", "attribute": "genres", "values": ["a.b"]}],
            "item",
            "may not hold",
        ),
        (
            [{"name": "g", "kind": "attribute", "attribute": "genres"}],
            "user",
            "item group",
        ),
        (
            [{"name": "g", "kind": "attribute", "attribute": "genres"},
             {"name": "views", "kind": "counter", "action": "view"}],
            "item",
            "only attribute features",
        ),
        (
            [{"name": "g", "kind": "attribute", "attribute": "bad name"}],
            "item",
            "attribute",
        ),
    ],
)  # fmt: skip
def test_bad_attribute_groups_are_rejected_with_the_fix(
    features: list[dict[str, Any]], entity: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        FeatureGroup.model_validate({"name": "attrs", "entity": entity, "features": features})


def test_counters_by_a_multi_valued_attribute_count_each_value() -> None:
    group = MOVIELENS.group("user_genres")
    assert not group.columns()  # read only through the affinities
    assert len(group.stored_fields()) == 2 * len(GENRES)
    events = [
        Event(event_id="a", project="p", user_id="1", item_id="1", action="view", ts=1),
        Event(event_id="b", project="p", user_id="1", item_id="2", action="view", ts=2),
        Event(event_id="c", project="p", user_id="1", item_id="2", action="smile", ts=3),
        Event(event_id="d", project="p", user_id="1", item_id="404", action="view", ts=4),
    ]
    items = {"1": {"genres": ["Drama", "Film-Noir"]}, "2": {"genres": ["Drama"]}}
    updates = group_updates(group, events, items)
    assert updates.increments == {
        "1": {
            "views_by_genre__Drama": 2,
            "views_by_genre__Film_Noir": 1,
            "smiles_by_genre__Drama": 1,
        }
    }


def test_affinity_is_the_share_of_a_users_counts_in_the_items_values() -> None:
    spec = MOVIELENS.model_spec("ranker")
    names = [g.name for g in spec.groups]
    raws = [raw_arrays(g, [None]) for g in spec.groups]
    user = raws[names.index("user_genres")]
    user["views_by_genre__Drama"] = np.array([6.0])
    user["views_by_genre__Film_Noir"] = np.array([2.0])
    user["smiles_by_genre__Drama"] = np.array([1.0])
    raws[names.index("item_attrs")] = static_arrays(
        spec.groups[names.index("item_attrs")],
        [{"genres": ["Drama", "Film-Noir"]}, {"genres": ["Film-Noir"]}, {"genres": []}],
    )
    x = affinity_matrix(spec, raws, 3)
    np.testing.assert_allclose(x[:, 0], [1.0, 0.25, 0.0])  # views in the item's genres
    np.testing.assert_allclose(x[:, 1], [1.0, 0.0, 0.0])  # smiles
    # A user without counts gets the declared default.
    empty = [raw_arrays(g, [None]) for g in spec.groups]
    np.testing.assert_array_equal(affinity_matrix(spec, empty, 2), np.zeros((2, 2)))


def _project(affinity: dict[str, Any], values: list[str] | None = None) -> dict[str, Any]:
    return {
        "feature_groups": [
            {"name": "u", "entity": "user", "features": [
                {"name": "by_g", "kind": "counter", "action": "view", "by": "genre",
                 "values": values or ["A", "B"]},
                {"name": "views", "kind": "counter", "action": "view"}]},
            {"name": "i", "entity": "item", "features": [
                {"name": "g", "kind": "attribute", "attribute": "genres", "values": ["A", "B"]},
                {"name": "year", "kind": "attribute", "attribute": "year"}]},
        ],
        "models": [{"name": "m", "feature_groups": ["u", "i"], "affinities": [affinity]}],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("affinity", "values", "message"),
    [
        ({"name": "a", "user": "u.views", "item": "i.g"}, None, "not a counter with `by`"),
        ({"name": "a", "user": "u.by_g", "item": "i.year"}, None, "not an attribute with"),
        ({"name": "a", "user": "i.g", "item": "u.by_g"}, None, "is not a user group"),
        ({"name": "a", "user": "x.by_g", "item": "i.g"}, None, "does not"),
        ({"name": "a", "user": "u.by_g", "item": "i.g"}, ["A", "C"], "declare the same values"),
        ({"name": "a", "user": "u.by_g", "item": "ig"}, None, "item"),
    ],
)
def test_bad_affinities_are_rejected_with_the_reason(
    affinity: dict[str, Any], values: list[str] | None, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        ProjectFeatures.model_validate(_project(affinity, values))


def test_affinity_columns_come_after_the_groups_and_before_request_features() -> None:
    project = ProjectFeatures.model_validate(
        _project({"name": "share", "user": "u.by_g", "item": "i.g"})
    )
    assert project.model_spec("m").columns() == [
        "u.by_g__A",
        "u.by_g__B",
        "u.views",
        "i.g__A",
        "i.g__B",
        "i.year",
        "affinity.share",
    ]
