"""Batch feature-job helpers without services: offsets parsing, ranges, coverage, CLI wiring."""

from __future__ import annotations

import argparse
import json

import pytest

from twotier.feature_jobs.batch_cli import BATCH_MODES, add_batch_parsers, parse_offsets
from twotier.feature_jobs.import_job import totals_select
from twotier.feature_jobs.offline_job import OfflineJobError, plan_ranges
from twotier.feature_jobs.offsets import OffsetRange, OffsetsError, StartOffsets, covered_offsets
from twotier.feature_jobs.validate import CheckResult
from twotier.features.builtin import builtin_projects

TOPIC = "twotier.memes.events"


def test_parse_offsets() -> None:
    assert parse_offsets("0:100,1:250") == {0: 100, 1: 250}
    assert parse_offsets(None) is None
    assert parse_offsets(" ") is None
    with pytest.raises(ValueError, match="<partition>:<offset>"):
        parse_offsets("0=100")
    with pytest.raises(ValueError, match="negative"):
        parse_offsets("0:-1")


def test_plan_ranges_defaults_and_bounds() -> None:
    begin, end = {0: 0, 1: 5}, {0: 10, 1: 5}
    assert plan_ranges(TOPIC, begin, end) == [OffsetRange(TOPIC, 0, 0, 10)]  # p1 is empty
    assert plan_ranges(TOPIC, begin, end, {0: 4}, {0: 6}) == [OffsetRange(TOPIC, 0, 4, 6)]
    with pytest.raises(OfflineJobError, match=r"partition\(s\) \[3\]"):
        plan_ranges(TOPIC, begin, end, {3: 0})
    with pytest.raises(OfflineJobError, match="not within"):
        plan_ranges(TOPIC, begin, end, end_offsets={0: 11})
    with pytest.raises(OfflineJobError, match="not within"):
        plan_ranges(TOPIC, begin, end, {0: 7}, {0: 6})


def test_covered_offsets_merges_and_names_gaps() -> None:
    ranges = [
        OffsetRange(TOPIC, 0, 0, 10),
        OffsetRange(TOPIC, 0, 10, 20),
        OffsetRange(TOPIC, 0, 5, 15),
        OffsetRange(TOPIC, 1, 3, 8),
    ]
    assert covered_offsets(ranges) == ({0: 0, 1: 3}, {0: 20, 1: 8})
    with pytest.raises(OffsetsError, match="up to offset 10, then again from 12"):
        covered_offsets([OffsetRange(TOPIC, 0, 0, 10), OffsetRange(TOPIC, 0, 12, 20)])


def test_start_offsets_spark_json() -> None:
    start = StartOffsets(TOPIC, {1: 7, 0: 3}, ["user_stats_v1"], 1)
    assert json.loads(start.spark_json()) == {TOPIC: {"0": 3, "1": 7}}


def test_totals_select_fields_follow_the_group() -> None:
    group = builtin_projects()["memes"].group("user_stats")
    sql, params, fields = totals_select("`db`.`e`", "`db`.`o`", group, TOPIC, {0: 10, 1: 4})
    names = [name for name, _ in fields]
    assert names == group.stored_fields()
    assert dict(fields)["last_view_ts"] == "max"
    assert dict(fields)["smiles_by_type__gif"] == "count"
    assert "(partition = 0 AND offset < 10) OR (partition = 1 AND offset < 4)" in sql
    everything, _, _ = totals_select("`db`.`e`", "`db`.`o`", group, TOPIC, None)
    assert "`db`.`o`" not in everything
    assert params["topic"] == TOPIC


def test_cli_parsers() -> None:
    parser = argparse.ArgumentParser()
    modes = parser.add_subparsers(dest="mode", required=True)
    add_batch_parsers(modes)
    args = parser.parse_args(["offline", "--project", "memes", "--start", "0:5"])
    assert (args.mode, args.project, args.start, args.end) == ("offline", "memes", "0:5", None)
    args = parser.parse_args(["validate", "--check", "events", "--check", "topic"])
    assert args.check == ["events", "topic"] and args.mode in BATCH_MODES
    with pytest.raises(SystemExit):
        parser.parse_args(["validate", "--check", "nope"])


def test_check_result_is_json() -> None:
    result = CheckResult(
        name="x", passed=False, severity="WARN", value=1.0, threshold=0, message="m"
    )
    assert json.loads(result.model_dump_json())["severity"] == "WARN"
    with pytest.raises(ValueError):
        CheckResult(name="x", passed=True, severity="INFO", value=0, threshold=0, message="")
