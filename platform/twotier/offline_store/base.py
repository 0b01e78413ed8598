"""The offline store interface: a project's event history and the SQL that reads it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from twotier.closing import Closing
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

ITEM_COLUMNS: tuple[str, ...] = ("item_id", "attributes")
"""The columns of an items frame: the item id and its attributes.

``attributes`` maps an attribute name to a list of strings (a multi-valued attribute such
as MovieLens genres is one list; a single value is a one-element list), stored as
ClickHouse ``Map(String, Array(String))`` so SQL can read ``attributes['genres']``.
"""


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


def check_items_frame(project: str, items: pd.DataFrame) -> pd.DataFrame:
    """Validate an items frame and return it with exactly ``ITEM_COLUMNS``, normalised.

    Attribute maps get string keys in sorted order and lists of strings as values (a bare
    string becomes a one-element list), so equal attributes compare equal when stored.
    When an item appears more than once, its last row wins.

    Raises:
        OfflineStoreError: A column is missing, an item id is empty, or an attribute
            value is neither a string nor a list of strings.
    """
    missing = [c for c in ITEM_COLUMNS if c not in items.columns]
    if missing:
        raise OfflineStoreError(
            f"items frame for project {project!r} lacks columns {missing}: it needs "
            f"{list(ITEM_COLUMNS)} (attributes: a dict of name -> list of strings)"
        )
    ids = [str(i) for i in items["item_id"].tolist()]
    if any(not i for i in ids):
        raise OfflineStoreError(
            f"items frame for project {project!r} has empty item_id values: every item needs "
            "the id its events carry"
        )
    attributes: list[dict[str, list[str]]] = []
    for item_id, raw in zip(ids, items["attributes"].tolist(), strict=True):
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise OfflineStoreError(
                f"items frame for project {project!r}: item {item_id!r} has attributes "
                f"{raw!r}; use a dict of name -> list of strings, e.g. {{'genres': ['Drama']}}"
            )
        normalised: dict[str, list[str]] = {}
        for name in sorted(raw, key=str):
            value = raw[name]
            if isinstance(value, str):
                normalised[str(name)] = [value]
            elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                normalised[str(name)] = list(value)
            else:
                raise OfflineStoreError(
                    f"items frame for project {project!r}: item {item_id!r} attribute "
                    f"{name!r} is {value!r}; use a string or a list of strings"
                )
        attributes.append(normalised)
    frame = pd.DataFrame({"item_id": ids, "attributes": attributes})
    return frame.drop_duplicates("item_id", keep="last").reset_index(drop=True)


class OfflineStore(ABC, Closing):
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

    # -- schema --------------------------------------------------------------

    @abstractmethod
    def ensure_tables(self, project: str) -> None:
        """Create the database and the project's tables if they do not exist; idempotent.

        Args:
            project: The project, e.g. ``"movielens"``; tables are named by
                ``naming.offline_table(project, ...)``: ``events`` and ``items``.

        Raises:
            OfflineStoreError: The project name is invalid or the engine refused.
        """

    @abstractmethod
    def has_table(self, project: str, name: str) -> bool:
        """Whether the project table ``name`` (e.g. ``"events"``) exists.

        Args:
            project: The project.
            name: The table, without the project prefix.

        Returns:
            True if it exists in ``database``.
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
    def insert_items(self, project: str, items: pd.DataFrame) -> int:
        """Store item attributes; idempotent: unchanged items are not written again.

        An item whose attributes changed is replaced (the latest insert wins).

        Args:
            project: The project whose items table receives the rows.
            items: One row per item with the columns ``ITEM_COLUMNS``: ``item_id`` and
                ``attributes``, a dict of name -> list of strings (e.g. genres).

        Returns:
            How many items were new or changed.

        Raises:
            OfflineStoreError: The frame is invalid or the engine refused.
        """

    @abstractmethod
    def read_items(self, project: str, item_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """The stored items (latest attributes), sorted by ``item_id``.

        Args:
            project: The project.
            item_ids: Only these items (unknown ids are left out); None for all.

        Returns:
            A frame with the columns ``ITEM_COLUMNS`` (empty before ``ensure_tables``).
        """

    @abstractmethod
    def insert_frame(self, table: str, frame: pd.DataFrame) -> None:
        """Append a frame's rows to a table as they are (no validation, no deduplication).

        For scratch tables such as the entity rows of a point-in-time join; project data
        goes through ``insert_events`` and ``insert_items``.

        Args:
            table: A qualified table name (``table(project, name)``) whose columns match
                the frame's by name.
            frame: The rows.

        Raises:
            OfflineStoreError: The engine refused the rows.
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
