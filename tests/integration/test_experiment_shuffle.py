"""The shuffle closes an experiment's loop, on chdb and the SecantusDB online server.

A concluded experiment is reshuffled: the user's past training rows keep the group of
the generation that held at their time, the online store reports the new generation, and
the router assigns new requests with it within its TTL. A running experiment is refused
unless forced; the Dagster job does the same through its resources.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from offline_stores import with_offline_store

from twotier.config import Settings
from twotier.experiments import (
    Experiment,
    assign,
    groups_at,
    record_shuffle,
    shuffle_history,
    shuffles_at,
)
from twotier.infra.service import Service
from twotier.naming import online_collection
from twotier.offline_store import OfflineStore, open_offline_store
from twotier.online_store import OnlineStore, connect
from twotier.online_store.base import EXPERIMENTS_COLLECTION, OnlineStoreError
from twotier.pipelines.jobs.experiment_shuffle import make_experiment_shuffle_job
from twotier.pipelines.resources import OfflineStoreResource, OnlineStoreResource
from twotier.serve_apps.routing import Generations, route
from twotier.shuffles import ShuffleRefused, shuffle_experiment, shuffle_with_stores

PROJECT = "movielens"
DAY_MS = 86_400_000
NOW = 1_800_000_000_000


@pytest.fixture(scope="module")
def local(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The test stack's online server, with an offline store of this module's own."""
    data = tmp_path_factory.mktemp("shuffle") / "offline"
    return with_offline_store(settings, data)


@pytest.fixture(scope="module")
def online(local: Settings, online_server: Service) -> Iterator[OnlineStore]:
    with connect(local) as store:
        store.drop(online_collection(PROJECT, EXPERIMENTS_COLLECTION))
        yield store


@pytest.fixture
def offline(local: Settings) -> Iterator[OfflineStore]:
    with open_offline_store(local) as store:
        yield store


def _experiment(local: Settings, name: str) -> Experiment:
    declared = local.project_features(PROJECT).experiments[0]
    return declared.model_copy(update={"name": name})


def _moved_user(experiment: Experiment, old: int, new: int) -> str:
    return next(
        u
        for u in (f"u{i}" for i in range(1000))
        if assign(PROJECT, experiment, u, old) != assign(PROJECT, experiment, u, new)
    )


def test_a_running_experiment_is_refused_unless_forced(
    local: Settings, offline: OfflineStore, online: OnlineStore
) -> None:
    experiment = _experiment(local, "running_ab")
    assert record_shuffle(offline, PROJECT, experiment, started_ts=NOW - DAY_MS)
    with pytest.raises(ShuffleRefused, match=r"has not concluded .*too few users.*--force"):
        shuffle_with_stores(offline, online, PROJECT, experiment, now_ms=NOW)
    assert online.experiment_generation(PROJECT, experiment.name) is None
    assert shuffle_history(offline, PROJECT, experiment.name)["shuffle"].tolist() == [1]

    done = shuffle_with_stores(offline, online, PROJECT, experiment, now_ms=NOW, force=True)
    assert (done.previous, done.shuffle, done.started_ts, done.reason) == (1, 2, NOW, "forced")
    assert online.experiment_generation(PROJECT, experiment.name) == 2


def test_past_rows_keep_their_group_and_new_requests_get_the_new_one(
    local: Settings, online: OnlineStore
) -> None:
    experiment = local.project_features(PROJECT).experiments[0]  # ranker_ab, shuffle 1
    with open_offline_store(local) as offline:
        # The generation ran since before max_days: the readout concludes on duration.
        assert record_shuffle(offline, PROJECT, experiment, started_ts=NOW - 15 * DAY_MS)
    reader = connect(local)  # serving's own client
    generations = Generations(reader, ttl_s=0.5)
    user = _moved_user(experiment, 1, 2)
    before = route(PROJECT, local.project_features(PROJECT), user, generations=generations)
    assert (before.shuffle, before.group) == (1, assign(PROJECT, experiment, user, 1))

    done = shuffle_experiment(local, PROJECT, experiment.name, now_ms=NOW)
    assert (done.previous, done.shuffle) == (1, 2)
    assert "readout.max_days is 14" in done.reason
    assert online.experiment_generation(PROJECT, experiment.name) == 2

    with open_offline_store(local) as offline:
        # A training-set run still configured with shuffle 1 leaves the recorded history.
        assert not record_shuffle(offline, PROJECT, experiment, started_ts=NOW + 5)
        history = shuffle_history(offline, PROJECT, experiment.name)
        times = [NOW - DAY_MS, NOW - 1, NOW, NOW + DAY_MS]
        assert shuffles_at(history, times) == [1, 1, 2, 2]
        rows = groups_at(offline, PROJECT, experiment, [user] * len(times), times)
    old, new = assign(PROJECT, experiment, user, 1), assign(PROJECT, experiment, user, 2)
    assert old != new
    assert rows == [old, old, new, new]

    # Serving: the cached generation is at most ttl_s old, then new requests switch.
    deadline = time.monotonic() + generations.ttl_s + 0.5
    chosen = route(PROJECT, local.project_features(PROJECT), user, generations=generations)
    while chosen.shuffle != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        chosen = route(PROJECT, local.project_features(PROJECT), user, generations=generations)
    assert (chosen.shuffle, chosen.group) == (2, new)
    assert chosen.alias == experiment.group(new).alias
    reader.close()


