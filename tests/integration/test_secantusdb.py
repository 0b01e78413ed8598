"""The local SecantusDB (``secantusd-rs``): loopback only, durable across kill -9, watchable."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from online_servers import sigkill_service

from twotier.config import Settings
from twotier.infra.secantusdb import SecantusDBService
from twotier.infra.service import Service
from twotier.online_store import connect
from twotier.online_store.mongodb import BATCHES_FIELD, MongoDBOnlineStore

PORT_BASE = 20900
"""A port block of its own: this test kills its server, never the session's."""


def test_listens_on_loopback_only(
    secantusdb: Service, listening_addresses: Callable[[int], set[tuple[str, int]]]
) -> None:
    pid = secantusdb.pid()
    assert pid is not None
    assert listening_addresses(pid) == {("127.0.0.1", secantusdb.settings.secantusdb.port)}


@pytest.fixture
def own_server(
    make_test_settings: Callable[..., Settings], tmp_path: Path
) -> Iterator[SecantusDBService]:
    settings = make_test_settings(data_dir=tmp_path, port_base=PORT_BASE)
    service = SecantusDBService(settings)
    service.start(print)
    try:
        yield service
    finally:
        service.stop()


def test_no_acknowledged_batch_is_lost_on_kill_9(own_server: SecantusDBService) -> None:
    """kill -9 just after acknowledged batches: after a restart every counter and marker is back."""
    settings = own_server.settings
    assert settings.secantusdb.sync_on_commit and settings.online_store.journal
    collection = f"durable__{uuid.uuid4().hex[:8]}"
    ids = [str(i) for i in range(2_000)]
    with connect(settings) as store:
        for batch_id in range(5):
            store.apply_increments(
                collection, "writer", batch_id, {i: {"views": 1, "smiles": batch_id} for i in ids}
            )
        sigkill_service(own_server)  # no pause: the last batch was acknowledged a moment ago
    own_server.start(print)
    with connect(settings) as store:
        assert isinstance(store, MongoDBOnlineStore)
        assert store.sum_fields(collection, ["views", "smiles"]) == (
            2_000,
            {"views": 10_000.0, "smiles": 20_000.0},
        )
        markers = {
            doc[BATCHES_FIELD]["writer"]
            for doc in store._db[collection].find({}, {BATCHES_FIELD: 1})
        }
        assert markers == {4}
        # And the replay after the restart changes nothing.
        replay = store.apply_increments(collection, "writer", 4, {i: {"views": 1} for i in ids})
        assert (replay.written, replay.skipped) == (0, 2_000)


def test_change_streams_see_feature_updates(secantusdb: Service, settings: Settings) -> None:
    collection = f"watch__{uuid.uuid4().hex[:8]}"
    with connect(settings) as store:
        assert isinstance(store, MongoDBOnlineStore)
        assert store.capabilities.change_streams
        store.ensure_indexes(collection)
        with store._db[collection].watch(max_await_time_ms=2_000) as stream:
            store.apply_increments(collection, "writer", 0, {"u1": {"views": 1}})
            change = stream.try_next() or stream.try_next()
        store.drop(collection)
    assert change is not None
    assert change["documentKey"] == {"_id": "u1"}
