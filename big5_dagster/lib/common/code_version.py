"""Code versions from what a function really uses: the one helper behind every asset's code
version and every answer-cache key.

``code_reach(*entries)`` walks from each entry (a function or class):

- the entry's own source, and the same for every function, class or method defined in the
  package outside ``lib/`` that it names (a defs helper is hashed on its own, not its module);
- every ``lib`` module it reaches, as a whole module, and transitively the package modules
  those import (``from big5_dagster.lib.training import sft`` reaches ``sft`` and what ``sft``
  imports, never its sibling ``dpo``). Names are resolved in the entry's globals and closure,
  so a reference like ``sft.train_sft`` reaches exactly the submodule;
- for a module that sets ``CODE_VERSION_BY_NAME = True`` (``lib.prompts``), only the top-level
  definitions a caller names, and those they name in turn;
- the package data files those modules read: the literal names in their calls to
  ``lib.common.package_data`` (``load_yaml("corpora", "trait_markers.yaml")``);
- the attribute chains read from watched names (``config.alpha``,
  ``settings.model.dtype``), so the caller can add the values of the settings the entry reads.

``CodeReach.version(settings)`` hashes all of it, with those settings values. Source text is
hashed as written (a comment edit in a reached module is a new version: cheap to rerun, never
wrong). Pure Python: ast, inspect and importlib only.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import sys
import textwrap
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from big5_dagster.lib.common.hashing import hash_bytes, hash_json
from big5_dagster.lib.common.package_data import DATA_PACKAGE, READERS, data_files

PACKAGE = "big5_dagster"
LIB = "big5_dagster.lib"
PACKAGE_DATA_MODULE = "big5_dagster.lib.common.package_data"
BY_NAME_FLAG = "CODE_VERSION_BY_NAME"
ALL_FIELDS = "*"
"""The chain element recorded when a watched name is used whole (passed on, dumped)."""


class CodeVersionError(ValueError):
    """The code cannot be versioned as written (e.g. a data read without a literal folder)."""


@dataclass(frozen=True)
class CodeReach:
    """What a set of entries reaches: hashed units of code, data files, watched reads."""

    units: Mapping[str, str]
    """'module:<name>', 'name:<module>.<name>' or 'object:<module>.<qualname>' -> content hash."""
    data_files: Mapping[str, str]
    """Data file ('corpora/trait_markers.yaml') -> content hash."""
    reads: frozenset[tuple[str, ...]] = frozenset()
    """Attribute chains read from the watched names, e.g. ('config', 'alpha')."""

    @property
    def modules(self) -> list[str]:
        return sorted(label.split(":", 1)[1] for label in self.units if label.startswith("module:"))

    def version(self, settings: Mapping[str, Any] | None = None) -> str:
        """One hash of the code, the data files and ``settings`` (JSON values)."""
        return hash_json(
            {
                "units": dict(sorted(self.units.items())),
                "data": dict(sorted(self.data_files.items())),
                "settings": settings or {},
            }
        )


def code_reach(*entries: Any, watch: Sequence[str] = (), exclude: Sequence[str] = ()) -> CodeReach:
    """Everything ``entries`` reach (see the module docstring).

    ``watch``: names (parameters or closure variables) whose attribute reads are recorded.
    ``exclude``: module names (or prefixes ending in '.') whose objects are not followed:
    infrastructure that records or stores results without deciding what they are.
    """
    walk = _Walk(tuple(watch), tuple(exclude))
    for entry in entries:
        walk.follow(entry)
    walk.run()
    return CodeReach(dict(walk.units), dict(walk.data), frozenset(walk.reads))


def clear_caches() -> None:
    """Forget the parsed sources and data hashes (they are read once a process; a test that
    edits a source or data file calls this)."""
    for cached in (
        _module_source,
        _module_tree,
        _module_hash,
        _name_hash,
        _module_scan,
        _by_name,
        _top_level,
        _module_imports,
        _module_data_aliases,
        _module_data_reads,
        _data_hashes,
    ):
        cached.cache_clear()


# --------------------------------------------------------------------------- the walk


@dataclass
class _Walk:
    watch: tuple[str, ...]
    exclude: tuple[str, ...]
    units: dict[str, str] = field(default_factory=dict)
    data: dict[str, str] = field(default_factory=dict)
    reads: set[tuple[str, ...]] = field(default_factory=set)
    todo: list[tuple[str, Any]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    # -- what to follow

    def excluded(self, module: str) -> bool:
        return any(module == e or module.startswith(e.rstrip(".") + ".") for e in self.exclude)

    def follow(self, obj: Any) -> None:
        """Queue an object reached by name: a module, function, class or method."""
        if isinstance(obj, types.ModuleType):
            self.follow_module(obj.__name__)
            return
        obj = inspect.unwrap(obj) if callable(obj) else obj
        if isinstance(obj, types.MethodType):
            obj = obj.__func__
        module = getattr(obj, "__module__", None)
        if not isinstance(module, str) or not _in_package(module) or self.excluded(module):
            return
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            return
        if module.startswith(LIB + ".") and not _is_main(module):
            top = obj.__qualname__.split(".")[0]
            if _by_name(module):
                self.follow_name(module, top)
            else:
                self.follow_module(module)
            return
        label = f"object:{module}.{obj.__qualname__}"
        if label not in self.seen:
            self.seen.add(label)
            self.todo.append(("object", obj))

    def follow_module(self, module: str, names: Iterable[str] | None = None) -> None:
        if not _in_package(module) or self.excluded(module) or module == PACKAGE:
            return
        if _by_name(module):
            for name in names if names is not None else _top_level(module):
                self.follow_name(module, name)
            return
        label = f"module:{module}"
        if label not in self.seen:
            self.seen.add(label)
            self.todo.append(("module", module))

    def follow_name(self, module: str, name: str) -> None:
        label = f"name:{module}.{name}"
        if label not in self.seen:
            self.seen.add(label)
            self.todo.append(("name", (module, name)))

    # -- processing

    def run(self) -> None:
        while self.todo:
            kind, item = self.todo.pop()
            if kind == "module":
                self.module_unit(item)
            elif kind == "name":
                self.name_unit(*item)
            else:
                self.object_unit(item)

    def module_unit(self, module: str) -> None:
        self.units[f"module:{module}"] = _module_hash(module)
        for target, names in _module_imports(module):
            self.follow_module(target, names)
        if module != PACKAGE_DATA_MODULE:
            self.add_data_reads(_module_data_reads(module))

    def name_unit(self, module: str, name: str) -> None:
        node = _top_level(module).get(name)
        if node is None:  # an imported name: follow it where it comes from
            for target, names in _module_imports(module):
                if names is not None and name in names:
                    self.follow_module(target, [name])
            return
        self.units[f"name:{module}.{name}"] = _name_hash(module, name)
        own = _top_level(module)
        imported = {n: t for t, ns in _module_imports(module) for n in ns or ()}
        for ref in {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}:
            if ref in own and ref != name:
                self.follow_name(module, ref)
            elif ref in imported:
                self.follow_module(imported[ref], [ref])
        self.add_data_reads(_data_reads(node, module, _module_data_aliases(module)))

    def object_unit(self, obj: Any) -> None:
        source, node = _object_source(obj)
        label = f"object:{obj.__module__}.{obj.__qualname__}"
        self.units[label] = hash_bytes(source.encode())
        namespace = _namespace(obj)
        module_tree = _module_tree(obj.__module__)
        for target, names in _imports(node, obj.__module__):  # imports inside the function
            self.follow_module(target, names)
        visitor = _References(self.watch)
        visitor.visit(node)
        for chain in visitor.chains:
            self.resolve(chain, namespace, module_tree, obj.__module__)
        for chain in visitor.watched:
            self.reads.add(chain)
        for name, uses in visitor.whole.items():
            passed = visitor.calls.get(name, [])
            if len(passed) < uses or not self._package_functions(passed, namespace):
                self.reads.add((name, ALL_FIELDS))
        self.add_data_reads(_data_reads(node, obj.__module__, _module_data_aliases(obj.__module__)))

    def _package_functions(
        self, targets: Sequence[tuple[str, ...]], namespace: Mapping[str, Any]
    ) -> bool:
        """Whether every call a watched name is passed to goes to a package function outside
        lib that the walk visits too (its own reads are recorded, so the name is not read
        whole here)."""
        for chain in targets:
            obj = _resolve(chain, namespace)
            module = getattr(obj, "__module__", "") or ""
            if not (callable(obj) and _in_package(module) and not module.startswith(LIB + ".")):
                return False
        return True

    def resolve(
        self, chain: tuple[str, ...], namespace: Mapping[str, Any], tree: ast.Module, module: str
    ) -> None:
        """Follow what a name chain (``sft.train_sft``, ``PERSONAS``) refers to."""
        head = chain[0]
        if head not in namespace:
            return
        obj = namespace[head]
        depth = 1
        while isinstance(obj, types.ModuleType) and depth < len(chain):
            nxt = getattr(obj, chain[depth], None)
            if nxt is None:
                break
            if (
                isinstance(obj, types.ModuleType)
                and _by_name(obj.__name__)
                and not isinstance(nxt, types.ModuleType)
            ):
                self.follow_name(obj.__name__, chain[depth])
                return
            obj = nxt
            depth += 1
        if isinstance(obj, types.ModuleType) or inspect.isfunction(obj) or inspect.isclass(obj):
            self.follow(obj)
            return
        if isinstance(obj, types.MethodType):
            self.follow(obj.__func__)
            return
        # A value (a constant, a tuple of personas): follow where the module imported it from,
        # or hash its definition when the module defines it (a defs constant such as a cap).
        for target, names in _module_imports(module):
            if names is not None and head in names:
                self.follow_module(target, [head])
                return
        if depth == 1 and head in _top_level(module) and not self.excluded(module):
            self.follow_name(module, head)

    def add_data_reads(self, reads: Iterable[tuple[str, bool]]) -> None:
        for name, whole_folder in reads:
            self.data.update(_data_hashes(name, whole_folder))


# --------------------------------------------------------------------------- references


class _References(ast.NodeVisitor):
    """Name chains an object's source refers to, and the reads of watched names."""

    def __init__(self, watch: Sequence[str]) -> None:
        self.watch = set(watch)
        self.chains: set[tuple[str, ...]] = set()
        self.watched: set[tuple[str, ...]] = set()
        self.whole: dict[str, int] = {}
        self.calls: dict[str, list[tuple[str, ...]]] = {}

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain = _chain(node)
        if chain is None:
            self.generic_visit(node)
            return
        self.chains.add(chain)
        if chain[0] in self.watch:
            self.watched.add(chain)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.chains.add((node.id,))
            if node.id in self.watch:
                self.whole[node.id] = self.whole.get(node.id, 0) + 1

    def visit_Call(self, node: ast.Call) -> None:
        target = _chain(node.func) if isinstance(node.func, ast.Attribute | ast.Name) else None
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            if isinstance(arg, ast.Name) and arg.id in self.watch and target is not None:
                self.calls.setdefault(arg.id, []).append(target)
        self.generic_visit(node)


