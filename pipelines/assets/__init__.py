"""Dagster assets of twotier, one folder per group and one module per asset."""
