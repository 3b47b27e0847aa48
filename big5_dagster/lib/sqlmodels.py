"""A small dbt-style runner for the SQL models in dbt_like_sql/ (pure logic, no Dagster).

dbt-core cannot be installed offline here, so this module understands exactly the subset
of dbt's Jinja the models use and nothing more:

- ``{{ ref('name') }}`` (single or double quotes, any whitespace, may span lines): a
  dependency on another model or on a source table written by a Python asset;
- ``{{ config(materialized='table') }}`` (or ``'view'``, the default).

Every other Jinja construct (``{{ ... }}``, ``{% ... %}``, ``{# ... #}``) is an error
naming the file and line, because we do not run Jinja and silently leaving it in the SQL
would produce a confusing database error later. The SQL itself is DuckDB SQL, so the same
files run unchanged under dbt-duckdb.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import heapq
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

CODE_VERSION_LEN = 16
MATERIALIZATIONS: tuple[str, ...] = ("view", "table")
# Model names become unquoted-looking table names in the warehouse and Dagster asset keys.
_MODEL_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TAG_OPEN_RE = re.compile(r"\{\{|\{%|\{#")
_TAG_CLOSE = {"{{": "}}", "{%": "%}", "{#": "#}"}
# Suffix of the table a table model is built into before it replaces the previous one.
_BUILD_SUFFIX = "__sqlmodels_build"


class SqlModelError(ValueError):
    """A SQL model file is malformed, its graph is invalid, or building it failed."""


@dataclass(frozen=True)
class SqlModel:
    """One parsed model file.

    ``refs`` lists the referenced names in order of first use (each once).
    ``code_version`` is the first 16 hex characters of the sha256 of the raw SQL text,
    so any edit to the file, comments included, makes a new version.
    """

    name: str
    path: Path
    sql: str
    refs: tuple[str, ...]
    materialized: str = "view"
    description: str = ""
    code_version: str = ""


@dataclass(frozen=True)
class _Tag:
    """One Jinja tag found in a model: its span in the raw text and what it means."""

    start: int
    end: int
    line: int
    kind: str  # "ref" or "config"
    value: str  # the referenced name, or the materialization


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _parse_expression_tag(inner: str, path: Path, line: int) -> tuple[str, str]:
    """Interpret the inside of ``{{ ... }}``: a ref or a config call, else an error."""
    where = f"{path}:{line}"
    snippet = "{{" + inner + "}}"
    try:
        expr = ast.parse(inner.strip(), mode="eval").body
    except SyntaxError:
        raise SqlModelError(
            f"{where}: unsupported Jinja expression {snippet!r}: only "
            "{{ ref('name') }} and {{ config(materialized='view'|'table') }} are supported"
        ) from None
    if not (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name)):
        raise SqlModelError(
            f"{where}: unsupported Jinja expression {snippet!r}: only "
            "{{ ref('name') }} and {{ config(materialized='view'|'table') }} are supported"
        )
    func = expr.func.id
    if func == "ref":
        arg = expr.args[0] if len(expr.args) == 1 else None
        if (
            expr.keywords
            or arg is None
            or not isinstance(arg, ast.Constant)
            or not isinstance(arg.value, str)
            or not arg.value.strip()
        ):
            raise SqlModelError(
                f"{where}: ref takes exactly one model or source name as a string literal, "
                f"got {snippet!r} (two-argument package refs and versions are not supported)"
            )
        return "ref", arg.value.strip()
    if func == "config":
        if expr.args:
            raise SqlModelError(f"{where}: config takes keyword arguments only, got {snippet!r}")
        settings: dict[str, Any] = {}
        for keyword in expr.keywords:
            try:
                settings[str(keyword.arg)] = ast.literal_eval(keyword.value)
            except ValueError:
                raise SqlModelError(
                    f"{where}: config value for {keyword.arg!r} must be a literal in {snippet!r}"
                ) from None
        unsupported = sorted(set(settings) - {"materialized"})
        if unsupported:
            # Ignoring e.g. schema= or alias= would build somewhere other than the author meant.
            raise SqlModelError(
                f"{where}: unsupported config key(s) {unsupported} in {snippet!r}: "
                "only materialized is supported"
            )
        materialized = settings.get("materialized", "view")
        if materialized not in MATERIALIZATIONS:
            raise SqlModelError(
                f"{where}: materialized must be one of {list(MATERIALIZATIONS)}, "
                f"got {materialized!r}"
            )
        return "config", materialized
    raise SqlModelError(
        f"{where}: unsupported Jinja call {func!r} in {snippet!r}: only "
        "{{ ref('name') }} and {{ config(materialized='view'|'table') }} are supported"
    )


def _scan_tags(sql: str, path: Path) -> list[_Tag]:
    """Find every Jinja tag in the raw text; raise on anything but ref and config."""
    tags: list[_Tag] = []
    position = 0
    while True:
        match = _TAG_OPEN_RE.search(sql, position)
        if match is None:
            return tags
        opener = match.group(0)
        line = _line_of(sql, match.start())
        close_at = sql.find(_TAG_CLOSE[opener], match.end())
        if close_at < 0:
            raise SqlModelError(
                f"{path}:{line}: unclosed Jinja tag {opener!r} (expected {_TAG_CLOSE[opener]!r})"
            )
        end = close_at + 2
        if opener != "{{":
            kind = "statement" if opener == "{%" else "comment"
            raise SqlModelError(
                f"{path}:{line}: unsupported Jinja {kind} {sql[match.start() : end]!r}: "
                "this runner does not execute Jinja; only {{ ref('name') }} and "
                "{{ config(materialized=...) }} are supported"
            )
        kind, value = _parse_expression_tag(sql[match.end() : close_at], path, line)
        tags.append(_Tag(match.start(), end, line, kind, value))
        position = end


def _leading_description(sql: str) -> str:
    """The text of the ``--`` comment lines at the top (a config-only line may sit among them)."""
    lines: list[str] = []
    for raw_line in sql.splitlines():
        stripped = raw_line.strip()
        if not stripped or re.fullmatch(r"\{\{\s*config\s*\(.*\)\s*\}\}", stripped):
            continue
        if not stripped.startswith("--"):
            break
        text = stripped[2:]
        lines.append(text[1:] if text.startswith(" ") else text)
    return "\n".join(lines).strip()


def sql_code_version(sql: str) -> str:
    """First 16 hex characters of the sha256 of the raw SQL text."""
    return hashlib.sha256(sql.encode("utf-8")).hexdigest()[:CODE_VERSION_LEN]


def parse_model(name: str, path: Path, sql: str) -> SqlModel:
    """Parse one model's raw SQL text. Errors name ``path`` and the line."""
    if not _MODEL_NAME_RE.match(name):
        raise SqlModelError(
            f"{path}: model name {name!r} (the file stem) must be a plain identifier "
            "(letters, digits, underscores; not starting with a digit)"
        )
    tags = _scan_tags(sql, path)
    configs = [tag for tag in tags if tag.kind == "config"]
    if len(configs) > 1:
        raise SqlModelError(
            f"{path}:{configs[1].line}: config is called more than once "
            f"(first on line {configs[0].line})"
        )
    refs = tuple(dict.fromkeys(tag.value for tag in tags if tag.kind == "ref"))
    return SqlModel(
        name=name,
        path=path,
        sql=sql,
        refs=refs,
        materialized=configs[0].value if configs else "view",
        description=_leading_description(sql),
        code_version=sql_code_version(sql),
    )


