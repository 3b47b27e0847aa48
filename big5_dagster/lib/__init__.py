"""Pure logic of the pipeline. Nothing in this package imports Dagster."""
