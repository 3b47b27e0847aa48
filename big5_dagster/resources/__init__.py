"""Dagster resources: the warehouse (DuckDB), the artifact store, the model backend, lineage."""
