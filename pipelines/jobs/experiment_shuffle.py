"""The shuffle job of a project: start a new assignment generation of a concluded experiment.

One op in the offline-store pool runs ``twotier.shuffles.shuffle_with_stores`` with the
run's config (``experiment``, ``force``): the new generation goes to the offline cohort
history (training sets) and the online store (serving switches within its TTL).
"""

import dagster as dg

from twotier.experiments import Experiment
from twotier.naming import asset_prefix
from twotier.pipelines.resources.offline_store import OFFLINE_STORE_POOL, OfflineStoreResource
from twotier.pipelines.resources.online_store import OnlineStoreResource


def shuffle_job_name(project: str) -> str:
    """``<project>_experiment_shuffle``."""
    return f"{asset_prefix(project)[0]}_experiment_shuffle"


class ShuffleConfig(dg.Config):
    """Which experiment to reshuffle; ``force`` skips the check that it concluded."""

    experiment: str
    force: bool = False


def make_experiment_shuffle_job(project: str, experiments: list[Experiment]) -> dg.JobDefinition:
    """The job that reshuffles one of ``project``'s ``experiments`` (named in run config)."""
    by_name = {e.name: e for e in experiments}

    @dg.op(
        name=f"{asset_prefix(project)[0]}_shuffle_experiment",
        pool=OFFLINE_STORE_POOL,
        tags={"twotier/project": project},
    )
    def shuffle(
        context: dg.OpExecutionContext,
        config: ShuffleConfig,
        offline_store: OfflineStoreResource,
        online_store: OnlineStoreResource,
    ) -> int:
        """Start the experiment's next generation; returns its number."""
        from twotier.shuffles import shuffle_with_stores

        experiment = by_name.get(config.experiment)
        if experiment is None:
            raise dg.Failure(
                f"project {project!r} has no experiment {config.experiment!r} "
                f"(declared: {sorted(by_name)})"
            )
        with offline_store.open() as offline, online_store.open() as online:
            done = shuffle_with_stores(offline, online, project, experiment, force=config.force)
        context.log.info(f"experiment {done.summary}")
        return done.shuffle

    @dg.job(
        name=shuffle_job_name(project),
        description=f"Start a new A/B assignment generation of a concluded {project} "
        "experiment (run config: experiment, force).",
        tags={"twotier/project": project, "twotier/kind": "experiments"},
    )
    def shuffle_job() -> None:
        shuffle()

    return shuffle_job