def load_model(path: Path) -> SqlModel:
    """Read and parse one ``.sql`` file; the model is named after the file stem."""
    path = Path(path)
    try:
        sql = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise SqlModelError(f"{path}: not valid UTF-8 ({error})") from error
    return parse_model(path.stem, path, sql)


def discover_models(directory: Path) -> list[SqlModel]:
    """Parse every ``*.sql`` file under ``directory`` (recursively, hidden folders skipped).

    Returns models sorted by name. Two files with the same model name (DuckDB names are
    case-insensitive, so names differing only in case count as the same) are an error
    naming both files.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise SqlModelError(f"{directory}: SQL model directory does not exist")
    models: dict[str, SqlModel] = {}
    for path in sorted(directory.rglob("*.sql")):
        relative_parts = path.relative_to(directory).parts
        if any(part.startswith(".") for part in relative_parts) or not path.is_file():
            continue
        model = load_model(path)
        key = model.name.lower()
        if key in models:
            raise SqlModelError(
                f"duplicate model name {model.name!r}: defined by both "
                f"{models[key].path} and {model.path}"
            )
        models[key] = model
    return sorted(models.values(), key=lambda model: model.name)


def _find_cycle(remaining: dict[str, SqlModel]) -> list[str]:
    """Return one dependency cycle among ``remaining`` as [a, b, ..., a] (model names)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for ref in remaining[name].refs:
            if ref not in remaining:
                continue
            if state.get(ref) == 1:
                return path[path.index(ref) :] + [ref]
            if ref not in state:
                found = visit(ref)
                if found:
                    return found
        path.pop()
        state[name] = 2
        return None

    for name in sorted(remaining):
        if name not in state:
            found = visit(name)
            if found:
                return found
    raise AssertionError("no cycle among models left unordered")  # Kahn guarantees one


