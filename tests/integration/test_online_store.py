"""Contract tests of the MongoDB-wire online store, on SecantusDB and on FerretDB v1.

Exactly-once replay, increments, maxima, reads, defaults and bad input behave the
same on both servers; the write strategy differs by declared capabilities (one
unordered bulk of compare-and-set upserts on SecantusDB; existence read, insert and
ordered updates on FerretDB v1).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from online_servers import SERVERS, with_online_server
from pymongo import monitoring

from twotier.config import OnlineStoreCapabilitiesConfig, Settings
from twotier.online_store import OnlineStoreError, Read, connect
from twotier.online_store.mongodb import BATCHES_FIELD, MongoDBOnlineStore


class _Commands(monitoring.CommandListener):
    """Records the names of the commands a client sends."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None


@pytest.fixture
def commands() -> _Commands:
    return _Commands()


@pytest.fixture(params=SERVERS)
def server_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """The test settings with the online store on one local server (started here)."""
    request.getfixturevalue(request.param)
    return with_online_server(settings, request.param)


@pytest.fixture
def store(server_settings: Settings, commands: _Commands) -> Iterator[MongoDBOnlineStore]:
    with MongoDBOnlineStore.from_settings(server_settings, event_listeners=[commands]) as s:
        yield s  # type: ignore[misc,unused-ignore]


@pytest.fixture
def collection(store: MongoDBOnlineStore) -> Iterator[str]:
    name = f"test__{uuid.uuid4().hex[:10]}"
    store.ensure_indexes(name, ["views"])
    yield name
    store.drop(name)


def _raw(store: MongoDBOnlineStore, collection: str, entity_id: str) -> dict[str, Any] | None:
    return store._db[collection].find_one({"_id": entity_id})


def test_connect_declares_what_each_server_can_do(server_settings: Settings) -> None:
    with connect(server_settings) as store:
        assert isinstance(store, MongoDBOnlineStore)
        caps = store.capabilities
        if server_settings.local_online_server == "ferretdb":
            # FerretDB v1: no transactions, no change streams, scans for $in.
            assert not caps.transactions and not caps.change_streams
            assert not caps.bulk_upsert and not caps.indexed_in
        else:
            assert caps.transactions and caps.change_streams
            assert caps.bulk_upsert and caps.indexed_in


def test_declared_capabilities_can_be_overridden(server_settings: Settings) -> None:
    overrides = OnlineStoreCapabilitiesConfig(bulk_upsert=False, statements_per_command=7)
    online = server_settings.online_store.model_copy(update={"capabilities": overrides})
    local = server_settings.model_copy(update={"online_store": online})
    with connect(local) as store:
        assert not store.capabilities.bulk_upsert
        assert store.capabilities.statements_per_command == 7


def test_increments_accumulate_over_batches(store: MongoDBOnlineStore, collection: str) -> None:
    first = store.apply_increments(
        collection, "writer-a", 0, {"1": {"views": 2, "rating_sum": 7.5}, "2": {"views": 1}}
    )
    assert (first.documents, first.written, first.skipped) == (2, 2, 0)
    second = store.apply_increments(
        collection, "writer-a", 1, {"1": {"views": 3, "smiles": 1, "rating_sum": 4.0}}
    )
    assert (second.written, second.skipped) == (1, 0)
    got = store.get_many(collection, ["1", "2"])
    assert got == {
        "1": {"views": 5, "smiles": 1, "rating_sum": 11.5},
        "2": {"views": 1},
    }
    raw = _raw(store, collection, "1")
    assert raw is not None
    assert raw[BATCHES_FIELD] == {"writer-a": 1}


def test_replaying_a_batch_changes_nothing(store: MongoDBOnlineStore, collection: str) -> None:
    batch = {"1": {"views": 2}, "2": {"views": 4, "dislikes": 1}}
    store.apply_increments(collection, "writer-a", 5, batch)
    before = store.get_many(collection, ["1", "2"])
    replay = store.apply_increments(collection, "writer-a", 5, batch)
    assert (replay.documents, replay.written, replay.skipped) == (2, 0, 2)
    assert (
        store.get_many(collection, ["1", "2"])
        == before
        == {
            "1": {"views": 2},
            "2": {"views": 4, "dislikes": 1},
        }
    )


def test_replay_with_a_new_document_writes_only_that_one(
    store: MongoDBOnlineStore, collection: str
) -> None:
    store.apply_increments(collection, "writer-a", 3, {"1": {"views": 1}})
    # A crash after part of a batch: replaying it adds only the documents not yet written.
    result = store.apply_increments(
        collection, "writer-a", 3, {"1": {"views": 1}, "9": {"views": 1}}
    )
    assert (result.written, result.skipped) == (1, 1)
    assert store.get_many(collection, ["1", "9"]) == {"1": {"views": 1}, "9": {"views": 1}}


