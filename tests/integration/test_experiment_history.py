"""Cohort history in the real offline store (chdb): reshuffles answer for both generations."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from offline_stores import with_offline_store

from twotier.config import Settings
from twotier.experiments import (
    Experiment,
    ExperimentGroup,
    assign,
    groups_at,
    record_shuffle,
    shuffle_history,
)
from twotier.offline_store import OfflineStore, open_offline_store

PROJECT = "abtest"
EXP = Experiment(
    name="ranker_ab",
    salt="s",
    groups=(
        ExperimentGroup(name="control", share=0.5, alias="champion"),
        ExperimentGroup(name="treatment", share=0.5, alias="challenger"),
    ),
)


@pytest.fixture(scope="module")
def store(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OfflineStore]:
    data = tmp_path_factory.mktemp("experiments") / "offline"
    local = with_offline_store(settings, data)
    with open_offline_store(local) as opened:
        yield opened


def test_reshuffle_is_recorded_and_history_answers_for_both_generations(
    store: OfflineStore,
) -> None:
    assert record_shuffle(store, PROJECT, EXP, started_ts=1_000)
    assert not record_shuffle(store, PROJECT, EXP, started_ts=5_000)  # idempotent
    gen2 = EXP.model_copy(update={"shuffle": 2})
    assert record_shuffle(store, PROJECT, gen2, started_ts=10_000)
    history = shuffle_history(store, PROJECT, EXP.name)
    assert history.to_dict("records") == [
        {"shuffle": 1, "started_ts": 1_000},
        {"shuffle": 2, "started_ts": 10_000},
    ]

    users = [str(u) for u in range(400)]
    before = groups_at(store, PROJECT, gen2, users, [9_999] * len(users))
    after = groups_at(store, PROJECT, gen2, users, [10_000] * len(users))
    assert before == [assign(PROJECT, EXP, u, 1) for u in users]
    assert after == [assign(PROJECT, EXP, u, 2) for u in users]
    assert before != after  # the reshuffle moved users


def test_an_older_configured_generation_leaves_the_recorded_history(store: OfflineStore) -> None:
    other = EXP.model_copy(update={"name": "other", "shuffle": 3})
    assert record_shuffle(store, PROJECT, other, started_ts=100)
    assert not record_shuffle(store, PROJECT, other.model_copy(update={"shuffle": 2}), 200)
    assert shuffle_history(store, PROJECT, "other").to_dict("records") == [
        {"shuffle": 3, "started_ts": 100}
    ]
