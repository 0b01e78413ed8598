"""The local FerretDB (MongoDB wire protocol, SQLite backend) through pymongo."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import OperationFailure

from twotier.infra.ferretdb import FerretDBService
from twotier.infra.service import Service, StackError


@pytest.fixture
def db(ferretdb: Service) -> Iterator[Database[dict[str, Any]]]:
    client: MongoClient[dict[str, Any]] = MongoClient(
        ferretdb.endpoint, serverSelectionTimeoutMS=5000
    )
    name = f"test_{uuid.uuid4().hex[:8]}"
    yield client[name]
    client.drop_database(name)
    client.close()


def test_ping_and_loopback_only(
    ferretdb: Service, listening_addresses: Callable[[int], set[tuple[str, int]]]
) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(
        ferretdb.endpoint, serverSelectionTimeoutMS=2000
    )
    assert client.admin.command("ping")["ok"] == 1.0
    client.close()
    pid = ferretdb.pid()
    assert pid is not None
    # Only the MongoDB port, on loopback: no debug HTTP listener.
    assert listening_addresses(pid) == {("127.0.0.1", ferretdb.settings.ferretdb.port)}


def test_insert_find_and_inc_upsert(db: Database[dict[str, Any]]) -> None:
    users = db["users"]
    users.insert_many([{"_id": "u1", "views": 1}, {"_id": "u2", "views": 5}])
    assert users.find_one({"_id": "u2"}) == {"_id": "u2", "views": 5}
    assert sorted(d["_id"] for d in users.find({"views": {"$gte": 1}})) == ["u1", "u2"]

    for _ in range(3):
        users.update_one({"_id": "u3"}, {"$inc": {"views": 2, "smiles": 1}}, upsert=True)
    users.update_one({"_id": "u1"}, {"$inc": {"views": 10}}, upsert=True)
    assert users.find_one({"_id": "u3"}) == {"_id": "u3", "views": 6, "smiles": 3}
    assert users.find_one({"_id": "u1"}) == {"_id": "u1", "views": 11}
    assert users.count_documents({}) == 3


def test_compare_and_set_filter_skips_a_replayed_batch(db: Database[dict[str, Any]]) -> None:
    counters = db["counters"]
    counters.insert_one({"_id": "u1", "views": 0, "batch": -1})
    for batch in (0, 1, 1):  # batch 1 arrives twice
        counters.update_one(
            {"_id": "u1", "batch": {"$lt": batch}}, {"$inc": {"views": 1}, "$set": {"batch": batch}}
        )
    assert counters.find_one({"_id": "u1"}) == {"_id": "u1", "views": 2, "batch": 1}


def test_dotted_field_names_are_rejected(db: Database[dict[str, Any]]) -> None:
    # A known limit of FerretDB v1: field names must not contain dots.
    with pytest.raises(OperationFailure):
        db["bad"].insert_one({"_id": 1, "a.b": 1})


def test_data_persists_across_stop_and_start(ferretdb: Service) -> None:
    name = f"persist_{uuid.uuid4().hex[:8]}"
    uri = ferretdb.endpoint
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    client[name]["docs"].insert_one({"_id": "k", "n": 41})
    client[name]["docs"].update_one({"_id": "k"}, {"$inc": {"n": 1}})
    client.close()

    old_pid = ferretdb.pid()
    ferretdb.stop()
    assert not ferretdb.running()
    ferretdb.start()
    assert ferretdb.pid() != old_pid

    client = MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        assert client[name]["docs"].find_one({"_id": "k"}) == {"_id": "k", "n": 42}
    finally:
        client.drop_database(name)
        client.close()


def test_second_install_builds_nothing(
    ferretdb: Service, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    service = FerretDBService(ferretdb.settings)
    before = service.binary.stat().st_mtime_ns
    monkeypatch.setenv("PATH", str(tmp_path))  # no go: any build attempt would fail
    service.install()
    assert service.binary.stat().st_mtime_ns == before


def test_start_on_a_taken_port_names_the_port(ferretdb: Service, tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        taken = ferretdb.settings.model_copy(
            update={
                "data_dir": tmp_path,
                "ferretdb": ferretdb.settings.ferretdb.model_copy(update={"port": port}),
            }
        )
        with pytest.raises(StackError, match=rf"ferretdb: port 127.0.0.1:{port} is already in use"):
            FerretDBService(taken).start()
