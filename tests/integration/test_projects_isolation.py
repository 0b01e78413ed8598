"""Two projects side by side: every name is namespaced and no data crosses over.

``alpha`` gets replayed MovieLens events, ``beta`` the synthetic meme feed; both are
declared in settings with the MovieLens feature spec. Topics, online collections,
offline tables, MLflow model names and Dagster asset keys must all differ, and
writing or reading one project must never show the other's data.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from twotier import naming
from twotier.config import Settings
from twotier.dead_letter import DeadLetters, consume_events
from twotier.events import Event
from twotier.generate import MemeFeedConfig, generate_memes
from twotier.infra.service import Service
from twotier.items import load_items, movielens_items, read_items
from twotier.kafka_clients import make_producer
from twotier.offline_store import events_frame, open_offline_store
from twotier.online_store import connect
from twotier.pipelines.definitions import make_definitions
from twotier.replay import read_events, replay_movielens

RATINGS = 200
MEME_EVENTS = 600


@pytest.fixture(scope="module")
def two(settings: Settings) -> Iterator[tuple[Settings, str, str]]:
    """Settings declaring two fresh projects (unique per run: topics outlive a run)."""
    suffix = uuid.uuid4().hex[:6]
    alpha, beta = f"alpha_{suffix}", f"beta_{suffix}"
    spec = settings.project_features("movielens")
    both = settings.model_copy(update={"projects": {**settings.projects, alpha: spec, beta: spec}})
    yield both, alpha, beta


@pytest.fixture(scope="module")
def events(
    two: tuple[Settings, str, str], kafka: Service, online_server: Service, movielens: Path
) -> dict[str, list[Event]]:
    """Each project's topic filled differently: MovieLens into alpha, memes into beta."""
    settings, alpha, beta = two
    replay_movielens(settings, alpha, movielens, limit=RATINGS)
    load_items(settings, alpha, movielens_items(movielens)[:100])
    generate_memes(
        settings,
        beta,
        MemeFeedConfig(users=30, items=40, seed=9),
        events_per_second=20_000,
        limit=MEME_EVENTS,
    )
    return {p: read_events(settings, p, timeout_s=60) for p in (alpha, beta)}


def test_names_are_all_distinct(two: tuple[Settings, str, str]) -> None:
    settings, alpha, beta = two
    group = settings.project_features(alpha).group("user_stats").key
    assert settings.project_features(alpha) == settings.project_features(beta)
    pairs = [
        (naming.events_topic(alpha), naming.events_topic(beta)),
        (naming.dead_letter_topic(alpha), naming.dead_letter_topic(beta)),
        (naming.online_collection(alpha, group), naming.online_collection(beta, group)),
        (naming.online_collection(alpha, "content"), naming.online_collection(beta, "content")),
        (naming.offline_table(alpha, "events"), naming.offline_table(beta, "events")),
        (
            naming.model_name(alpha, "tier2", "ranker"),
            naming.model_name(beta, "tier2", "ranker"),
        ),
    ]
    for a, b in pairs:
        assert a != b and alpha in a and beta in b and beta not in a and alpha not in b


def test_topics_hold_only_their_own_events(
    two: tuple[Settings, str, str], events: dict[str, list[Event]]
) -> None:
    _, alpha, beta = two
    assert len(events[beta]) == MEME_EVENTS
    assert Counter(e.action for e in events[alpha])["view"] == RATINGS
    assert {e.project for e in events[alpha]} == {alpha}
    assert {e.project for e in events[beta]} == {beta}
    assert {e.context.get("source") for e in events[alpha]} == {"movielens"}
    assert {"content_type"} == {k for e in events[beta] for k in e.context}


def test_an_event_of_one_project_on_the_others_topic_is_dead_lettered(
    two: tuple[Settings, str, str], events: dict[str, list[Event]]
) -> None:
    settings, alpha, beta = two
    stray = events[beta][0]
    producer = make_producer(settings, "isolation-test")
    producer.send(naming.events_topic(alpha), value=stray.to_json().encode())
    producer.flush()
    producer.close()
    with DeadLetters(settings, alpha, publish=False) as dead:
        got = list(consume_events(settings, alpha, dead_letters=dead, timeout_s=60))
    assert got == events[alpha]
    assert dead.counts() == {"unknown_project": 1}


