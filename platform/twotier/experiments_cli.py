"""``twotier experiments``: the per-group readout of each A/B experiment, and its shuffle.

``twotier experiments`` prints each experiment's readout (users, recommendations, hit
rates, the difference against control with a 95% interval and a p-value);
``twotier experiments shuffle`` starts a new assignment generation.
"""

from __future__ import annotations

import typer

experiments_app = typer.Typer(
    help="A/B experiments: the readout per group, and the shuffle that starts new cohorts.",
    no_args_is_help=False,
)


def register(app: typer.Typer) -> None:
    """Add ``experiments`` (and its subcommands) to the ``twotier`` app."""
    app.add_typer(experiments_app, name="experiments")