def test_older_batch_ids_are_ignored(store: MongoDBOnlineStore, collection: str) -> None:
    store.apply_increments(collection, "writer-a", 10, {"1": {"views": 1}})
    old = store.apply_increments(collection, "writer-a", 9, {"1": {"views": 100}})
    assert (old.written, old.skipped) == (0, 1)
    assert store.get_many(collection, ["1"]) == {"1": {"views": 1}}


def test_writers_keep_separate_batch_ids(store: MongoDBOnlineStore, collection: str) -> None:
    store.apply_increments(collection, "writer-a", 10, {"1": {"views": 1}})
    other = store.apply_increments(collection, "writer-b", 0, {"1": {"views": 2}})
    assert other.written == 1
    assert store.get_many(collection, ["1"]) == {"1": {"views": 3}}
    raw = _raw(store, collection, "1")
    assert raw is not None
    assert raw[BATCHES_FIELD] == {"writer-a": 10, "writer-b": 0}


def test_get_many_reads_500_ids_in_one_round_trip(
    store: MongoDBOnlineStore, collection: str, commands: _Commands
) -> None:
    known = {str(i): {"views": i} for i in range(400)}
    store.apply_increments(collection, "writer-a", 0, known)
    ids = [str(i) for i in range(400)] + [f"unknown-{i}" for i in range(100)]
    commands.names.clear()
    got = store.get_many(collection, ids)
    assert commands.names == ["find"]
    assert len(got) == 400
    assert got["399"] == {"views": 399}
    assert "unknown-0" not in got
    assert store.get_many(collection, []) == {}


@pytest.mark.parametrize(
    ("batch_key", "increments"),
    [
        ("writer.a", {"1": {"views": 1}}),  # dot in the batch key
        ("writer-a", {"1": {"a.b": 1}}),  # dot in a field name
        ("writer-a", {"1": {"$set": 1}}),  # operator as a field name
        ("writer-a", {"1": {"_batch": 1}}),  # bookkeeping field
        ("writer-a", {"": {"views": 1}}),  # empty id
        ("writer-a", {"1": {"views": "3"}}),  # not a number
    ],
)
def test_bad_input_is_rejected_before_any_write(
    store: MongoDBOnlineStore, collection: str, batch_key: str, increments: Any
) -> None:
    with pytest.raises(OnlineStoreError):
        store.apply_increments(collection, batch_key, 0, increments)
    assert store.get_many(collection, ["1", ""]) == {}


def test_negative_batch_id_is_rejected(store: MongoDBOnlineStore, collection: str) -> None:
    with pytest.raises(OnlineStoreError, match="batch id"):
        store.apply_increments(collection, "writer-a", -1, {"1": {"views": 1}})


def test_a_failing_write_names_the_document(store: MongoDBOnlineStore, collection: str) -> None:
    store._db[collection].insert_one({"_id": "7", "views": "not a number"})
    with pytest.raises(OnlineStoreError, match=r"id '7'.*safe to replay"):
        store.apply_increments(collection, "writer-a", 0, {"7": {"views": 1}})


def test_maxima_only_ever_raise_a_field(store: MongoDBOnlineStore, collection: str) -> None:
    store.apply_increments(
        collection, "writer-a", 0, {"1": {"views": 1}}, maxima={"1": {"last_ts": 500}}
    )
    # A document only in maxima is created too.
    store.apply_increments(
        collection, "writer-a", 1, {}, maxima={"1": {"last_ts": 300}, "2": {"last_ts": 42}}
    )
    assert store.get_many(collection, ["1", "2"]) == {
        "1": {"views": 1, "last_ts": 500},
        "2": {"last_ts": 42},
    }
    result = store.apply_increments(
        collection, "writer-a", 2, {"1": {"views": 1}}, maxima={"1": {"last_ts": 900}}
    )
    assert (result.documents, result.written) == (1, 1)
    # Replayed: the max is not re-applied either (it is part of the same write).
    replay = store.apply_increments(
        collection, "writer-a", 2, {"1": {"views": 1}}, maxima={"1": {"last_ts": 1000}}
    )
    assert (replay.written, replay.skipped) == (0, 1)
    assert store.get_many(collection, ["1"]) == {"1": {"views": 2, "last_ts": 900}}


def test_a_field_cannot_be_incremented_and_maximised(
    store: MongoDBOnlineStore, collection: str
) -> None:
    with pytest.raises(OnlineStoreError, match=r"\['views'\] are both incremented and maximised"):
        store.apply_increments(
            collection, "writer-a", 0, {"1": {"views": 1}}, maxima={"1": {"views": 5}}
        )
    assert store.get_many(collection, ["1"]) == {}