def _chain(node: ast.AST) -> tuple[str, ...] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return (node.id, *reversed(parts))


def _resolve(chain: tuple[str, ...], namespace: Mapping[str, Any]) -> Any:
    obj = namespace.get(chain[0])
    for attr in chain[1:]:
        obj = getattr(obj, attr, None)
    return obj


# --------------------------------------------------------------------------- sources


def _data_bytes(name: str) -> bytes:
    return resources.files(DATA_PACKAGE).joinpath(*name.split("/")).read_bytes()


def _in_package(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def _is_main(module: str) -> bool:
    return module == "__main__"


@cache
def _module_source(module: str) -> str:
    # Found, not imported: a module that functions import when they run (one that needs
    # torch) is versioned without importing it.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.has_location or not spec.origin:
        raise CodeVersionError(f"module {module} has no source file")
    return Path(spec.origin).read_text(encoding="utf-8")


@cache
def _module_tree(module: str) -> ast.Module:
    return ast.parse(_module_source(module))


@cache
def _module_hash(module: str) -> str:
    return hash_bytes(_module_source(module).encode())


@cache
def _name_hash(module: str, name: str) -> str:
    """Hash of a top-level definition's source (every walk that names it reuses it)."""
    segment = ast.get_source_segment(_module_source(module), _top_level(module)[name])
    return hash_bytes((segment or "").encode())


@cache
def _by_name(module: str) -> bool:
    """Whether the module sets ``CODE_VERSION_BY_NAME = True`` (read from its source)."""
    if not module.startswith(LIB + "."):
        return False
    return any(
        isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == BY_NAME_FLAG for t in node.targets)
        and isinstance(node.value, ast.Constant)
        and node.value.value is True
        for node in _module_tree(module).body
    )


