"""Training-set partitions and A/B group sets of the asset graph, on a real embedded chdb.

Backfills: two monthly partitions materialised in two runs hold exactly their months'
rows, and running one again replaces its rows instead of adding to them. Reshuffle: the
group of every row follows the shuffle generation that held at the row's time.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from offline_stores import with_offline_store

from twotier.config import Settings
from twotier.experiments import Experiment, ExperimentGroup, assign, record_shuffle
from twotier.features.offline import materialize_all_snapshots
from twotier.models.datasets import read_group_set, read_tier_one_set, read_tier_two_set
from twotier.offline_store import events_frame, open_offline_store
from twotier.pipelines.materialize import materialization_metadata, materialize_project
from twotier.replay import movielens_events

PROJECT = "pipe_parts"
RATINGS = 5000  # March to November 1996
EXPERIMENT = Experiment(
    name="ranker_ab",
    salt="pipeline-test",
    shuffle=2,
    groups=(
        ExperimentGroup(name="control", share=0.5, alias="champion"),
        ExperimentGroup(name="treatment", share=0.5, alias="challenger"),
    ),
)
RESHUFFLE_TS = int(datetime(1996, 7, 1, tzinfo=UTC).timestamp() * 1000)


def _ms(year: int, month: int) -> int:
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture(scope="module")
def parts_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = tmp_path_factory.mktemp("pipeline-partitions") / "offline"
    features = settings.project_features("movielens").model_copy(
        update={"experiments": (EXPERIMENT,)}
    )
    return with_offline_store(settings, data, {PROJECT: features})


@pytest.fixture(scope="module")
def events(parts_settings: Settings, movielens: Path) -> Iterator[pd.DataFrame]:
    frame = events_frame(movielens_events(PROJECT, movielens, limit=RATINGS))
    with open_offline_store(parts_settings) as store:
        store.ensure_tables(PROJECT)
        store.insert_events(PROJECT, frame)
        materialize_all_snapshots(store, parts_settings, PROJECT)
        # Generation 1 held from the start; the reshuffle to 2 happened on 1 July 1996.
        first = EXPERIMENT.model_copy(update={"shuffle": 1})
        assert record_shuffle(store, PROJECT, first, started_ts=_ms(1996, 1))
        assert record_shuffle(store, PROJECT, EXPERIMENT, started_ts=RESHUFFLE_TS)
    yield frame


def _views_in(frame: pd.DataFrame, start: int, end: int) -> int:
    views = frame[frame["action"] == "view"]
    return int(((views["ts"] >= start) & (views["ts"] < end)).sum())


def test_backfill_of_two_partitions_then_a_rerun_replaces_rows(
    parts_settings: Settings, events: pd.DataFrame
) -> None:
    selection = ["training_set_tier1", "training_set_tier2_ranker"]
    for month in ("1996-05-01", "1996-06-01", "1996-05-01"):  # the last one is a re-run
        result = materialize_project(
            parts_settings, PROJECT, selection=selection, partition_key=month
        )
        assert result.success
        meta = materialization_metadata(result, PROJECT, "training_set_tier2_ranker")
        assert meta["partitions"] == 1

    may, june, july = _ms(1996, 5), _ms(1996, 6), _ms(1996, 7)
    with open_offline_store(parts_settings) as store:
        tier_one = read_tier_one_set(store, PROJECT)
        spec = parts_settings.project_features(PROJECT).model_spec("ranker")
        tier_two = read_tier_two_set(store, PROJECT, spec)
    for frame in (tier_one, tier_two):
        counts = frame["partition"].value_counts().to_dict()
        assert counts == {
            "1996-05-01": _views_in(events, may, june),
            "1996-06-01": _views_in(events, june, july),
        }
        assert frame["ts"].between(may, july - 1).all()
    assert list(tier_two.columns[4:-1]) == spec.columns()
    assert set(tier_two["label"]) == {0, 1}

    # Every month since 1996 in one run (single-run backfill; > 100 partitions per insert).
    everything = materialize_project(parts_settings, PROJECT, selection=["training_set_tier1"])
    meta = materialization_metadata(everything, PROJECT, "training_set_tier1")
    assert isinstance(meta["partitions"], int) and meta["partitions"] > 300
    assert meta["rows"] == RATINGS and meta["partitions_with_rows"] == 9  # March-November


def test_group_sets_follow_the_shuffle_history(
    parts_settings: Settings, events: pd.DataFrame
) -> None:
    result = materialize_project(
        parts_settings,
        PROJECT,
        selection=["training_set_tier2_ranker", "experiment_training_sets"],
        partition_range=("1996-03-01", "1996-11-01"),
    )
    assert result.success
    meta = materialization_metadata(result, PROJECT, "experiment_training_sets")
    assert meta["shuffles_used"] == {"ranker_ab": [1, 2]}

    spec = parts_settings.project_features(PROJECT).model_spec("ranker")
    with open_offline_store(parts_settings) as store:
        rows = read_group_set(store, PROJECT, spec, "ranker_ab")
        treatment = read_group_set(store, PROJECT, spec, "ranker_ab", "treatment")
        all_rows = read_tier_two_set(store, PROJECT, spec)
    assert len(rows) == len(all_rows) == _views_in(events, _ms(1996, 3), _ms(1996, 12))
    expected_shuffle = (rows["ts"] >= RESHUFFLE_TS).map({True: 2, False: 1})
    assert (rows["shuffle"] == expected_shuffle).all()
    expected_group = [
        assign(PROJECT, EXPERIMENT, u, s)
        for u, s in zip(rows["user_id"], rows["shuffle"], strict=True)
    ]
    assert rows["group"].tolist() == expected_group
    assert set(treatment["group"]) == {"treatment"}
    assert len(treatment) == int((rows["group"] == "treatment").sum())

    # Users active on both sides of the reshuffle: some of them changed group.
    before = rows[rows["shuffle"] == 1].groupby("user_id")["group"].first()
    after = rows[rows["shuffle"] == 2].groupby("user_id")["group"].first()
    both = before.index.intersection(after.index)
    assert len(both) >= 5
    moved = (before[both] != after[both]).sum()
    assert 0 < moved < len(both)
    # Within one generation a user never changes group.
    assert (rows.groupby(["user_id", "shuffle"])["group"].nunique() == 1).all()
