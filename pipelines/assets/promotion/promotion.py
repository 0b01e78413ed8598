"""Asset: promotion of the new versions of both tiers, then one call to serving.

It runs only when every blocking ERROR check of the model assets passed in the run
(Dagster skips it otherwise); it re-checks the outcomes handed over by the model assets
too, so a later run that materialises only the promotion cannot promote a failed model.
``champion`` moves for every model of the project; with ``experiment_groups`` set, those
groups' aliases move as well. Serving is then told to load the versions (when
``deploy_after_promotion``); if it is not reachable the promotion still stands, serving
picks the alias up by polling, and the metadata says so.
"""

# No `from __future__ import annotations`: Dagster reads the annotations.
from typing import Any

import dagster as dg
from pydantic import Field

from twotier.features.spec import ProjectFeatures
from twotier.pipelines.assets.keys import (
    PROMOTION,
    TIER_ONE,
    asset_key,
    group_name,
    tier_two,
    tier_two_models,
)
from twotier.pipelines.assets.outputs import RegisteredModel
from twotier.pipelines.assets.partitions import SINGLE_RUN
from twotier.pipelines.resources import MLflowResource
from twotier.pipelines.resources.serving import (
    ServingAdminError,
    ServingResource,
    ServingUnavailable,
)
from twotier.registry import ModelNotFound, resolve, set_alias

DEFAULT_ALIAS = "champion"


class PromotionConfig(dg.Config):
    """Which aliases move."""

    alias: str = Field(DEFAULT_ALIAS, min_length=1, description="The alias every model gets.")
    experiment_groups: list[str] = Field(
        default_factory=list,
        description="'<experiment>.<group>' entries whose group alias moves too "
        "('<experiment>' alone: every group of it).",
    )


class PromotionError(dg.Failure):
    """The promotion was refused (a failed check, an unknown experiment group)."""


def group_aliases(features: ProjectFeatures, selected: list[str]) -> list[str]:
    """The aliases of the selected experiment groups (``exp`` or ``exp.group``), deduplicated.

    Raises:
        ValueError: An entry names an experiment or group the project does not declare.
    """
    aliases: list[str] = []
    declared = {e.name: e for e in features.experiments}
    for entry in selected:
        exp_name, _, group = entry.partition(".")
        experiment = declared.get(exp_name)
        if experiment is None:
            raise ValueError(
                f"experiment_groups entry {entry!r}: no experiment {exp_name!r}; "
                f"declared: {sorted(declared)}"
            )
        groups = list(experiment.groups)
        if group:
            groups = [g for g in groups if g.name == group]
            if not groups:
                raise ValueError(
                    f"experiment_groups entry {entry!r}: experiment {exp_name!r} has no group "
                    f"{group!r}; groups: {[g.name for g in experiment.groups]}"
                )
        aliases.extend(g.alias for g in groups)
    return list(dict.fromkeys(aliases))


def make_promotion(project: str, features: ProjectFeatures) -> dg.AssetsDefinition:
    """The ``promotion`` asset of ``project``: aliases move only after the checks passed."""
    models = {"tier_one": asset_key(project, TIER_ONE)}
    models.update(
        {f"tier2_{m}": asset_key(project, tier_two(m)) for m in tier_two_models(features)}
    )

    @dg.asset(
        key=asset_key(project, PROMOTION),
        ins={param: dg.AssetIn(key=key) for param, key in models.items()},
        group_name=group_name(project, "promotion"),
        kinds={"mlflow"},
        backfill_policy=SINGLE_RUN,
        description=f"Moves champion (and configured experiment-group aliases) of {project!r}'s "
        "models to the versions of this run once their blocking checks passed, then asks "
        "serving to load them.",
    )
    def promotion(
        context: dg.AssetExecutionContext,
        config: PromotionConfig,
        mlflow: MLflowResource,
        serving: ServingResource,
        **registered: RegisteredModel,
    ) -> dg.MaterializeResult:
        failed = {m.name: m.blocking_failures for m in registered.values() if m.blocking_failures}
        if failed:
            raise PromotionError(
                description=f"not promoting: blocking checks failed for {failed}; fix the "
                "model (or its thresholds) and materialise it again"
            )
        try:
            aliases = [config.alias, *group_aliases(features, config.experiment_groups)]
        except ValueError as exc:
            raise PromotionError(description=str(exc)) from exc
        aliases = list(dict.fromkeys(aliases))
        uri = mlflow.tracking_uri
        moved: dict[str, dict[str, Any]] = {}
        for model in registered.values():
            for alias in aliases:
                try:
                    previous: str | None = resolve(uri, model.name, alias).version
                except ModelNotFound:
                    previous = None
                set_alias(uri, model.name, alias, model.version)
                moved[f"{model.name}@{alias}"] = {"version": model.version, "previous": previous}
                was = f"v{previous}" if previous else "unset"
                context.log.info(f"{model.name}@{alias}: {was} -> v{model.version}")

        deployment: dict[str, Any] = {}
        if not serving.deploy_after_promotion:
            deployment["status"] = "skipped (deploy_after_promotion is off)"
        else:
            answers, problems = [], []
            for model in registered.values():
                for alias in aliases:
                    try:
                        answers.append(
                            serving.load_model(
                                project, model.tier, model.model, alias, model.version
                            )
                        )
                    except (ServingUnavailable, ServingAdminError) as exc:
                        problems.append(str(exc))
                        context.log.warning(
                            f"promoted {model.name}@{alias}={model.version}, but serving was not "
                            f"told: {exc}"
                        )
            deployment["status"] = "deployed" if not problems else "serving not told"
            deployment["answers"] = answers
            deployment["problems"] = problems
        return dg.MaterializeResult(
            metadata={
                "aliases": aliases,
                "moved": dg.MetadataValue.json(moved),
                "deployment_status": deployment["status"],
                "deployment": dg.MetadataValue.json(deployment),
            }
        )

    return promotion
