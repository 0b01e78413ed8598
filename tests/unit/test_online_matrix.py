"""Assembling a model's feature matrix from stored documents: layout, broadcast, defaults."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from twotier.features.builtin import GENRES, builtin_projects
from twotier.features.online import RequestValue, assemble_matrix, read_ids
from twotier.features.spec import ModelFeatureSpec

MOVIELENS = builtin_projects()["movielens"]
MEMES = builtin_projects()["memes"]
NOW = 1_700_000_000_000


def _col(spec: ModelFeatureSpec, name: str) -> int:
    return spec.columns().index(name)


def test_movielens_ranker_layout_broadcast_and_defaults() -> None:
    spec = MOVIELENS.model_spec("ranker")
    user = {"views": 10, "smiles": 4, "dislikes": 1, "rating_sum": 38.0, "last_view_ts": NOW - 5000}
    items = [{"views": 3, "smiles": 3, "rating_sum": 15.0, "last_view_ts": NOW - 60_000}, None]
    pairs = [{"views": 1}, None]
    genres = {"views_by_genre__Drama": 6, "views_by_genre__Comedy": 2, "smiles_by_genre__War": 1}
    # Item data documents: a Drama-War movie of 1957, and one the catalogue lacks.
    attrs = [{"genres": ["War", "Drama"], "year": "1957"}, None]
    request: dict[str, RequestValue] = {
        "tier1_score": [0.9, 0.1],
        "tier1_rank": [0.0, 200.0],
        "popular_rank": 300.0,
    }
    x = assemble_matrix(spec, [[user], items, pairs, [genres], attrs], 2, request, now_ms=NOW)

    assert x.dtype == np.float32
    # 6 user + 8 item + 1 pair + 0 (genre counts feed only the affinities) + 19 genres
    # + year + 2 affinities + 3 request features.
    assert x.shape == (2, len(spec.columns())) == (2, 40)
    # rating_sum and last_view_ts are stored for mean_rating and recency, not columns.
    user_row = [10, 4, 1, (4 + 0.3 * 5) / 15, 5.0, (38 + 3.5 * 5) / 15]
    item_known = [3, 3, 0, 0.0, 0.0, (3 + 1.5) / 8, 60.0, (15 + 17.5) / 8]
    # An unknown item: counters 0, the rate priors, recency default (never viewed).
    item_unknown = [0, 0, 0, 0.0, 0.0, 0.3, 1e9, 3.5]
    hot = [1.0 if g in ("Drama", "War") else 0.0 for g in GENRES]
    # Of 8 genre views, 6 in Drama; the one genre smile is in War.
    known = [*user_row, *item_known, 1, *hot, 1957, 6 / 8, 1.0, 0.9, 0, 300]
    unknown = [*user_row, *item_unknown, 0, *[0.0] * 19, 0, 0.0, 0.0, 0.1, 200, 300]
    np.testing.assert_allclose(x, np.array([known, unknown], dtype=np.float32), rtol=1e-6)
    cols = spec.columns()
    assert cols[:2] == ["user_stats.views", "user_stats.smiles"]
    assert cols[6] == "item_stats.views"
    assert cols[15:17] == ["item_attrs.genre__Action", "item_attrs.genre__Adventure"]
    assert cols[33:35] == ["item_attrs.genre__Western", "item_attrs.year"]
    assert cols[35:37] == ["affinity.genre_view_share", "affinity.genre_smile_share"]
    assert cols[-3:] == [
        "request.tier1_score",
        "request.tier1_rank",
        "request.popular_rank",
    ]


def test_a_per_candidate_request_feature_needs_one_value_per_row() -> None:
    spec = MOVIELENS.model_spec("ranker")
    docs = [[None], [None, None], [None, None], [None], [None, None]]
    with pytest.raises(ValueError, match="'tier1_rank': got 3 values for 2 candidates"):
        assemble_matrix(spec, docs, 2, {"tier1_rank": [0, 1, 2]}, now_ms=NOW)
    with pytest.raises(ValueError, match=r"'tier1_rank'.*not a number"):
        assemble_matrix(spec, docs, 2, {"tier1_rank": ["a", "b"]}, now_ms=NOW)  # type: ignore[list-item]
    defaults = assemble_matrix(spec, docs, 2, now_ms=NOW)
    assert defaults[:, _col(spec, "request.tier1_rank")].tolist() == [200, 200]


def test_unknown_user_gets_defaults_in_every_row() -> None:
    spec = MOVIELENS.model_spec("ranker")
    items = [{"views": 2}, {"views": 7}, None]
    x = assemble_matrix(spec, [[None], items, [None] * 3, [None], [None]], n_rows=3, now_ms=NOW)
    assert x.shape == (3, 40)
    np.testing.assert_array_equal(x[:, _col(spec, "user_stats.views")], [0, 0, 0])
    np.testing.assert_allclose(x[:, _col(spec, "user_stats.smile_rate")], [0.3] * 3)
    np.testing.assert_array_equal(x[:, _col(spec, "item_stats.views")], [2, 7, 0])


def test_memes_by_values_pairs_and_request_features_last() -> None:
    spec = MEMES.model_spec("ranker")
    cols = spec.columns()
    assert cols[-1] == "request.position"
    user = {"smiles_by_type__gif": 3, "smiles_by_type__video": 1}
    items = [{"shares": 2}, {"comments": 5}]
    pairs = [{"views": 4, "last_view_ts": NOW - 2000}, None]
    kinds = [{"content_type": "gif"}, {"content_type": "image"}]
    docs: list[Sequence[Mapping[str, Any] | None]] = [[user], items, pairs, kinds]
    x = assemble_matrix(spec, docs, 2, request={"position": 7}, now_ms=NOW)
    assert x.shape == (2, len(cols))
    np.testing.assert_array_equal(x[:, cols.index("user_stats.smiles_by_type__gif")], [3, 3])
    np.testing.assert_array_equal(x[:, cols.index("user_stats.smiles_by_type__image")], [0, 0])
    np.testing.assert_array_equal(x[:, cols.index("item_stats.shares")], [2, 0])
    np.testing.assert_array_equal(x[:, cols.index("item_stats.comments")], [0, 5])
    np.testing.assert_array_equal(x[:, cols.index("user_item.views")], [4, 0])
    np.testing.assert_allclose(x[:, cols.index("user_item.last_view_ts")], [NOW - 2000, 0])
    np.testing.assert_array_equal(x[:, cols.index("item_attrs.content_type__gif")], [1, 0])
    np.testing.assert_array_equal(x[:, cols.index("item_attrs.content_type__image")], [0, 1])
    # 3 of the user's 4 smiles were on gifs, none on images.
    np.testing.assert_allclose(x[:, cols.index("affinity.type_smile_share")], [0.75, 0.0])
    np.testing.assert_array_equal(x[:, -1], [7, 7])


def test_missing_request_feature_takes_its_default() -> None:
    spec = MEMES.model_spec("ranker")
    x = assemble_matrix(spec, [[None], [None], [None], [None]], 1, now_ms=NOW)
    assert x[0, -1] == 0.0


def test_recency_uses_the_current_time_by_default() -> None:
    spec = MOVIELENS.model_spec("ranker")
    import time

    last = time.time() * 1000 - 10_000
    x = assemble_matrix(spec, [[{"last_view_ts": last}], [None], [None], [None], [None]], 1)
    assert 9.0 < x[0, _col(spec, "user_stats.since_last_view_s")] < 60.0


def test_no_candidates_gives_an_empty_matrix_of_the_right_width() -> None:
    spec = MOVIELENS.model_spec("ranker")
    x = assemble_matrix(spec, [[None], [], [], [None], []], 0, now_ms=NOW)
    assert x.shape == (0, 40)


def test_unknown_request_feature_is_named() -> None:
    spec = MEMES.model_spec("ranker")
    with pytest.raises(ValueError, match=r"no request feature\(s\) \['postion'\].*position"):
        assemble_matrix(spec, [[None], [None], [None], [None]], 1, request={"postion": 1})


def test_wrong_number_of_documents_is_named() -> None:
    spec = MOVIELENS.model_spec("ranker")
    with pytest.raises(ValueError, match="'item_stats': got 2 documents for 3 rows"):
        assemble_matrix(spec, [[None], [None, None], [None] * 3, [None], [None]], 3, now_ms=NOW)
    with pytest.raises(ValueError, match="reads 5 feature groups"):
        assemble_matrix(spec, [[None]], 1, now_ms=NOW)


def test_read_ids_per_entity() -> None:
    assert read_ids(MEMES.group("user_stats"), "u", ["a", "b"]) == ["u"]
    assert read_ids(MEMES.group("item_stats"), "u", ["a", "b"]) == ["a", "b"]
    assert read_ids(MEMES.group("user_item"), "u", ["a", "b"]) == ["u|a", "u|b"]