@cache
def _top_level(module: str) -> dict[str, ast.AST]:
    """Top-level definitions of a module by name (functions, classes, assignments)."""
    found: dict[str, ast.AST] = {}
    for node in _module_tree(module).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            found[node.target.id] = node
    found.pop(BY_NAME_FLAG, None)
    return found


@cache
def _module_imports(module: str) -> tuple[tuple[str, list[str] | None], ...]:
    """A module's package imports, parsed once a process (every asset's walk reaches the
    same modules)."""
    return tuple(_imports(_module_tree(module), module, _module_scan(module)))


@cache
def _module_data_aliases(module: str) -> tuple[set[str], set[str]]:
    return _package_data_aliases(_module_scan(module))


@cache
def _module_data_reads(module: str) -> tuple[tuple[str, bool], ...]:
    return tuple(_data_reads(_module_tree(module), module, _module_data_aliases(module)))


def _data_reads(
    node: ast.AST, module: str, aliases: tuple[set[str], set[str]]
) -> list[tuple[str, bool]]:
    """(data name, whole folder) of each package-data read in ``node``: the literal leading
    arguments of its calls to the package_data readers."""
    functions, modules = aliases
    if not functions and not modules:
        return []
    found = []
    for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
        func = call.func
        if isinstance(func, ast.Name) and func.id in functions:
            reader = func.id
        elif (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id in modules
            and func.attr in READERS
        ):
            reader = func.attr
        else:
            continue
        parts: list[str] = []
        for arg in call.args:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                parts.append(arg.value)
            else:
                break
        if not parts:
            raise CodeVersionError(
                f"{module}, line {call.lineno}: {reader}() must name its data folder as a "
                "literal string, so the code version can include the files it reads"
            )
        found.append(("/".join(parts), len(parts) < len(call.args)))
    return found