def test_get_many_with_fields_returns_only_those(
    store: MongoDBOnlineStore, collection: str
) -> None:
    store.apply_increments(collection, "writer-a", 0, {"1": {"views": 3, "smiles": 1}})
    assert store.get_many(collection, ["1", "2"], ["views", "dislikes"]) == {"1": {"views": 3}}
    assert store.get_many(collection, ["1"], []) == {"1": {}}
    with pytest.raises(OnlineStoreError, match=r"invalid online field name 'a\.b'"):
        store.get_many(collection, ["1"], ["a.b"])


def test_a_batch_is_one_bulk_without_a_read_where_declared(
    store: MongoDBOnlineStore, collection: str, commands: _Commands
) -> None:
    store.apply_increments(collection, "writer-a", 0, {str(i): {"views": 1} for i in range(50)})
    commands.names.clear()
    batch = {str(i): {"views": 1} for i in range(100)}  # 50 known, 50 new
    result = store.apply_increments(collection, "writer-a", 1, batch)
    assert (result.written, result.skipped) == (100, 0)
    if store.capabilities.bulk_upsert:
        # One unordered bulk (in one transaction where the server has them), no read first.
        assert [n for n in commands.names if n != "commitTransaction"] == ["update"]
    else:
        assert commands.names[0] == "find"  # FerretDB v1: existence read, insert, updates
    commands.names.clear()
    replay = store.apply_increments(collection, "writer-a", 1, batch)
    assert (replay.written, replay.skipped) == (0, 100)
    assert store.sum_fields(collection, ["views"]) == (100, {"views": 150.0})


def test_concurrent_writers_of_new_documents_each_count_once(
    store: MongoDBOnlineStore, collection: str
) -> None:
    """Two writers upsert the same new ids at once; neither loses nor doubles a count."""
    if not store.capabilities.transactions:
        pytest.skip(
            "FerretDB v1 applies an update as an unisolated read-modify-write: concurrent "
            "writers of one document lose increments (seen: 2 of 1,800); one writer per "
            "collection, as the streaming job is, stays exact"
        )
    ids = [f"n{i}" for i in range(300)]
    errors: list[BaseException] = []

    def write(key: str) -> None:
        try:
            for batch_id in range(3):
                store.apply_increments(collection, key, batch_id, {i: {"views": 1} for i in ids})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in ("writer-a", "writer-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.sum_fields(collection, ["views"]) == (300, {"views": 1800.0})


def test_get_groups_reads_several_collections_in_one_round_trip(
    store: MongoDBOnlineStore, collection: str, commands: _Commands
) -> None:
    other = f"{collection}_b"
    store.apply_increments(collection, "w", 0, {"u1": {"views": 2, "smiles": 1}})
    store.apply_increments(other, "w", 0, {str(i): {"views": i} for i in range(20)})
    try:
        commands.names.clear()
        got = store.get_groups(
            [
                Read(collection, ["u1"], None),
                Read(other, ["3", "4", "missing"], ["views"]),
                Read(other, [], ["views"]),
            ]
        )
        assert got == [
            {"u1": {"views": 2, "smiles": 1}},
            {"3": {"views": 3}, "4": {"views": 4}},
            {},
        ]
        if store.capabilities.union_reads:
            assert commands.names == ["aggregate"]
        else:  # one find per collection, sent concurrently
            assert commands.names == ["find", "find"]
    finally:
        store.drop(other)


def test_a_declared_union_read_answers_like_separate_finds(
    server_settings: Settings, commands: _Commands
) -> None:
    """``union_reads`` (declared for a real MongoDB) takes one ``$unionWith`` aggregation."""
    if server_settings.local_online_server == "ferretdb":
        pytest.skip("FerretDB v1 has no $unionWith")
    overrides = OnlineStoreCapabilitiesConfig(union_reads=True)
    online = server_settings.online_store.model_copy(update={"capabilities": overrides})
    local = server_settings.model_copy(update={"online_store": online})
    users, items = f"test__{uuid.uuid4().hex[:8]}", f"test__{uuid.uuid4().hex[:8]}"
    with MongoDBOnlineStore.from_settings(local, event_listeners=[commands]) as store:
        store.apply_increments(users, "w", 0, {"u1": {"views": 2}}, maxima={"u1": {"ts": 9}})
        store.apply_increments(items, "w", 0, {str(i): {"views": i, "smiles": 1} for i in range(9)})
        reads = [Read(users, ["u1", "nobody"]), Read(items, ["2", "5", "2"], ["views"])]
        commands.names.clear()
        union = store.get_groups(reads)
        assert commands.names == ["aggregate"]
        assert union == [store.get_many(r.collection, r.ids, r.fields) for r in reads]
        assert union == [{"u1": {"views": 2, "ts": 9}}, {"2": {"views": 2}, "5": {"views": 5}}]
        store.drop(users)
        store.drop(items)
