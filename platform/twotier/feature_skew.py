"""Training/serving skew: served feature rows against the offline store's point-in-time values.

Serving logs the tier-two input row of a sampled share of requests
(``twotier.feature_log``). For one serve day (UTC), ``day_skew`` reads those
``recommendation`` events (``FINAL``: one row per ``event_id``), asks
``historical_features`` for the same user, item and time (the ``features_ts`` the row was
read at; features strictly before it), and counts per feature how often the two differ by
more than the tolerance (``abs + rel * |offline|``, as ``numpy.isclose``). The result is
written to ``<project>__feature_skew``, one row per day, served model and feature; a re-run
of a day replaces that day's partition.

Only features the offline store reproduces are compared: columns of offline feature
groups and the affinities computed from them. Request features (the caller's values and
tier one's per-candidate score and rank) and online-only groups are skipped, and the
result names them with the reason.

The spec compared against is the model's *declared* spec in the project configuration
(by the model name in ``tier2_model``), not the spec stored with the registered version:
logged columns that the declaration no longer has are skipped as such.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from twotier.feature_log import FEATURES_KEY, FEATURES_TS_KEY, FeatureLogError, decode_features
from twotier.readout import DAY_MS, day_start_ms

if TYPE_CHECKING:
    from twotier.config import Settings
    from twotier.features.spec import ModelFeatureSpec, ProjectFeatures
    from twotier.offline_store.base import OfflineStore

SKEW_TABLE = "feature_skew"
SKEW_COLUMNS: tuple[str, ...] = (
    "day",
    "model",
    "feature",
    "compared",
    "mismatched",
    "mismatch_rate",
    "mean_abs_diff",
    "max_abs_diff",
)
"""The columns of a skew result, per day, served model (``name/version``) and feature."""

_SKEW_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    day String COMMENT 'serve day, YYYY-MM-DD (UTC)',
    model String COMMENT 'the served tier-two version, <name>/<version>',
    feature String COMMENT 'the input column, <group>.<column> or affinity.<name>',
    compared UInt64 COMMENT 'sampled rows compared',
    mismatched UInt64 COMMENT 'rows differing by more than the tolerance',
    mismatch_rate Float64,
    mean_abs_diff Float64 COMMENT 'mean |served - offline| over the compared rows',
    max_abs_diff Float64,
    computed_ms Int64
) ENGINE = ReplacingMergeTree
PARTITION BY day
ORDER BY (day, model, feature)
COMMENT 'twotier: per-feature mismatch of served and point-in-time offline features'
"""


class FeatureSkewError(ValueError):
    """A skew comparison was asked of something it cannot compare (the message says why)."""


@dataclass(frozen=True)
class Tolerance:
    """Two values match when ``|served - offline| <= absolute + relative * |offline|``.

    The defaults allow for serving's float32 matrix (about 6e-8 relative) and the
    milliseconds between feature read and log time in recency features.
    """

    absolute: float = 1e-6
    relative: float = 1e-3

    def __post_init__(self) -> None:
        if not (self.absolute >= 0 and self.relative >= 0):
            raise FeatureSkewError(
                f"tolerance absolute={self.absolute}, relative={self.relative}: both must "
                "be >= 0 (e.g. absolute=1e-6, relative=1e-3)"
            )


@dataclass
class DaySkew:
    """One serve day's comparison.

    Attributes:
        day: ``YYYY-MM-DD``.
        rows: One row per served model and compared feature (``SKEW_COLUMNS``).
        sampled: Sampled recommendation events read (one per served item).
        compared: Events whose features were compared (their model is declared).
        skipped: Column -> why it was not compared.
        unreadable: Events whose logged features or model could not be read, by reason.
    """

    day: str
    rows: pd.DataFrame
    sampled: int = 0
    compared: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    unreadable: dict[str, int] = field(default_factory=dict)


# -- what can be compared ------------------------------------------------------------


def comparable_columns(spec: ModelFeatureSpec) -> tuple[list[str], dict[str, str]]:
    """The columns of ``spec`` the offline store reproduces, and the others with why.

    Returns:
        ``(compared, skipped)``: compared columns in ``spec.columns()`` order; skipped
        column -> reason (request features, online-only groups, affinities over them).
    """
    compared: list[str] = []
    skipped: dict[str, str] = {}
    offline = {g.name for g in spec.groups if g.offline}
    for group in spec.groups:
        for column in group.columns():
            name = f"{group.name}.{column}"
            if group.offline:
                compared.append(name)
            else:
                skipped[name] = "online-only feature group (offline: false): no snapshots"
    for affinity in spec.model.affinities:
        name = f"affinity.{affinity.name}"
        (user_group, _), (item_group, _) = affinity.parts()
        if user_group in offline and item_group in offline:
            compared.append(name)
        else:
            skipped[name] = "affinity over an online-only feature group"
    for request in spec.model.request_features:
        skipped[f"request.{request.name}"] = (
            "request feature: sent by the caller or filled by tier one per candidate, "
            "not in the offline store"
        )
    return compared, skipped


