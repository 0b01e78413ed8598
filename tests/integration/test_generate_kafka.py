"""The synthetic meme feed produced to real Kafka at a set rate, items into real FerretDB."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from twotier.generate import MemeFeed, MemeFeedConfig, generate_memes
from twotier.infra.service import Service
from twotier.items import Item, all_items, load_items, movielens_items, read_items
from twotier.replay import read_events

RATE = 1500.0
LIMIT = 3000


def test_generate_paces_to_the_rate_and_events_read_back(
    kafka: Service, online_server: Service
) -> None:
    settings = kafka.settings
    project = f"gen_{uuid.uuid4().hex[:8]}"
    config = MemeFeedConfig(users=100, items=300, seed=5)
    lines: list[str] = []
    report = generate_memes(
        settings,
        project,
        config,
        events_per_second=RATE,
        limit=LIMIT,
        start_ts_ms=1_700_000_000_000,
        progress=lines.append,
    )
    assert report.events == LIMIT and report.items == 300
    # Paced: it cannot be faster than the rate allows (a burst of rate/20 aside) ...
    assert report.seconds >= (LIMIT - RATE / 20) / RATE * 0.95
    # ... and on a busy two-core machine it still gets close.
    assert report.events_per_second > 0.5 * RATE, report
    assert "events/s" in lines[-1]

    got = read_events(settings, project, timeout_s=60)
    assert len(got) == LIMIT
    expected = MemeFeed(
        config.model_copy(
            update={
                "start_ts_ms": 1_700_000_000_000,
                "impressions_per_second": RATE / config.events_per_impression,
            }
        )
    ).events(project, LIMIT)
    assert sorted(got, key=lambda e: e.event_id) == sorted(expected, key=lambda e: e.event_id)

    types = read_items(settings, project, ["m0", "m299", "m300"])
    assert set(types) == {"m0", "m299"}
    assert {t.attributes["content_type"] for t in types.values()} <= {"image", "video", "gif"}


def test_movielens_item_data_loads_idempotently(online_server: Service, movielens: Path) -> None:
    settings = online_server.settings
    project = f"items_{uuid.uuid4().hex[:8]}"
    items = movielens_items(movielens)
    started = time.monotonic()
    assert load_items(settings, project, items) == len(items)
    first_s = time.monotonic() - started
    assert load_items(settings, project, items) == 0
    renamed = Item(item_id="1", attributes={"title": "Toy Story"})
    assert load_items(settings, project, [renamed]) == 1
    stored = read_items(settings, project, ["1", "2", "999999"])
    assert stored["1"].attributes == {
        "title": "Toy Story",
        "genres": ["Adventure", "Animation", "Children", "Comedy", "Fantasy"],
        "year": "1995",
    }
    assert stored["2"].attributes["title"] == "Jumanji (1995)"
    # all_items pages through the whole collection in id order (here in pages of 1,000).
    every = all_items(settings, project, batch_size=1_000)
    assert len(every) == len(items)
    assert [i.item_id for i in every] == sorted(i.item_id for i in items)
    assert next(i for i in every if i.item_id == "1") == stored["1"]
    assert first_s < 60, f"loading {len(items)} items took {first_s:.0f} s"
    assert "999999" not in stored
    from pymongo import MongoClient

    client: MongoClient[dict[str, object]] = MongoClient(settings.online_store_uri)
    try:
        collection = client[settings.online_store.database][f"{project}__content"]
        assert collection.count_documents({}) == len(items)
    finally:
        client.close()


def test_cli_generate_and_replay_with_item_data(
    kafka: Service, online_server: Service, movielens: Path
) -> None:
    settings = kafka.settings
    env = {k: v for k, v in os.environ.items() if k != "TWOTIER_CONFIG"} | settings.to_env()
    twotier = [sys.executable, "-m", "twotier.cli"]
    project = f"cli_{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [
            *twotier,
            "generate",
            "-p",
            project,
            "--limit",
            "400",
            "-r",
            "2000",
            "--users",
            "20",
            "--items",
            "50",
            "--seed",
            "3",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "generated 400 events" in done.stderr and "events/s achieved" in done.stderr
    assert len(read_events(settings, project, timeout_s=30)) == 400
    assert len(read_items(settings, project, [f"m{i}" for i in range(60)])) == 50

    bad = subprocess.run(
        [*twotier, "generate", "-p", project, "-r", "0", "--limit", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode != 0 and "events-per-second" in bad.stderr

    project = f"cli_{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [*twotier, "replay", "-p", project, "--dataset", str(movielens), "--limit", "50"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "9742 items" in done.stderr
    assert read_items(settings, project, ["1"])["1"].attributes["title"] == "Toy Story (1995)"
