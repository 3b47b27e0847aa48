"""Package data: inventories, phrase banks, item banks and lm-eval task templates.

Read through ``big5_dagster.lib.common.package_data`` (importlib.resources), never by path.
"""
