"""Ray Serve applications of twotier."""

import os

# The serving path talks to loopback services only: keep the MLflow client from phoning
# home. Set before any module of this package imports mlflow (it reads this at import).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
