"""Cache keys: hash(stage, config, upstream keys, source of the library code a stage runs).

Unlike Prefect's default cache policy (task source + inputs + run id), a key here changes when
*any* .py file of the named packages changes (a helper deep inside ``karel/`` included), and
never depends on the run id, the process, or PYTHONHASHSEED: it is sha256 over canonical JSON.
A dotted name (``model.train``) stands for that module and every module it imports, directly or
through others, from its own package or from a pinned library (found statically, from the
source): training is not re-keyed by an edit to ``model/metrics.py``, which it never imports.

A package this process has imported is hashed once, from the source as first read: the process
runs the code it loaded, so editing a file while a long run goes must not file that run's
results under the edited code's keys (``pin_sources`` at import of ``tasks.stage``).

What is hashed is the code, not its text: each file's syntax tree without docstrings (comments
and layout are not in the tree), so editing a comment or a docstring does not re-train a model.
A file that does not parse is hashed as raw bytes.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import hashlib
import importlib.util
import json
import math
import os
import sys
import threading
from pathlib import Path, PurePath
from typing import Any, Iterable, Mapping

KEY_FORMAT_VERSION = 2  # 2: code hashed as syntax trees without docstrings


def package_files(package: str) -> list[tuple[str, Path]]:
    """``(relative posix path, absolute path)`` of every .py file of a package, sorted.

    Finds the package without importing it (top-level names only import nothing).
    A plain module (``foo.py``) yields that one file.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError) as e:
        raise ValueError(f"cannot hash package {package!r}: {e}") from e
    if spec is None:
        raise ValueError(f"cannot hash package {package!r}: not importable from sys.path")
    locations = list(spec.submodule_search_locations or [])
    if not locations:
        if not spec.origin or not spec.origin.endswith(".py"):
            raise ValueError(f"cannot hash package {package!r}: no Python source ({spec.origin})")
        p = Path(spec.origin)
        return [(p.name, p)]
    out: dict[str, Path] = {}
    for loc in locations:  # several for namespace packages
        base = Path(loc)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames
                                 if d != "__pycache__" and not d.startswith("."))
            for name in filenames:
                if name.endswith(".py"):
                    p = Path(dirpath) / name
                    out.setdefault(p.relative_to(base).as_posix(), p)
    return sorted(out.items())


_PINNED: dict[str, list[tuple[str, bytes]]] = {}


def _sources(package: str) -> list[tuple[str, bytes]]:
    """``(relative path, bytes)`` of a package's .py files; kept once the package is imported."""
    if package in _PINNED:
        return _PINNED[package]
    files = [(rel, path.read_bytes()) for rel, path in package_files(package)]
    if package in sys.modules:
        _PINNED[package] = files
    return files


def pin_sources(*packages: str) -> None:
    """Import ``packages`` and fix their source for this process's cache keys."""
    for package in packages:
        importlib.import_module(package)
        _sources(package)


def _module_file(module: str, files: dict[str, bytes]) -> str | None:
    """Relative path of ``module`` among its top-level package's ``files`` (None: not a module)."""
    base = module.partition(".")[2].replace(".", "/")
    for rel in ((f"{base}/__init__.py" if base else "__init__.py"), f"{base}.py"):
        if rel in files:
            return rel
    return None


# CPython 3.11's ast.parse is not safe from several threads at once ("AST constructor recursion
# depth mismatch"), and Prefect runs stage tasks, which compute keys, on threads: parse under a
# lock, once per module source.
_PARSE_LOCK = threading.Lock()
_IMPORTS: dict[tuple[str, bool, bytes], frozenset[str]] = {}


def _imported(source: bytes, module: str, is_package: bool) -> frozenset[str]:
    """Every module name an import statement of ``source`` may load (anywhere in the file)."""
    key = (module, is_package, hashlib.sha256(source).digest())
    with _PARSE_LOCK:
        if key not in _IMPORTS:
            _IMPORTS[key] = frozenset(_parse_imports(source, module, is_package))
        return _IMPORTS[key]


def _parse_imports(source: bytes, module: str, is_package: bool) -> set[str]:
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):  # ``import a.b`` binds ``a``: its __init__ counts too
            for a in node.names:
                parts = a.name.split(".")
                out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            out.add(target)  # with ``from . import x`` too: x may be a name its __init__ defines
            out.update(f"{target}.{a.name}" for a in node.names)  # names that are submodules
    return out


_CODE: dict[bytes, bytes] = {}


def code_text(source: bytes) -> bytes:
    """What ``code_hash`` hashes of one file: ``ast.dump`` of its tree with the docstrings of the
    module, classes and functions removed (no positions), so comments, docstrings, blank lines
    and line breaks inside brackets do not count; anything else that changes the tree does.
    Source that does not parse is returned as is."""
    digest = hashlib.sha256(source).digest()
    with _PARSE_LOCK:
        if digest not in _CODE:
            try:
                tree = ast.parse(source)
            except SyntaxError:
                _CODE[digest] = source
            else:
                _CODE[digest] = ast.dump(_strip_docstrings(tree)).encode()
        return _CODE[digest]


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:]
    return tree


def _module_source(name: str, files: dict[str, dict[str, bytes]]) -> tuple[str, str, bytes] | None:
    """``(top-level package, relative path, source)`` of module ``name``, None if there is none;
    ``files`` keeps each package's sources once read."""
    top = name.partition(".")[0]
    if top not in files:
        files[top] = dict(_sources(top))
    rel = _module_file(name, files[top])
    return None if rel is None else (top, rel, files[top][rel])