def test_the_dagster_job_shuffles_through_its_resources(
    local: Settings, online: OnlineStore
) -> None:
    experiment = _experiment(local, "job_ab")
    job = make_experiment_shuffle_job(PROJECT, [experiment])
    resources = {
        "offline_store": OfflineStoreResource.from_settings(local),
        "online_store": OnlineStoreResource.from_settings(local),
    }
    ops = {"movielens_shuffle_experiment": {"config": {"experiment": "job_ab", "force": True}}}
    result = job.execute_in_process(run_config={"ops": ops}, resources=resources)
    assert result.success
    assert result.output_for_node("movielens_shuffle_experiment") == 2
    assert online.experiment_generation(PROJECT, "job_ab") == 2
    with open_offline_store(local) as offline:
        assert shuffle_history(offline, PROJECT, "job_ab")["shuffle"].tolist() == [1, 2]

    unknown = {"movielens_shuffle_experiment": {"config": {"experiment": "nope"}}}
    failed = job.execute_in_process(
        run_config={"ops": unknown}, resources=resources, raise_on_error=False
    )
    assert not failed.success


def _unreachable(local: Settings) -> OnlineStore:
    """An online store on a port nothing listens on (refused at once, 300 ms to give up)."""
    from twotier.online_store.mongodb import MongoDBOnlineStore

    uri = "mongodb://127.0.0.1:9/?directConnection=true"
    nowhere = local.model_copy(
        update={"online_store": local.online_store.model_copy(update={"uri": uri})}
    )
    return MongoDBOnlineStore.from_settings(nowhere, serverSelectionTimeoutMS=300)


def test_an_unreachable_online_store_records_nothing(
    local: Settings, offline: OfflineStore
) -> None:
    experiment = _experiment(local, "unreachable_ab")
    refused = pytest.raises(OnlineStoreError, match="cannot read document 'unreachable_ab'")
    with _unreachable(local) as dead, refused:
        shuffle_with_stores(offline, dead, PROJECT, experiment, now_ms=NOW, force=True)
    assert shuffle_history(offline, PROJECT, "unreachable_ab").empty


def test_after_the_first_read_requests_never_wait_on_the_store(local: Settings) -> None:
    experiment = _experiment(local, "dead_store_ab")
    with _unreachable(local) as dead:
        generations = Generations(dead, ttl_s=0.0)  # every call finds the value stale
        # The first read waits (there is nothing to serve yet) and falls back to the
        # configured generation.
        assert generations.get(PROJECT, experiment) == experiment.shuffle
        # Later calls answer from the cache while one background read waits on the store.
        later = [generations.get(PROJECT, experiment) for _ in range(5)]
        assert later == [experiment.shuffle] * 5
        name = f"twotier-generations {PROJECT}/dead_store_ab"
        refreshing = [t for t in threading.enumerate() if t.name == name]
        assert len(refreshing) == 1
        refreshing[0].join(10)


def test_a_shuffle_interrupted_before_the_online_write_is_finished_not_repeated(
    local: Settings, offline: OfflineStore, online: OnlineStore
) -> None:
    experiment = _experiment(local, "interrupted_ab")
    # What a shuffle leaves when the online write fails: both generations offline only.
    record_shuffle(offline, PROJECT, experiment, started_ts=0, shuffle=1)
    record_shuffle(offline, PROJECT, experiment, started_ts=NOW, shuffle=2)
    assert online.experiment_generation(PROJECT, "interrupted_ab") is None

    # Not refused (generation 2 has just started), and not a generation 3.
    done = shuffle_with_stores(offline, online, PROJECT, experiment, now_ms=NOW + DAY_MS)
    assert (done.previous, done.shuffle, done.started_ts) == (1, 2, NOW)
    assert "interrupted" in done.reason
    assert online.experiment_generation(PROJECT, "interrupted_ab") == 2
    assert shuffle_history(offline, PROJECT, "interrupted_ab")["shuffle"].tolist() == [1, 2]

    # Once both stores agree, a next call is a new shuffle, judged on its readout again.
    with pytest.raises(ShuffleRefused, match="has not concluded"):
        shuffle_with_stores(offline, online, PROJECT, experiment, now_ms=NOW + DAY_MS)
