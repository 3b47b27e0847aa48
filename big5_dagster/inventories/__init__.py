"""Packaged personality inventories (BFI-44, IPIP-NEO-120) as JSON data; see big5_dagster.lib.inventories."""
