"""twotier: an ML platform for two-tier recommender systems."""

import os as _os

__version__ = "0.1.0"

# No usage telemetry leaves the machine from any process that imports twotier; set here,
# before mlflow, ray or dagster are imported, because they read these once at import.
for _name, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DAGSTER_DISABLE_TELEMETRY": "1",
}.items():
    _os.environ.setdefault(_name, _value)
