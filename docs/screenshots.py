"""Screenshots of the pages a person opens after ``make demo``, in headless Chromium.

Run it while the local stack is up (after ``make demo``)::

    .venv/bin/python docs/screenshots.py            # writes docs/img/*.png

Each page is rendered by Debian's ``chromium`` (``make browser``) with
``--headless --no-sandbox --disable-background-networking``; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from twotier.config import load_settings
from twotier.infra.browser import BrowserError, screenshot
from twotier.registry import client

OUT = Path(__file__).resolve().parent / "img"


def pages(project: str) -> dict[str, str]:
    """Screenshot name -> URL of the running stack."""
    settings = load_settings()
    dagster = f"http://{settings.dagster.host}:{settings.dagster.port}"
    mlflow = settings.mlflow.uri
    try:
        experiment = client(mlflow).get_experiment_by_name(project)
    except Exception:  # MLflow down: the run pages are skipped below
        experiment = None
    serve = settings.serving.url(settings.ray)
    found = {
        "dagster_asset_graph": f"{dagster}/asset-groups",
        "dagster_runs": f"{dagster}/runs",
        "dagster_readout": f"{dagster}/assets/{project}/experiment_readout",
        "mlflow_models": f"{mlflow}/#/models",
        "serving_docs": f"{serve}/docs",
        "ray_serve": f"http://{settings.ray.host}:{settings.ray.gcs_port + 7}/#/serve",
    }
    if experiment is not None:
        runs = f"{mlflow}/#/experiments/{experiment.experiment_id}/runs"
        found["mlflow_runs"] = runs
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--project", default="movielens")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    failed = 0
    for name, url in pages(args.project).items():
        try:
            path = screenshot(url, args.out / f"{name}.png", size=(1400, 900), wait_ms=15000)
            print(f"{path} <- {url}")
        except BrowserError as exc:
            failed += 1
            print(f"skipped {name}: {exc}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
