"""The offline store interface: a project's event history and the SQL that reads it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pandas as pd

from twotier.errors import TwotierError
from twotier.events import Event

EVENT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "user_id",
    "item_id",
    "action",
    "value",
    "ts",
    "context",
)
"""The columns of an events frame, in table order (``twotier.events.Event`` without project)."""


class OfflineStoreError(TwotierError):
    """The offline store refused a request, is unreachable, or is held by another process."""


class OfflineStoreLockTimeout(OfflineStoreError):
    """The embedded engine's data path stayed locked by another process past the timeout."""


@dataclass(frozen=True)
class OfflineStoreCapabilities:
    """What a backend can do, declared rather than hidden.

    Attributes:
        embedded: The engine runs inside this process (no server).
        single_process: Only one process at a time may open the data; others wait
            on an inter-process lock for as long as the store is open.
        asof_join: ``ASOF JOIN`` is available for point-in-time joins.
        window_functions: SQL window functions (``OVER (...)``) are available.
    """

    embedded: bool
    single_process: bool
    asof_join: bool
    window_functions: bool


def events_frame(events: Iterable[Event]) -> pd.DataFrame:
    """Events as a frame for ``OfflineStore.insert_events`` (``project`` column included)."""
    rows = [event.model_dump() for event in events]
    return pd.DataFrame(rows, columns=["project", *EVENT_COLUMNS])


def check_events_frame(project: str, events: pd.DataFrame) -> pd.DataFrame:
    """Validate an events frame and return it with exactly ``EVENT_COLUMNS``, typed.

    A ``project`` column is allowed (as in ``Event.model_dump()``) but must hold only
    ``project``.

    Raises:
        OfflineStoreError: A column is missing, an event id is empty, or a row belongs
            to another project.
    """
    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise OfflineStoreError(
            f"events frame for project {project!r} lacks columns {missing}: "
            f"it needs {list(EVENT_COLUMNS)} (twotier.events.Event fields)"
        )
    if "project" in events.columns:
        others = sorted({str(p) for p in events["project"].unique()} - {project})
        if others:
            raise OfflineStoreError(
                f"events frame for project {project!r} holds events of {others}: "
                "insert each project's events into its own tables"
            )
    frame = events.loc[:, list(EVENT_COLUMNS)].copy()
    for column in ("event_id", "user_id", "item_id", "action"):
        frame[column] = frame[column].astype(str)
    if (frame["event_id"].str.len() == 0).any():
        raise OfflineStoreError(
            f"events frame for project {project!r} has empty event_id values: "
            "every event needs a stable id (it is the deduplication key)"
        )
    frame["value"] = frame["value"].astype("float64")
    frame["ts"] = frame["ts"].astype("int64")
    frame["context"] = [
        {str(k): str(v) for k, v in (c or {}).items()} for c in frame["context"].tolist()
    ]
    return frame


class OfflineStore(ABC):
    """Analytical storage of a project's events, read with SQL for training sets.

    Events are stored once per ``event_id``: inserting the same events twice leaves
    one row each, so replays and retried loads are safe.
    """

    # -- lifecycle -----------------------------------------------------------

    @property
    @abstractmethod
    def capabilities(self) -> OfflineStoreCapabilities:
        """What this backend supports (embedded, single process, ASOF JOIN, windows).

        Returns:
            The capabilities of the configured engine.
        """

    @property
    @abstractmethod
    def database(self) -> str:
        """The database that holds the project tables."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection (and the inter-process lock of an embedded engine).

        The store must not be used afterwards; closing twice is a no-op.
        """

    def __enter__(self) -> OfflineStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- schema --------------------------------------------------------------

    @abstractmethod
    def ensure_tables(self, project: str) -> None:
        """Create the database and the project's tables if they do not exist; idempotent.

        Args:
            project: The project, e.g. ``"movielens"``; tables are named by
                ``naming.offline_table(project, ...)``.

        Raises:
            OfflineStoreError: The project name is invalid or the engine refused.
        """

    @abstractmethod
    def table(self, project: str, name: str) -> str:
        """The fully qualified, quoted name of one project table, for use in SQL.

        Args:
            project: The project.
            name: The table, e.g. ``"events"``.

        Returns:
            For example ``` `twotier`.`movielens__events` ```.
        """

    # -- writes --------------------------------------------------------------

    @abstractmethod
    def insert_events(self, project: str, events: pd.DataFrame) -> int:
        """Insert events that are not stored yet; idempotent by ``event_id``.

        Args:
            project: The project whose events table receives the rows.
            events: One row per event with the columns ``EVENT_COLUMNS`` (``ts`` in
                milliseconds since the epoch, ``context`` a dict of strings); an
                optional ``project`` column must match ``project``.

        Returns:
            How many new events were stored (duplicates within the frame and events
            already stored are not counted).

        Raises:
            OfflineStoreError: The frame is invalid or the engine refused.
        """

    @abstractmethod
    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Run a statement that returns no rows (DDL, ``INSERT ... SELECT``).

        Args:
            sql: The statement; ``{name:Type}`` placeholders are bound server-side.
            parameters: Values of the placeholders.

        Raises:
            OfflineStoreError: The engine refused the statement.
        """

    # -- reads ---------------------------------------------------------------

    @abstractmethod
    def query_df(self, sql: str, parameters: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """Run a query and return its result as a DataFrame.

        Args:
            sql: The query; ``{name:Type}`` placeholders are bound server-side.
            parameters: Values of the placeholders.

        Returns:
            One column per selected expression.

        Raises:
            OfflineStoreError: The engine refused the query.
        """

    @abstractmethod
    def count_events(self, project: str) -> int:
        """The number of distinct events stored for ``project`` (0 before ``ensure_tables``).

        Args:
            project: The project.

        Returns:
            The exact count, deduplicated by ``event_id``.
        """