# -- the comparison (pure) ------------------------------------------------------------


def compare_features(
    served: pd.DataFrame,
    offline: pd.DataFrame,
    columns: Sequence[str],
    tolerance: Tolerance = Tolerance(),
) -> pd.DataFrame:
    """Per column: rows compared, rows mismatched, their rate, mean and max absolute difference.

    Args:
        served: The logged values, one row per sampled item; NaN where a row did not
            log the column (that row is not compared for it).
        offline: The point-in-time values, aligned row by row with ``served``.
        columns: The columns to compare (each must be in both frames).
        tolerance: When two values match (``Tolerance``); two NaNs match, one does not.

    Returns:
        Columns ``feature``, ``compared``, ``mismatched``, ``mismatch_rate``,
        ``mean_abs_diff``, ``max_abs_diff``, one row per column in order.

    Raises:
        FeatureSkewError: The frames differ in length or lack a column.
    """
    if len(served) != len(offline):
        raise FeatureSkewError(
            f"served has {len(served)} rows but offline {len(offline)}: compare the same "
            "sampled rows, aligned row by row"
        )
    missing = [c for c in columns if c not in served.columns or c not in offline.columns]
    if missing:
        raise FeatureSkewError(
            f"columns {missing} are not in both frames: served has "
            f"{list(served.columns)[:8]}..., offline {list(offline.columns)[:8]}..."
        )
    out = []
    for column in columns:
        a = served[column].to_numpy(dtype=np.float64, na_value=np.nan)
        b = offline[column].to_numpy(dtype=np.float64, na_value=np.nan)
        logged = ~np.isnan(a)
        a, b = a[logged], b[logged]
        n = len(a)
        with np.errstate(invalid="ignore"):
            diff = np.abs(a - b)
            close = diff <= tolerance.absolute + tolerance.relative * np.abs(b)
        close |= a == b  # equal infinities
        close |= np.isnan(a) & np.isnan(b)
        mismatched = int(n - close.sum())
        finite = diff[np.isfinite(diff)]
        out.append(
            {
                "feature": column,
                "compared": n,
                "mismatched": mismatched,
                "mismatch_rate": mismatched / n if n else 0.0,
                "mean_abs_diff": float(finite.mean()) if len(finite) else 0.0,
                "max_abs_diff": float(finite.max()) if len(finite) else 0.0,
            }
        )
    return pd.DataFrame(
        out,
        columns=[
            "feature",
            "compared",
            "mismatched",
            "mismatch_rate",
            "mean_abs_diff",
            "max_abs_diff",
        ],
    )


@dataclass(frozen=True)
class SkewVerdict:
    """The outcome of the skew check over some days.

    Attributes:
        passed: No feature's mismatch rate is above the threshold (or too few rows).
        severity: ``ERROR`` when failed, ``WARN`` when too few rows to judge, else None.
        rows: Sampled rows compared (per model the most compared feature, summed).
        failing: ``feature`` (``model:feature`` with several models) -> mismatch rate,
            worst first.
        rates: The same key -> mismatch rate, for every compared feature.
        message: One line for a person.
    """

    passed: bool
    severity: str | None
    rows: int
    failing: dict[str, float]
    rates: dict[str, float]
    message: str