def resolve_graph(models: Sequence[SqlModel], sources: Iterable[str]) -> list[SqlModel]:
    """Order ``models`` so each comes after everything it refs (alphabetical among ready ones).

    ``sources`` are the warehouse tables written by Python assets that models may ref.
    Raises SqlModelError for: a duplicate model name, a model named like a source, a ref
    to an unknown name (naming the file), or a cycle (naming the files in it).
    """
    source_names = set(sources)
    source_keys = {source.lower(): source for source in source_names}
    by_name: dict[str, SqlModel] = {}
    for model in models:
        if model.name in by_name:
            raise SqlModelError(
                f"duplicate model name {model.name!r}: defined by both "
                f"{by_name[model.name].path} and {model.path}"
            )
        if model.name.lower() in source_keys:
            raise SqlModelError(
                f"{model.path}: model name {model.name!r} collides with the source table "
                f"{source_keys[model.name.lower()]!r} written by a Python asset; rename the model"
            )
        by_name[model.name] = model

    known = sorted(set(by_name) | source_names)
    for model in sorted(by_name.values(), key=lambda m: m.name):
        for ref in model.refs:
            if ref not in by_name and ref not in source_names:
                raise SqlModelError(
                    f"{model.path}: ref({ref!r}) names neither a model nor a known source; "
                    f"known names: {known}"
                )

    # Kahn's algorithm with a heap so the order is the same on every run.
    model_deps = {name: {r for r in model.refs if r in by_name} for name, model in by_name.items()}
    dependents: dict[str, list[str]] = {name: [] for name in by_name}
    for name, deps in model_deps.items():
        for dep in deps:
            dependents[dep].append(name)
    waiting = {name: len(deps) for name, deps in model_deps.items()}
    ready = [name for name, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[SqlModel] = []
    while ready:
        name = heapq.heappop(ready)
        order.append(by_name[name])
        for dependent in dependents[name]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, dependent)
    if len(order) < len(by_name):
        remaining = {name: by_name[name] for name in by_name if waiting[name] > 0}
        cycle = _find_cycle(remaining)
        chain = " -> ".join(by_name[name].path.name for name in cycle)
        files = ", ".join(str(by_name[name].path) for name in cycle[:-1])
        raise SqlModelError(f"dependency cycle among SQL models: {chain} (files: {files})")
    return order


