"""Pure rules of the online store: which names, ids and batch keys are accepted."""

from __future__ import annotations

from typing import Any

import pytest

from twotier.feature_jobs.online_job import batch_key_of
from twotier.online_store.base import (
    OnlineStoreError,
    check_batch_key,
    check_field_name,
    check_increments,
)


@pytest.mark.parametrize("name", ["views", "rating_sum", "ctr_7d", "A1"])
def test_valid_field_names(name: str) -> None:
    assert check_field_name(name) == name


@pytest.mark.parametrize("name", ["a.b", "$inc", "_batch", "_id", "", "1views", "x" * 65])
def test_invalid_field_names_name_the_rule(name: str) -> None:
    with pytest.raises(OnlineStoreError, match="no dots or '\\$'"):
        check_field_name(name)


@pytest.mark.parametrize("key", ["online-0f3a", "writer_a", "a" * 64])
def test_valid_batch_keys(key: str) -> None:
    assert check_batch_key(key) == key


@pytest.mark.parametrize("key", ["", "with.dot", "/tmp/checkpoint", "$x", "a" * 65])
def test_invalid_batch_keys(key: str) -> None:
    with pytest.raises(OnlineStoreError, match="batch key"):
        check_batch_key(key)


@pytest.mark.parametrize(
    "increments",
    [{1: {"views": 1}}, {"": {"views": 1}}, {"u1": {"a.b": 1}}],
)
def test_bad_increments_are_rejected(increments: Any) -> None:
    with pytest.raises(OnlineStoreError):
        check_increments(increments)


def test_query_id_becomes_a_valid_batch_key() -> None:
    key = batch_key_of("0f3a2b1c-1111-2222-3333-444455556666")
    assert key == "online-0f3a2b1c111122223333444455556666"
    assert check_batch_key(key) == key