def judge(rows: pd.DataFrame, max_mismatch_rate: float, min_rows: int) -> SkewVerdict:
    """The skew check's verdict on ``rows`` (``SKEW_COLUMNS``, any number of days).

    Per model and feature the days are pooled (mismatched / compared). Below ``min_rows``
    sampled rows the check passes with a warning: too few to judge.
    """
    if rows.empty:
        return SkewVerdict(
            True, "WARN", 0, {}, {}, "no sampled feature rows: too few sampled rows to judge"
        )
    pooled = rows.groupby(["model", "feature"], as_index=False)[["compared", "mismatched"]].sum()
    pooled["rate"] = pooled["mismatched"] / pooled["compared"].where(pooled["compared"] > 0)
    pooled["rate"] = pooled["rate"].fillna(0.0)
    several = pooled["model"].nunique() > 1
    keys = [
        f"{m}:{f}" if several else str(f)
        for m, f in zip(pooled["model"], pooled["feature"], strict=True)
    ]
    rates = dict(
        sorted(zip(keys, pooled["rate"].astype(float), strict=True), key=lambda kv: -kv[1])
    )
    per_model = rows.groupby(["model", "day"])["compared"].max().groupby("model").sum()
    n = int(per_model.sum())
    if n < min_rows:
        return SkewVerdict(
            True,
            "WARN",
            n,
            {},
            rates,
            f"{n} sampled rows (< pipelines.skew_min_rows={min_rows}): too few sampled rows "
            "to judge",
        )
    failing = {k: r for k, r in rates.items() if r > max_mismatch_rate}
    if failing:
        named = ", ".join(f"{k} {r:.1%}" for k, r in failing.items())
        return SkewVerdict(
            False,
            "ERROR",
            n,
            failing,
            rates,
            f"{len(failing)} feature(s) mismatch offline point-in-time values above "
            f"{max_mismatch_rate:.1%} over {n} sampled rows: {named}",
        )
    worst = next(iter(rates.items()), ("-", 0.0))
    return SkewVerdict(
        True,
        None,
        n,
        {},
        rates,
        f"every feature within {max_mismatch_rate:.1%} over {n} sampled rows "
        f"(worst {worst[0]} {worst[1]:.1%})",
    )


# -- the offline side -------------------------------------------------------------------


def ensure_skew_table(store: OfflineStore, project: str) -> str:
    """Create ``<project>__feature_skew`` if missing; its qualified name."""
    store.ensure_tables(project)
    table = store.table(project, SKEW_TABLE)
    store.command(_SKEW_DDL.format(table=table))
    return table


def sampled_recommendations(store: OfflineStore, project: str, day: str) -> pd.DataFrame:
    """The recommendation events served on ``day`` that carry logged features.

    Returns:
        ``event_id``, ``user_id``, ``item_id``, ``ts`` (the features' read time, else the
        serve time), ``model`` (``tier2_model``) and ``features`` (the JSON text), by event id.
    """
    events = store.table(project, "events")
    lo = day_start_ms(day)
    return store.query_df(
        f"""
        SELECT event_id, user_id, item_id,
               if(mapContains(context, {{ts_key:String}}),
                  toInt64OrZero(context[{{ts_key:String}}]), ts) AS ts,
               context['tier2_model'] AS model,
               context[{{key:String}}] AS features
        FROM {events} FINAL
        WHERE action = 'recommendation' AND ts >= {{lo:Int64}} AND ts < {{hi:Int64}}
          AND mapContains(context, {{key:String}})
        ORDER BY event_id
        """,
        {"key": FEATURES_KEY, "ts_key": FEATURES_TS_KEY, "lo": lo, "hi": lo + DAY_MS},
    )


def declared_spec(
    project: str, features: ProjectFeatures, served_model: str
) -> tuple[ModelFeatureSpec | None, str]:
    """The declared spec of the tier-two model in ``served_model`` (``name/version``).

    Returns:
        ``(spec, "")``, or ``(None, reason)`` when the name is not a declared tier-two
        model of ``project``.
    """
    name = served_model.rsplit("/", 1)[0]
    prefix = f"{project}.tier2."
    if not name.startswith(prefix) or "/" not in served_model:
        return None, f"tier2_model {served_model!r} is not '{prefix}<model>/<version>'"
    model = name[len(prefix) :]
    try:
        spec = features.model_spec(model)
    except KeyError:
        return None, f"model {model!r} is not declared in project {project!r}"
    if spec.model.tier != "tier2":
        return None, f"model {model!r} is not a tier-two model"
    return spec, ""