def quote_identifier(name: str) -> str:
    """DuckDB double-quoted identifier (embedded quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def main_schema_relation(name: str) -> str:
    """The relation for a model or source in the warehouse: ``"main"."<name>"``."""
    return f"{quote_identifier('main')}.{quote_identifier(name)}"


def render_sql(model: SqlModel, relation: Callable[[str], str]) -> str:
    """The model's SQL with each ref replaced by ``relation(name)`` and config removed.

    Line numbers are preserved (a removed multi-line config leaves its newlines), so a
    database error's line refers to the same line of the file.
    """
    pieces: list[str] = []
    position = 0
    for tag in _scan_tags(model.sql, model.path):
        pieces.append(model.sql[position : tag.start])
        if tag.kind == "ref":
            pieces.append(relation(tag.value))
        else:
            pieces.append("\n" * model.sql.count("\n", tag.start, tag.end))
        position = tag.end
    pieces.append(model.sql[position:])
    return "".join(pieces)


def _select_body(con: duckdb.DuckDBPyConnection, model: SqlModel, sql: str) -> str:
    """Check the rendered SQL is one SELECT statement and return it without a trailing ';'."""
    statements = con.extract_statements(sql)
    if len(statements) != 1:
        raise SqlModelError(
            f"{model.path}: a model must hold exactly one SELECT statement, "
            f"found {len(statements)} statements"
        )
    if statements[0].type != duckdb.StatementType.SELECT:
        raise SqlModelError(
            f"{model.path}: a model must be a SELECT (or WITH ... SELECT) query, "
            f"found a {statements[0].type.name} statement"
        )
    body = sql.rstrip()
    while body.endswith(";"):
        body = body[:-1].rstrip()
    return body


def _existing_type(con: duckdb.DuckDBPyConnection, schema: str, name: str) -> str | None:
    """'BASE TABLE', 'VIEW' or None for ``schema.name`` in the connection's default catalog."""
    row = con.execute(
        "SELECT table_type FROM information_schema.tables "
        "WHERE table_catalog = current_database() AND lower(table_schema) = lower(?) "
        "AND lower(table_name) = lower(?)",
        [schema, name],
    ).fetchone()
    return None if row is None else str(row[0])


def build_model(
    con: duckdb.DuckDBPyConnection,
    model: SqlModel,
    relation: Callable[[str], str],
    *,
    schema: str = "main",
) -> None:
    """Create or replace ``model`` as ``schema.<model name>`` in one transaction.

    A view is replaced with CREATE OR REPLACE VIEW. A table is first built under a
    temporary name, then the old table is dropped and the new one renamed into place,
    all before COMMIT; on any error the transaction is rolled back, so the previous good
    table (or view) stays as it was and no half-built table is left behind.
    The connection must not be inside a transaction already. DuckDB errors are re-raised
    as SqlModelError naming the file.
    """
    target = f"{quote_identifier(schema)}.{quote_identifier(model.name)}"
    try:
        body = _select_body(con, model, render_sql(model, relation))
    except duckdb.Error as error:
        raise SqlModelError(
            f"{model.path}: model {model.name!r} does not parse: {error}"
        ) from error

    try:
        con.execute("BEGIN TRANSACTION")
    except duckdb.Error as error:
        raise SqlModelError(
            f"{model.path}: cannot start the transaction to build {model.name!r}: {error}"
        ) from error
    try:
        existing = _existing_type(con, schema, model.name)
        if model.materialized == "view":
            if existing == "BASE TABLE":  # materialization changed from table to view
                con.execute(f"DROP TABLE {target}")
            con.execute(f"CREATE OR REPLACE VIEW {target} AS\n{body}\n")
        else:
            staging_name = model.name + _BUILD_SUFFIX
            staging = f"{quote_identifier(schema)}.{quote_identifier(staging_name)}"
            con.execute(f"DROP TABLE IF EXISTS {staging}")
            con.execute(f"CREATE TABLE {staging} AS\n{body}\n")
            if existing == "VIEW":  # materialization changed from view to table
                con.execute(f"DROP VIEW {target}")
            elif existing == "BASE TABLE":
                con.execute(f"DROP TABLE {target}")
            con.execute(f"ALTER TABLE {staging} RENAME TO {quote_identifier(model.name)}")
        con.execute("COMMIT")
    except duckdb.Error as error:
        # A failed COMMIT may already have ended the transaction.
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise SqlModelError(
            f"{model.path}: building {model.materialized} {model.name!r} failed: {error}"
        ) from error