def test_online_counters_and_item_data_stay_apart(
    two: tuple[Settings, str, str], events: dict[str, list[Event]]
) -> None:
    settings, alpha, beta = two
    group = settings.project_features(alpha).group("user_stats").key
    views = {p: Counter(e.user_id for e in events[p] if e.action == "view") for p in (alpha, beta)}
    with connect(settings) as store:
        for p in (alpha, beta):
            collection = naming.online_collection(p, group)
            store.ensure_indexes(collection)
            increments = {u: {"views": float(n)} for u, n in views[p].items()}
            increments["shared_user"] = {"views": 1.0 if p == alpha else 100.0}
            store.apply_increments(collection, "isolation", 1, increments)
        every_user = sorted({*views[alpha], *views[beta], "shared_user"})
        for p, other in ((alpha, beta), (beta, alpha)):
            got = store.get_many(naming.online_collection(p, group), every_user)
            assert set(got) == {*views[p], "shared_user"}
            assert not set(got) & (set(views[other]) - set(views[p]))
            assert {u: d["views"] for u, d in got.items() if u != "shared_user"} == views[p]
        alpha_shared = store.get_many(naming.online_collection(alpha, group), ["shared_user"])
        beta_shared = store.get_many(naming.online_collection(beta, group), ["shared_user"])
    assert alpha_shared["shared_user"]["views"] == 1
    assert beta_shared["shared_user"]["views"] == 100

    alpha_items = read_items(settings, alpha, ["1", "m0"])
    beta_items = read_items(settings, beta, ["1", "m0"])
    assert set(alpha_items) == {"1"} and "genres" in alpha_items["1"].attributes
    assert set(beta_items) == {"m0"} and "content_type" in beta_items["m0"].attributes


def test_offline_tables_stay_apart(
    two: tuple[Settings, str, str], events: dict[str, list[Event]]
) -> None:
    settings, alpha, beta = two
    with open_offline_store(settings) as store:
        for p in (alpha, beta):
            store.ensure_tables(p)
            assert store.insert_events(p, events_frame(events[p])) == len(events[p])
        assert store.table(alpha, "events") != store.table(beta, "events")
        for p in (alpha, beta):
            assert store.count_events(p) == len(events[p])
            ids = store.query_df(f"SELECT DISTINCT event_id FROM {store.table(p, 'events')}")
            assert set(ids["event_id"]) == {e.event_id for e in events[p]}
        # Writing beta again does not touch alpha.
        store.insert_events(beta, events_frame(events[beta]))
        assert store.count_events(alpha) == len(events[alpha])


def test_mlflow_model_names_stay_apart(
    two: tuple[Settings, str, str], mlflow_server: Service
) -> None:
    settings, alpha, beta = two
    client = MlflowClient(tracking_uri=settings.mlflow.uri, registry_uri=settings.mlflow.uri)
    for p in (alpha, beta):
        client.create_registered_model(naming.model_name(p, "tier2", "ranker"), tags={"project": p})
    for p in (alpha, beta):
        found = client.search_registered_models(filter_string=f"name LIKE '{p}.%'")
        assert [m.name for m in found] == [naming.model_name(p, "tier2", "ranker")]
        assert found[0].tags == {"project": p}


def test_dagster_asset_keys_are_prefixed_by_project(two: tuple[Settings, str, str]) -> None:
    settings, alpha, beta = two
    defs = make_definitions(settings, (alpha, beta))
    keys = defs.resolve_all_asset_keys()
    by_project = {p: {k for k in keys if k.path[0] == p} for p in (alpha, beta)}
    assert by_project[alpha] and by_project[beta]
    assert by_project[alpha] | by_project[beta] == set(keys)
    assert {tuple(k.path[1:]) for k in by_project[alpha]} == {
        tuple(k.path[1:]) for k in by_project[beta]
    }
    for key in by_project[alpha]:
        spec = defs.resolve_assets_def(key).specs_by_key[key]
        assert all(dep.asset_key.path[0] == alpha for dep in spec.deps)
