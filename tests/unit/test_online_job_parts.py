"""The online job's pure parts: enrichment, per-partition processing, backoff, status, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from twotier.config import load_settings
from twotier.events import Event
from twotier.feature_jobs.backoff import Backoff
from twotier.feature_jobs.enrich import by_values, group_updates
from twotier.feature_jobs.micro_batch import DeadLetter, PartitionProcessor, PartitionResult
from twotier.feature_jobs.online_job import OnlineJobError, failure_summary, online_backoff
from twotier.feature_jobs.status import (
    job_summary,
    lag_of,
    processed_offsets,
    read_status,
    status_line,
    write_status,
)
from twotier.features.aggregate import GroupUpdates, aggregate
from twotier.features.builtin import builtin_projects
from twotier.features.offline import needs_items
from twotier.features.spec import FeatureGroup

GENRES = FeatureGroup.model_validate(
    {
        "name": "user_genres",
        "entity": "user",
        "features": [
            {"name": "views", "kind": "counter", "action": "view"},
            {
                "name": "views_by_genre",
                "kind": "counter",
                "action": "view",
                "by": "genre",
                "values": ["Drama", "Comedy"],
            },
            {
                "name": "smiles_by_type",
                "kind": "counter",
                "action": "smile",
                "by": "content_type",
                "values": ["image", "video"],
            },
            {"name": "last_view_ts", "kind": "last_seen", "action": "view"},
        ],
    }
)


def _event(user: str, item: str, action: str, ts: int = 1, **context: str) -> Event:
    return Event(
        event_id=f"{user}-{item}-{action}-{ts}",
        project="p",
        user_id=user,
        item_id=item,
        action=action,
        ts=ts,
        context=context,
    )


def _record(event: Event | bytes | None, offset: int) -> tuple[bytes | None, str, int, int, int]:
    value = event.to_json().encode() if isinstance(event, Event) else event
    return value, "twotier.p.events", 0, offset, 1_000 + offset


def test_by_values_prefer_the_context_then_the_item_attribute_or_its_plural() -> None:
    items = {"31": {"genres": ["Drama", "War"], "content_type": "video"}}
    assert by_values("genre", _event("u", "31", "view"), items) == ["Drama", "War"]
    assert by_values("genre", _event("u", "31", "view", genre="Comedy"), items) == ["Comedy"]
    assert by_values("content_type", _event("u", "31", "smile"), items) == ["video"]
    assert by_values("genre", _event("u", "unknown", "view"), items) == []


def test_genre_lists_count_each_listed_genre_and_nothing_else_changes() -> None:
    items = {"31": {"genres": ["Drama", "Comedy", "War"]}, "32": {"genres": []}}
    events = [
        _event("u", "31", "view", ts=5),
        _event("u", "32", "view", ts=9),
        _event("u", "31", "view", ts=7, genre="Comedy"),  # the context wins
        _event("u", "31", "smile", content_type="image"),
        _event("v", "31", "smile"),  # no content type anywhere: not counted
    ]
    updates = group_updates(GENRES, events, items)
    assert updates.increments == {
        "u": {
            "views": 3,
            "views_by_genre__Drama": 1,
            "views_by_genre__Comedy": 2,
            "smiles_by_type__image": 1,
        }
    }
    assert updates.maxima == {"u": {"last_view_ts": 9.0}}


def test_with_context_values_the_updates_equal_aggregate() -> None:
    group = builtin_projects()["memes"].group("user_stats")
    events = [
        _event("u", "m1", "view", ts=3, content_type="gif"),
        _event("u", "m1", "smile", ts=4, content_type="gif"),
        _event("w", "m2", "smile", ts=5, content_type="video"),
        _event("w", "m2", "share", ts=6, content_type="video"),
    ]
    assert group_updates(group, events, {}) == aggregate(group, events)


def test_partitions_dead_letter_malformed_records_and_merge_like_one_batch() -> None:
    settings = load_settings(data_dir=Path("/nonexistent"))
    # The groups fed by events alone: per-genre counters look up item data in the store.
    groups = [
        g
        for g in builtin_projects()["movielens"].feature_groups
        if g.from_events(online=True) and not needs_items(g)
    ]
    assert [g.name for g in groups] == ["user_stats", "item_stats", "user_item"]
    processor = PartitionProcessor(settings, "p", groups)
    good = [_event("1", "31", "view", ts=10), _event("1", "32", "smile", ts=11)]
    more = [_event("2", "31", "view", ts=12)]
    first = processor.process(
        [
            _record(good[0], 0),
            _record(b"not json", 1),
            _record(None, 2),
            _record(good[1], 3),
            _record(b'{"event_id": "x", "project": "p"}', 4),
            _record(_event("1", "31", "view").model_copy(update={"project": "other"}), 5),
            _record(
                b'{"event_id":"y","project":"p","user_id":7,"item_id":"1","action":"view","ts":1}',
                6,
            ),
        ]
    )
    second = processor.process([_record(more[0], 7)])
    assert (first.rows, first.events) == (7, 2)
    assert first.dead_letter_counts() == {
        "bad_json": 2,
        "missing_field": 1,
        "unknown_project": 1,
        "wrong_type": 1,
    }
    assert [d.offset for d in first.dead_letters] == [1, 2, 4, 5, 6]
    assert first.dead_letters[0].raw == b"not json"
    merged = PartitionResult().merge(first).merge(second)
    for group in groups:
        assert merged.updates[group.key] == aggregate(group, good + more)


def test_dead_letters_keep_the_reason_for_the_record_format() -> None:
    letter = DeadLetter("bad_json", "not valid JSON", b"{", "t", 0, 3, None)
    assert (letter.error().kind, letter.error().reason) == ("bad_json", "not valid JSON")


def test_backoff_doubles_up_to_its_bound_and_gives_up_when_asked() -> None:
    backoff = Backoff(initial_s=1, max_s=5, factor=2, max_attempts=4)
    assert [backoff.delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    assert not backoff.gives_up(3) and backoff.gives_up(4)
    assert not Backoff().gives_up(10_000)
    assert online_backoff(available_now=True).max_attempts == 3
    assert online_backoff(attempts=0, available_now=True).max_attempts is None
    with pytest.raises(OnlineJobError, match="max_s >= initial_s"):
        online_backoff(initial_s=10, max_s=1)


def test_processed_offsets_come_from_sparks_offset_log(tmp_path: Path) -> None:
    (tmp_path / "offsets").mkdir()
    (tmp_path / "offsets" / "4").write_text(
        'v1\n{"batchWatermarkMs":0,"batchTimestampMs":1}\n{"twotier.p.events":{"1":40,"0":25}}\n'
    )
    (tmp_path / "offsets" / "5").write_text("garbage")
    assert processed_offsets(tmp_path, 4) == {0: 25, 1: 40}
    assert processed_offsets(tmp_path, 5) == {}
    assert processed_offsets(tmp_path, 6) == {}
    assert lag_of({0: 30, 1: 40, 2: 7}, {0: 25, 1: 40}) == {0: 5, 1: 0, 2: 7}


def test_status_file_round_trip_and_lines(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert read_status(settings, "p") is None
    path = write_status(
        settings, "p", {"project": "p", "batch_id": 3, "lag": 12, "state": "running"}
    )
    assert path == tmp_path / "jobs" / "p" / "online.json"
    status = read_status(settings, "p")
    assert status is not None and status["batch_id"] == 3 and status["updated_at_ms"] > 0
    assert json.loads(path.read_text())["lag"] == 12
    assert "online batch 3 of p" in status_line(status) and "lag 12" in status_line(status)
    assert job_summary({**status, "error": "boom"}).endswith("; error: boom")


def test_failure_summary_names_the_innermost_python_error() -> None:
    message = (
        "[STREAM_FAILED] Query [id = 1] terminated with exception: An exception was raised "
        'by the Python Proxy.\nTraceback (most recent call last):\n  File "x.py", line 1\n'
        "twotier.online_store.base.OnlineStoreError: online store unreachable: timeout\n"
        "\tat org.apache.spark.Foo(Foo.scala:1)"
    )
    assert failure_summary(RuntimeError(message)) == (
        "OnlineStoreError: online store unreachable: timeout"
    )
    assert failure_summary(RuntimeError("just this")) == "just this"


def test_group_updates_of_nothing_is_empty() -> None:
    assert group_updates(GENRES, [], {}) == GroupUpdates()


def test_twotier_jobs_prints_the_status_table_and_json(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from twotier.feature_jobs.cli import register

    app = typer.Typer()
    register(app)
    env = {"TWOTIER_DATA_DIR": str(tmp_path)}
    runner = CliRunner()
    empty = runner.invoke(app, ["jobs"], env=env)
    assert empty.exit_code == 0 and "no online job has reported yet" in empty.output
    write_status(
        load_settings(data_dir=tmp_path),
        "memes",
        {"project": "memes", "state": "running", "batch_id": 7, "input_rows": 900, "lag": 42},
    )
    table = runner.invoke(app, ["jobs"], env=env)
    assert table.exit_code == 0 and "memes" in table.output and "900" in table.output
    as_json = runner.invoke(app, ["jobs", "--json", "--project", "memes"], env=env)
    assert json.loads(as_json.stdout)["memes"]["lag"] == 42
