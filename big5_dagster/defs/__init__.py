"""Thin Dagster wiring of big5_dagster.lib, one module per pipeline stage."""
