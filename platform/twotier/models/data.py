"""Interactions and the temporal split of a project, read from the offline store."""

from __future__ import annotations

import pandas as pd

from twotier.errors import TwotierError
from twotier.offline_store.base import OfflineStore


class HoldoutError(TwotierError, ValueError):
    """The events cannot be split or read as asked; the message names the fix."""


def items_by_user(frame: pd.DataFrame) -> dict[str, set[str]]:
    """User id -> the set of item ids of ``frame`` (``user_id``, ``item_id``)."""
    return {str(u): set(items) for u, items in frame.groupby("user_id")["item_id"]}


def read_interactions(
    store: OfflineStore,
    project: str,
    action: str = "view",
    since_ts: int | None = None,
    until_ts: int | None = None,
) -> pd.DataFrame:
    """The project's ``action`` events in ``[since_ts, until_ts)``, sorted by time.

    Returns:
        Columns ``user_id``, ``item_id`` (str), ``ts`` (int ms) and ``value``.
    """
    if not store.has_table(project, "events"):
        raise HoldoutError(
            f"project {project!r} has no events table in the offline store: load events first"
        )
    where = ["action = {action:String}"]
    params: dict[str, object] = {"action": action}
    if since_ts is not None:
        where.append("ts >= {since:Int64}")
        params["since"] = int(since_ts)
    if until_ts is not None:
        where.append("ts < {until:Int64}")
        params["until"] = int(until_ts)
    frame = store.query_df(
        f"SELECT user_id, item_id, ts, value FROM {store.table(project, 'events')} FINAL "
        f"WHERE {' AND '.join(where)} ORDER BY ts, user_id, item_id",
        params,
    )
    if frame.empty:
        return pd.DataFrame(
            {
                "user_id": pd.Series(dtype=object),
                "item_id": pd.Series(dtype=object),
                "ts": pd.Series(dtype="int64"),
                "value": pd.Series(dtype="float64"),
            }
        )
    return frame.astype({"user_id": str, "item_id": str, "ts": "int64", "value": "float64"})


def temporal_cutoff(
    store: OfflineStore, project: str, test_fraction: float = 0.2, action: str = "view"
) -> int:
    """The time (ms) after which the last ``test_fraction`` of ``action`` events lie.

    Raises:
        HoldoutError: ``test_fraction`` is outside (0, 1) or there are no such events.
    """
    if not 0 < test_fraction < 1:
        raise HoldoutError(f"test_fraction={test_fraction} must lie strictly between 0 and 1")
    found = store.query_df(
        f"SELECT quantileExactLow({1 - test_fraction:.6f})(ts) AS cutoff, count() AS n "
        f"FROM {store.table(project, 'events')} FINAL WHERE action = {{action:String}}",
        {"action": action},
    )
    if int(found["n"].iloc[0]) == 0:
        raise HoldoutError(
            f"project {project!r} has no {action!r} events to split by time: load events first"
        )
    return int(found["cutoff"].iloc[0])


__all__ = ["HoldoutError", "read_interactions", "temporal_cutoff"]
