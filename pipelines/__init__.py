"""The Dagster code location of twotier."""
