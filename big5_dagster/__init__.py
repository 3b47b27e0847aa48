"""big5_dagster: BIG5-CHAT as a declarative Dagster asset graph."""

__version__ = "0.1.0"