def _closure_sources(module: str, follow: Iterable[str]) -> list[tuple[str, str, bytes]]:
    """``(top-level package, relative path, source)`` of ``module_closure``, sorted."""
    tops = {module.partition(".")[0], *follow}
    files: dict[str, dict[str, bytes]] = {}

    def source_of(name: str):
        return _module_source(name, files) if name.partition(".")[0] in tops else None

    if source_of(module) is None:
        raise ValueError(f"cannot hash module {module!r}: no such module")
    seen: dict[tuple[str, str], bytes] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        found = source_of(name)
        if found is None or found[:2] in seen:
            continue
        top, rel, source = found
        seen[(top, rel)] = source
        todo.extend(_imported(source, name, rel.endswith("__init__.py")))
    return [(top, rel, source) for (top, rel), source in sorted(seen.items())]


def module_closure(module: str, follow: Iterable[str] = ()) -> list[tuple[str, str]]:
    """``(top-level package, relative path)`` of ``module`` and of every module it imports,
    transitively, from its own top-level package or from ``follow``, sorted.

    A package import (``import karel``) follows that package's ``__init__``; the ``__init__`` of
    the modules' own parents is not followed (importing ``model.train`` runs ``model/__init__``,
    but what it re-exports is not code training calls).
    """
    return [(top, rel) for top, rel, _ in _closure_sources(module, follow)]


def code_hash(*names: str) -> str:
    """sha256 (hex) over the source of ``names``: a package name covers all its .py files (by
    sorted relative path), a dotted module name its ``module_closure`` (following imports into
    the pinned libraries too).

    Order and duplicates of ``names`` do not matter. Each file counts by ``code_text``: an edit
    to a comment or docstring leaves the hash alone, any edit to the code changes it.
    """
    if not names:
        raise ValueError("code_hash needs at least one package name")
    h = hashlib.sha256(f"semprobe-code-v{KEY_FORMAT_VERSION}\0".encode())
    names = sorted(set(names))
    for pkg in (n for n in names if "." not in n):
        files = _sources(pkg)
        h.update(f"pkg\0{pkg}\0{len(files)}\0".encode())
        for rel, data in files:
            _hash_file(h, rel, data)
    for module in (n for n in names if "." in n):
        files = _closure_sources(module, follow=_PINNED)
        h.update(f"module\0{module}\0{len(files)}\0".encode())
        for top, rel, data in files:
            _hash_file(h, f"{top}/{rel}", data)
    return h.hexdigest()


def _hash_file(h, name: str, source: bytes) -> None:
    code = code_text(source)
    h.update(f"file\0{name}\0{len(code)}\0".encode())
    h.update(code)


def to_jsonable(obj: Any) -> Any:
    """Canonical JSON-ready form: dataclasses as dicts, tuples/lists as lists, sets sorted,
    Paths as strings, enums by value, numpy scalars/arrays via ``tolist``. Dict keys must be
    strings. NaN/inf are rejected (their JSON is not canonical)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"cache key config: dict keys must be str, got {k!r}")
            out[k] = to_jsonable(v)
        return out
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"cache key config: non-finite float {obj!r}")
        return obj
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        items = [to_jsonable(v) for v in obj]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(obj, PurePath):
        return obj.as_posix()
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy scalar / array
        return to_jsonable(obj.tolist())
    raise TypeError(f"cache key config: cannot hash value of type {type(obj).__name__}: {obj!r}")


def canonical_json(obj: Any) -> str:
    return json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False)


def own_code_hash(module: str) -> str:
    """sha256 (hex) of one module's own file by ``code_text``, without what it imports: a task
    module's wiring (what it asks of the libraries) without the plumbing every task shares."""
    found = _module_source(module, {})
    if found is None:
        raise ValueError(f"cannot hash module {module!r}: no such module")
    h = hashlib.sha256(f"semprobe-own-v{KEY_FORMAT_VERSION}\0{module}\0".encode())
    _hash_file(h, found[1], found[2])
    return h.hexdigest()


def cache_key(stage: str, config: Any, upstream: Iterable[str] | Mapping[str, str] = (),
              packages: Iterable[str] = (), length: int = 16, own: str | tuple[str, ...] | None = None) -> str:
    """Short hex key of sha256 over canonical JSON of {stage, config, upstream, code}.

    ``config``: a dataclass instance or a dict (nested dataclasses/tuples fine).
    ``upstream``: the upstream stages' keys, in the order given (or a name -> key dict).
    ``packages``: library packages whose source the stage runs, e.g. ``["karel", "model"]``.
    ``own``: the task module that runs the stage, or a tuple of it and the task modules whose
    helpers it calls; each one's own file's code (``own_code_hash``) counts.
    """
    if not isinstance(stage, str) or not stage:
        raise ValueError("cache_key: stage must be a non-empty string")
    if isinstance(upstream, str):
        raise TypeError("cache_key: upstream must be a list of keys, not a string")
    if not (4 <= length <= 64):
        raise ValueError("cache_key: length must be between 4 and 64 hex characters")
    pkgs = sorted(set(packages))
    payload = {
        "v": KEY_FORMAT_VERSION,
        "stage": stage,
        "config": to_jsonable(config),
        "upstream": to_jsonable(dict(upstream) if isinstance(upstream, Mapping) else list(upstream)),
        "packages": pkgs,
        "code": code_hash(*pkgs) if pkgs else None,
    }
    if isinstance(own, str):
        payload["own"] = [own, own_code_hash(own)]
    elif own is not None:
        payload["own"] = [[m, own_code_hash(m)] for m in own]
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:length]
