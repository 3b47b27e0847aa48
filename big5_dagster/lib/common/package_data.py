"""Package data files under ``big5_dagster/data``, read with importlib.resources.

Every read names its folder (and usually the file) as literal strings, e.g.
``load_yaml("corpora", "trait_markers.yaml")``: ``lib.common.code_version`` reads those
literals to know which data files a module reads, so an edited phrase bank makes exactly
the assets that use it stale.
"""

from __future__ import annotations

import json
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import yaml

DATA_PACKAGE = "big5_dagster.data"
READERS: tuple[str, ...] = ("data_file", "read_text", "load_yaml", "load_json")
"""The functions of this module that read data; code_version looks for calls to them."""


def data_file(*parts: str) -> Traversable:
    """The packaged file ``big5_dagster/data/<parts...>``; FileNotFoundError if it is missing."""
    if not parts:
        raise ValueError("data_file needs a folder and a file name")
    path = resources.files(DATA_PACKAGE).joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"package data file {data_name(*parts)} does not exist")
    return path


def data_name(*parts: str) -> str:
    """How errors name a data file: 'big5_dagster/data/corpora/trait_markers.yaml'."""
    return "/".join(("big5_dagster", "data", *parts))


def read_text(*parts: str) -> str:
    return data_file(*parts).read_text(encoding="utf-8")


def load_yaml(*parts: str) -> Any:
    """The parsed YAML of a packaged file; a syntax error names the file."""
    try:
        return yaml.safe_load(read_text(*parts))
    except yaml.YAMLError as e:
        raise ValueError(f"{data_name(*parts)} is not valid YAML: {e}") from e


def load_json(*parts: str) -> Any:
    """The parsed JSON of a packaged file; a syntax error names the file."""
    try:
        return json.loads(read_text(*parts))
    except json.JSONDecodeError as e:
        raise ValueError(f"{data_name(*parts)} is not valid JSON: {e}") from e


def data_files(folder: str) -> list[str]:
    """Relative names ('folder/file') of every file under a packaged folder, sorted."""
    root = resources.files(DATA_PACKAGE).joinpath(folder)
    found: list[str] = []

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            name = f"{prefix}/{child.name}"
            if child.is_dir():
                walk(child, name)
            elif child.is_file() and not child.name.endswith((".py", ".pyc")):
                found.append(name)

    if root.is_dir():
        walk(root, folder)
    return sorted(found)
