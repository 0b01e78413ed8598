"""Asset checks: data validation of the offline events (``feature_jobs.validate``).

The checks are the ``validate`` mode's ``check_events``: ids not empty, times in range
and values in range are ERROR (the data must not train a model: they block everything
downstream in the run), unknown actions are WARN (worth a look, harmless to training).
"""

# No `from __future__ import annotations`: Dagster reads the annotations.
from collections.abc import Iterator

import dagster as dg
from pydantic import Field

from twotier.events import KNOWN_ACTIONS
from twotier.features.spec import ProjectFeatures
from twotier.pipelines.assets.ingest.events_offline import events_offline_key
from twotier.pipelines.resources import OfflineStoreResource
from twotier.pipelines.resources.offline_store import OFFLINE_STORE_POOL

CHECKS: dict[str, str] = {
    "events_ids_not_empty": "Every event has an event, user and item id and an action.",
    "events_ts_range": "Every event time lies between 1990-01-01 and now + 1 day (ms).",
    "events_known_actions": "Every action is known or counted by a feature group (WARN).",
    "events_value_range": "Every value is finite and within the configured range.",
}


class EventsChecksConfig(dg.Config):
    """Thresholds of the events checks."""

    value_min: float = Field(-1e6, description="Lowest accepted event value.")
    value_max: float = Field(1e6, description="Highest accepted event value.")
    extra_actions: list[str] = Field(
        default_factory=list, description="Actions accepted besides the known and counted ones."
    )


def known_actions(features: ProjectFeatures, extra: list[str]) -> list[str]:
    """The accepted actions: ``events.KNOWN_ACTIONS``, those the groups count, and ``extra``."""
    counted = {f.action for g in features.feature_groups for f in g.raw_features()}
    return sorted(set(KNOWN_ACTIONS) | counted | set(extra))


def make_events_checks(project: str, features: ProjectFeatures) -> dg.AssetChecksDefinition:
    """The blocking data checks on ``<project>/events_offline``."""
    key = events_offline_key(project)

    @dg.multi_asset_check(
        name=f"{project}__events_offline_checks",
        specs=[
            dg.AssetCheckSpec(name, asset=key, blocking=True, description=description)
            for name, description in CHECKS.items()
        ],
        pool=OFFLINE_STORE_POOL,
        description="Schema, null and range checks of the offline events (feature_jobs.validate).",
    )
    def events_offline_checks(
        context: dg.AssetCheckExecutionContext,
        config: EventsChecksConfig,
        offline_store: OfflineStoreResource,
    ) -> Iterator[dg.AssetCheckResult]:
        from twotier.feature_jobs.validate import check_events

        actions = known_actions(features, config.extra_actions)
        with offline_store.open() as store:
            results = check_events(store, project, actions, (config.value_min, config.value_max))
        by_name = {r.name: r for r in results}
        missing_table = by_name.get("events_table")
        for name in CHECKS:
            result = by_name.get(name, missing_table)
            if result is None:
                raise RuntimeError(f"feature_jobs.validate.check_events returned no {name!r}")
            severity = (
                dg.AssetCheckSeverity.WARN
                if result.severity == "WARN"
                else dg.AssetCheckSeverity.ERROR
            )
            if not result.passed:
                context.log.warning(f"check {name} failed ({result.severity}): {result.message}")
            yield dg.AssetCheckResult(
                asset_key=key,
                check_name=name,
                passed=result.passed,
                severity=severity,
                description=result.message,
                metadata={
                    "value": result.value if result.value is not None else float("nan"),
                    "threshold": result.threshold if result.threshold is not None else float("nan"),
                },
            )

    return events_offline_checks