def day_skew(
    store: OfflineStore,
    settings: Settings,
    project: str,
    day: str,
    tolerance: Tolerance = Tolerance(),
) -> DaySkew:
    """Compare the sampled served features of ``day`` with point-in-time offline values.

    Args:
        store: An open offline store with the day's events and fresh feature snapshots.
        settings: Declares the project (its models' specs).
        project: The project.
        day: The serve day, ``YYYY-MM-DD`` (UTC).
        tolerance: When a served and an offline value match.

    Returns:
        The per-model, per-feature rows and what was skipped (not written).

    Raises:
        OfflineFeaturesError: A snapshot table is missing (materialise feature_snapshots).
        OfflineStoreError: The engine refused.
    """
    from twotier.features.offline import historical_features

    features = settings.project_features(project)
    events = sampled_recommendations(store, project, day)
    result = DaySkew(day, pd.DataFrame(columns=list(SKEW_COLUMNS)), sampled=len(events))
    if events.empty:  # chdb answers an empty result with no columns at all
        return result
    frames: list[pd.DataFrame] = []
    for served_model, part in events.groupby("model", sort=True):
        spec, reason = declared_spec(project, features, str(served_model))
        if spec is None:
            result.unreadable[reason] = result.unreadable.get(reason, 0) + len(part)
            continue
        decoded: list[dict[str, float]] = []
        keep: list[int] = []
        for position, text in enumerate(part["features"].tolist()):
            try:
                decoded.append(decode_features(text))
                keep.append(position)
            except FeatureLogError as exc:
                key = str(exc).split(":", 1)[0] + ": unreadable features"
                result.unreadable[key] = result.unreadable.get(key, 0) + 1
        if not keep:
            continue
        rows = part.iloc[keep].reset_index(drop=True)
        served = pd.DataFrame(decoded)
        compared, skipped = comparable_columns(spec)
        result.skipped.update(skipped)
        for column in served.columns:
            if column not in spec.columns():
                result.skipped[column] = (
                    f"logged, but not in the declared spec of {spec.model.name!r} "
                    "(the served version has another layout)"
                )
        columns = [c for c in compared if c in served.columns]
        for column in compared:
            if column not in served.columns:
                result.skipped[column] = "in the declared spec, not logged by serving"
        entity = rows[["user_id", "item_id", "ts"]].astype(
            {"user_id": object, "item_id": object, "ts": "int64"}
        )
        offline = historical_features(store, settings, project, spec, entity)
        table = compare_features(served, offline.reset_index(drop=True), columns, tolerance)
        table.insert(0, "model", str(served_model))
        table.insert(0, "day", day)
        frames.append(table)
        result.compared += len(rows)
    if frames:
        result.rows = pd.concat(frames, ignore_index=True)[list(SKEW_COLUMNS)]
    return result


def write_skew(store: OfflineStore, project: str, result: DaySkew) -> int:
    """Replace ``result.day``'s partition of ``<project>__feature_skew``; rows written."""
    table = ensure_skew_table(store, project)
    store.command(f"ALTER TABLE {table} DROP PARTITION {{p:String}}", {"p": result.day})
    if result.rows.empty:
        return 0
    frame = result.rows.copy()
    frame["compared"] = frame["compared"].astype("uint64")
    frame["mismatched"] = frame["mismatched"].astype("uint64")
    frame["computed_ms"] = int(time.time() * 1000)
    store.insert_frame(table, frame)
    return len(frame)


def read_skew(store: OfflineStore, project: str, days: Sequence[str]) -> pd.DataFrame:
    """The stored skew rows of ``days`` (``SKEW_COLUMNS``); empty before the first run."""
    if not store.has_table(project, SKEW_TABLE):
        return pd.DataFrame(columns=list(SKEW_COLUMNS))
    table = store.table(project, SKEW_TABLE)
    frame = store.query_df(
        f"SELECT {', '.join(SKEW_COLUMNS)} FROM {table} FINAL "
        "WHERE has({days:Array(String)}, day) ORDER BY day, model, feature",
        {"days": list(days)},
    )
    return frame


def worst_features_markdown(rows: pd.DataFrame, limit: int = 10) -> str:
    """The ``limit`` features with the highest mismatch rate as a markdown table."""
    if rows.empty:
        return "no sampled rows compared"
    top = rows.sort_values(["mismatch_rate", "mean_abs_diff"], ascending=False).head(limit)
    lines = [
        "| model | feature | compared | mismatched | rate | mean abs diff |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r.model} | {r.feature} | {int(r.compared)} | {int(r.mismatched)} | "
        f"{float(r.mismatch_rate):.2%} | {float(r.mean_abs_diff):.4g} |"
        for r in top.itertuples()
    ]
    return "\n".join(lines)


def rates_by_feature(rows: pd.DataFrame) -> dict[str, Any]:
    """``{model: {feature: mismatch rate}}`` of ``rows`` (for JSON metadata)."""
    out: dict[str, Any] = {}
    for r in rows.itertuples():
        out.setdefault(str(r.model), {})[str(r.feature)] = round(float(r.mismatch_rate), 6)
    return out