@cache
def _data_hashes(name: str, whole_folder: bool) -> dict[str, str]:
    """Content hash of each data file a read names (every file of its folder when the read
    names only the folder)."""
    root = resources.files(DATA_PACKAGE)
    target = root.joinpath(*name.split("/"))
    if whole_folder or target.is_dir():
        folder = name if target.is_dir() else name.rsplit("/", 1)[0]
        return {file: hash_bytes(_data_bytes(file)) for file in data_files(folder)}
    if target.is_file():
        return {name: hash_bytes(_data_bytes(name))}
    raise CodeVersionError(f"package data {name!r} does not exist under {DATA_PACKAGE}")


@dataclass(frozen=True)
class _Scan:
    """What one walk of a tree finds: its import statements (in walk order) and how each
    name is used (as ``name.attr``, or whole)."""

    imports: tuple[ast.Import | ast.ImportFrom, ...]
    attributes: Mapping[str, frozenset[str]]
    """name -> the attributes read from it (``name.attr``)."""
    whole: frozenset[str]
    """Names loaded other than as the base of an attribute (used whole)."""


def _scan(tree: ast.AST) -> _Scan:
    # One walk for every question asked of a tree: a walk per imported alias made the code
    # versions cost seconds at every import of the definitions.
    imports: list[ast.Import | ast.ImportFrom] = []
    attributes: dict[str, set[str]] = {}
    bases: set[int] = set()
    loads: list[ast.Name] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            imports.append(node)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            attributes.setdefault(node.value.id, set()).add(node.attr)
            bases.add(id(node.value))
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            loads.append(node)
    whole = frozenset(n.id for n in loads if id(n) not in bases)
    return _Scan(
        tuple(imports), {name: frozenset(attrs) for name, attrs in attributes.items()}, whole
    )


