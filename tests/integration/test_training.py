"""The skeleton trainer on a real embedded offline store: point-in-time features, ONNX parity."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twotier.config import ClickHouseOfflineStoreConfig, Settings
from twotier.offline_store import OfflineStore, events_frame, open_offline_store
from twotier.replay import movielens_events
from twotier.training import (
    FEATURE_NAMES,
    TrainingError,
    build_training_set,
    onnx_probabilities,
    train_ranker,
)

PROJECT = "movielens"
SECOND = 1000


def _event(eid: str, user: str, item: str, action: str, value: float, ts: int) -> dict[str, object]:
    return {
        "event_id": eid,
        "user_id": user,
        "item_id": item,
        "action": action,
        "value": value,
        "ts": ts,
        "context": {},
    }


@pytest.fixture()
def store(settings: Settings, tmp_path: Path) -> Iterator[OfflineStore]:
    config = ClickHouseOfflineStoreConfig(dsn=f"chdb://{tmp_path / 'offline'}")
    with open_offline_store(settings.model_copy(update={"offline_store": config})) as opened:
        opened.ensure_tables(PROJECT)
        yield opened


def test_features_see_only_strictly_earlier_events(store: OfflineStore) -> None:
    rows = [
        _event("1v", "u", "a", "view", 5.0, 1 * SECOND),
        _event("1s", "u", "a", "smile", 1.0, 1 * SECOND),
        _event("2v", "u", "b", "view", 1.0, 1 * SECOND),  # same second as the first: unseen
        _event("3v", "u", "c", "view", 3.0, 2 * SECOND),
        _event("4v", "w", "a", "view", 4.0, 3 * SECOND),
        _event("4s", "w", "a", "smile", 1.0, 3 * SECOND),
    ]
    store.insert_events(PROJECT, pd.DataFrame(rows))
    frame = build_training_set(store, PROJECT).set_index("event_id")
    assert list(frame.columns[3:-1]) == list(FEATURE_NAMES)
    assert sorted(frame.index) == ["1v", "2v", "3v", "4v"]  # one row per view
    assert frame.loc["1v", ["user_views", "item_views", "user_mean_value"]].tolist() == [0, 0, 0]
    assert frame.loc["2v", "user_views"] == 0  # ties in time never leak
    third = frame.loc["3v"]
    assert third["user_views"] == 2 and third["user_smiles"] == 1
    assert third["user_smile_rate"] == pytest.approx(0.5)
    assert third["user_mean_value"] == pytest.approx(3.0)
    fourth = frame.loc["4v"]  # a new user on an item seen before
    assert fourth["user_views"] == 0
    assert fourth["item_views"] == 1 and fourth["item_smiles"] == 1
    assert fourth["item_mean_value"] == pytest.approx(5.0)
    assert frame["label"].to_dict() == {"1v": 1, "2v": 0, "3v": 0, "4v": 1}


def test_train_ranker_exports_a_parity_checked_onnx_model(
    store: OfflineStore, movielens: Path
) -> None:
    events = events_frame(movielens_events(PROJECT, movielens, limit=5000))
    store.insert_events(PROJECT, events)
    trained = train_ranker(store, PROJECT)
    assert trained.feature_names == list(FEATURE_NAMES)
    assert trained.metrics["train_rows"] + trained.metrics["test_rows"] == 5000
    assert trained.metrics["parity_max_abs_diff"] <= 1e-4
    assert 0.55 < trained.metrics["auc"] <= 1.0
    holdout = trained.holdout
    assert len(holdout) == trained.metrics["test_rows"]
    train_end = build_training_set(store, PROJECT)["ts"].iloc[: int(trained.metrics["train_rows"])]
    assert holdout["ts"].min() > train_end.max()  # split by time
    again = onnx_probabilities(
        trained.onnx_model.SerializeToString(), holdout[list(FEATURE_NAMES)].to_numpy()
    )
    np.testing.assert_allclose(again, holdout["probability"].to_numpy(), atol=1e-6)


def test_training_needs_both_labels(store: OfflineStore) -> None:
    rows = [_event(f"v{i}", "u", str(i), "view", 3.0, i * SECOND) for i in range(1, 50)]
    store.insert_events(PROJECT, pd.DataFrame(rows))
    with pytest.raises(TrainingError, match=r"only label \[0\]"):
        train_ranker(store, PROJECT)


def test_training_without_events_says_what_to_do(store: OfflineStore) -> None:
    with pytest.raises(TrainingError, match="load events first"):
        train_ranker(store, PROJECT)
