"""The Dagster code location of twotier (placeholder until the skeleton assets land)."""

import dagster as dg

defs = dg.Definitions(assets=[])