@cache
def _module_scan(module: str) -> _Scan:
    return _scan(_module_tree(module))


def _imports(
    tree: ast.AST, module: str, scan: _Scan | None = None
) -> list[tuple[str, list[str] | None]]:
    """(module imported, names taken from it or None for the whole module), package only."""
    scan = scan or _scan(tree)
    out: list[tuple[str, list[str] | None]] = []
    package = module.rsplit(".", 1)[0]
    for node in scan.imports:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _in_package(alias.name):
                    out.append((alias.name, None))
        else:
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if not _in_package(base):
                continue
            for alias in node.names:
                if alias.name == "*":
                    out.append((base, None))
                elif _is_module(f"{base}.{alias.name}"):
                    out.append(
                        (f"{base}.{alias.name}", _used_names(scan, alias.asname or alias.name))
                    )
                else:
                    out.append((base, [alias.name]))
    return out


@cache
def _is_module(name: str) -> bool:
    if name in sys.modules:
        return True
    parent = name.rpartition(".")[0]
    try:
        # Only a package has submodules; find_spec(name) would import a plain module parent
        # (``from big5_dagster.lib.engine.candidate_sampler import CandidateSampler``).
        parent_spec = importlib.util.find_spec(parent) if parent else None
        if parent and (parent_spec is None or parent_spec.submodule_search_locations is None):
            return False
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _used_names(scan: _Scan, alias: str) -> list[str] | None:
    """The attributes used from an imported module alias, or None when it is used whole."""
    if alias in scan.whole:
        return None
    return sorted(scan.attributes.get(alias, ()))


def _package_data_aliases(scan: _Scan) -> tuple[set[str], set[str]]:
    """(reader functions imported by name, aliases of the package_data module) in a module."""
    functions: set[str] = set()
    modules: set[str] = set()
    for node in scan.imports:
        if isinstance(node, ast.ImportFrom) and node.module == PACKAGE_DATA_MODULE:
            functions |= {a.asname or a.name for a in node.names if a.name in READERS}
        elif isinstance(node, ast.ImportFrom) and node.module == "big5_dagster.lib.common":
            modules |= {a.asname or a.name for a in node.names if a.name == "package_data"}
        elif isinstance(node, ast.Import):
            modules |= {a.asname for a in node.names if a.name == PACKAGE_DATA_MODULE and a.asname}
    return functions, modules


def _object_source(obj: Any) -> tuple[str, ast.AST]:
    """The source of a function or class without its decorators, and its parsed node."""
    source = textwrap.dedent(inspect.getsource(obj))
    tree = ast.parse(source)
    node = tree.body[0]
    if getattr(node, "decorator_list", None):
        lines = source.splitlines(keepends=True)
        source = "".join(lines[node.lineno - 1 :])
        node = ast.parse(textwrap.dedent(source)).body[0]
    return source, node


def _namespace(obj: Any) -> dict[str, Any]:
    """What the names in an object's source refer to: its module globals and closure."""
    module = sys.modules[obj.__module__]
    namespace = dict(vars(module))
    if inspect.isfunction(obj):
        namespace.update(obj.__globals__)
        if obj.__closure__:
            for name, cell in zip(obj.__code__.co_freevars, obj.__closure__, strict=True):
                try:
                    namespace[name] = cell.cell_contents
                except ValueError:  # an empty cell (assigned later in the enclosing scope)
                    continue
    return namespace
