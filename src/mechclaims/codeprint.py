"""Code fingerprints: which code computed a cached result.

A disk-cache entry holds numbers some code computed, so its key holds a digest of that
code (:mod:`mechclaims.store`): an edit to it is a miss, an edit elsewhere (a threshold,
a claim's message, the report) is still a hit. Two parts:

* :func:`framework`: the framework modules that take part in every forward pass
  (:data:`FORWARD_MODULES`: the model's set-up and weights, the pass, the interventions,
  the hook names and the store), each compiled whole;
* :func:`fingerprint`: the code reachable from a request's own computation (its
  interventions' classes, a derived computation's function, including those a pack
  defines): the functions and classes it names (globals, attributes of modules it names,
  names it imports), the functions it closes over, the classes of the objects it closes
  over, a class's methods and bases, followed transitively.

A digest is of compiled code (bytecode, constants, names and the values of constants it
names), not of text: comments, blank lines and code moved within a file keep it. The
standard library and the packages whose versions the key holds (:data:`VERSIONED`) are
not followed; their versions stand for their code. The digest of a reachable set does
not depend on the order things were first reached, so every process of a run (and
every later run) computes the same key. Data (tensors, prompts, numbers a computation
closes over) is not code: the request's own key holds it.
"""

from __future__ import annotations

import dis
import functools
import hashlib
import importlib.util
import sys
import time
import types
from typing import Any, Iterable

# Modules whose whole compiled code is in every key: what sets a model up and runs a pass.
FORWARD_MODULES = (
    "mechclaims.targets.spec", "mechclaims.targets.sources", "mechclaims.targets.shape", "mechclaims.targets.bridge",
    "mechclaims.targets.accounting", "mechclaims.loading", "mechclaims.weights", "mechclaims.interventions",
    "mechclaims.passes", "mechclaims.hooks", "mechclaims.store", "mechclaims.memory",
)
# Distribution -> top-level module of the packages whose versions every key holds instead of their code.
VERSIONED = {
    "torch": "torch", "transformers": "transformers", "transformer-lens": "transformer_lens",
    "numpy": "numpy", "scipy": "scipy", "safetensors": "safetensors", "accelerate": "accelerate",
    "gguf": "gguf", "tokenizers": "tokenizers",
}
_NOT_FOLLOWED = frozenset(VERSIONED.values()) | frozenset(sys.stdlib_module_names) | {"builtins"}
_PRIMITIVE = (type(None), bool, int, float, complex, str, bytes)
_CONTAINERS = (list, tuple, set, frozenset, dict)
_ELEMENTS = 64  # elements of a container whose classes are followed (containers are mostly of one kind)

_spent = 0.0  # seconds spent fingerprinting in this process


def spent() -> float:
    """Seconds this process has spent computing fingerprints (the report records it)."""
    return _spent


def _timed(fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        global _spent
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            _spent += time.perf_counter() - start

    return wrapper


def followed(module_name: str | None) -> bool:
    """Whether code of ``module_name`` is fingerprinted (not the standard library or a versioned package)."""
    if not module_name:
        return False
    return module_name.partition(".")[0] not in _NOT_FOLLOWED


@_timed
@functools.lru_cache(maxsize=None)
def framework() -> str:
    """Digest of the compiled :data:`FORWARD_MODULES` (computed once per process)."""
    h = hashlib.sha256()
    for name in FORWARD_MODULES:
        module = sys.modules.get(name) or importlib.import_module(name)
        h.update(f"{name}:{module_digest(module)}\n".encode())
    return h.hexdigest()


def module_digest(module: types.ModuleType) -> str:
    """Digest of a module's compiled source (its bytecode and constants, not its text)."""
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py"):
        return f"module {module.__name__} (no source)"
    with open(path, "rb") as fh:
        source = fh.read()
    return hashlib.sha256(_code(compile(source, path, "exec", dont_inherit=True)).encode()).hexdigest()


@_timed
def fingerprint(*roots: Any) -> str:
    """Digest of the code reachable from ``roots`` (functions, classes, objects; see the module docstring)."""
    units: set[str] = set()
    for root in roots:
        units |= _reach(root)
    return hashlib.sha256("\n".join(sorted(units)).encode()).hexdigest()


def reached(*roots: Any) -> list[str]:
    """The code units :func:`fingerprint` reads for ``roots``, by qualified name (sorted): what an
    edit must touch to change the fingerprint."""
    return sorted({unit.rpartition(" ")[0] for root in roots for unit in _reach(root)})


# ---------------------------------------------------------------------- the walk

# Reachable sets of roots that do not change while a process runs (functions without closures,
# classes, modules' attributes), by id; the objects are kept alive so that an id is never reused.
_memo: dict[int, frozenset[str]] = {}
_alive: list[Any] = []


def _reach(root: Any) -> frozenset[str]:
    """Own digests of every unit reachable from ``root`` (memoised when ``root`` cannot change)."""
    node = _unit(root)
    if node is None:
        return _edges_of_data(root, depth=0)
    if _is_fixed(node) and id(node) in _memo:
        return _memo[id(node)]
    seen: dict[int, Any] = {}
    units: set[str] = set()
    stack = [node]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen[id(obj)] = obj
        if obj is not node and _is_fixed(obj) and id(obj) in _memo:
            units |= _memo[id(obj)]
            continue
        own, edges = _describe(obj)
        units.add(own)
        for edge in edges:
            unit = _unit(edge)
            if unit is None:
                units |= _edges_of_data(edge, depth=1)
            elif id(unit) not in seen:
                stack.append(unit)
    result = frozenset(units)
    if _is_fixed(node):
        _memo[id(node)] = result
        _alive.append(node)
    return result


def _is_fixed(obj: Any) -> bool:
    return isinstance(obj, type) or (isinstance(obj, types.FunctionType) and not obj.__closure__)


def _unit(obj: Any) -> Any:
    """The code unit ``obj`` stands for (a followed function or class), or None."""
    while hasattr(obj, "__wrapped__") and not isinstance(obj, type):  # functools.wraps, lru_cache
        obj = obj.__wrapped__
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    if isinstance(obj, types.MethodType):
        obj = obj.__func__
    if isinstance(obj, functools.partial):
        obj = obj.func
    if isinstance(obj, (types.FunctionType, type)):
        return obj if followed(getattr(obj, "__module__", None)) else None
    return None


def _edges_of_data(value: Any, depth: int) -> frozenset[str]:
    """Code reachable from a data object: its class, and the classes of what it contains."""
    if isinstance(value, _PRIMITIVE) or depth > 2:
        return frozenset()
    if isinstance(value, _CONTAINERS):
        items = list(value.items()) if isinstance(value, dict) else value
        out: set[str] = set()
        for i, item in enumerate(items):
            if i == _ELEMENTS:
                break
            for part in (item if isinstance(value, dict) else (item,)):
                out |= _reach_any(part, depth + 1)
        return frozenset(out)
    cls = type(value)
    return _reach(cls) if _unit(cls) is not None else frozenset()


def _reach_any(value: Any, depth: int) -> frozenset[str]:
    return _reach(value) if _unit(value) is not None else _edges_of_data(value, depth)


def _describe(obj: Any) -> tuple[str, list[Any]]:
    """A unit's own digest (its code, not what it reaches) and the objects it reaches."""
    if isinstance(obj, type):
        return _describe_class(obj)
    return _describe_function(obj)


def _own(label: str, parts: list[str]) -> str:
    """A unit as ``"label digest"``: sorting by it is sorting by name, and the digest is of its code."""
    return f"{label} {hashlib.sha256(chr(10).join(parts).encode()).hexdigest()}"


def _describe_class(cls: type) -> tuple[str, list[Any]]:
    parts = [f"class {cls.__module__}.{cls.__qualname__}"]
    parts += [f"base {b.__module__}.{b.__qualname__}" for b in cls.__bases__]
    edges: list[Any] = [b for b in cls.__bases__ if b is not object]
    for name, value in sorted(cls.__dict__.items()):
        if isinstance(value, property):
            edges += [f for f in (value.fget, value.fset, value.fdel) if f is not None]
            parts.append(f"property {name}")
        elif _unit(value) is not None:
            edges.append(value)
            parts.append(f"member {name}")
        elif isinstance(value, _PRIMITIVE) or _primitive_container(value):
            parts.append(f"attribute {name}={_canonical(value)}")
    return _own(f"{cls.__module__}.{cls.__qualname__}", parts), edges


def _describe_function(fn: types.FunctionType) -> tuple[str, list[Any]]:
    code = fn.__code__
    names, imports = _names(code)
    parts = [f"function {fn.__module__}.{fn.__qualname__}", _code(code)]
    edges: list[Any] = []
    for default in (fn.__defaults__ or ()) + tuple((fn.__kwdefaults__ or {}).values()):
        if isinstance(default, _PRIMITIVE) or _primitive_container(default):
            parts.append(f"default {_canonical(default)}")
        else:
            edges.append(default)
    scope = fn.__globals__
    for name in sorted(names):
        if name not in scope:
            continue
        value = scope[name]
        if isinstance(value, types.ModuleType):
            edges += _module_attributes(value, names)
        elif isinstance(value, _PRIMITIVE) or _primitive_container(value):
            parts.append(f"global {name}={_canonical(value)}")
        else:
            edges.append(value)
    for module_name, level in sorted(imports):
        module = _imported(module_name, level, scope.get("__package__"))
        if module is not None:
            edges += _module_attributes(module, names)
    for cell in fn.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell (a name assigned later)
            continue
        edges += _module_attributes(value, names) if isinstance(value, types.ModuleType) else [value]
    return _own(f"{fn.__module__}.{fn.__qualname__}", parts), [e for e in edges if e is not None]


def _module_attributes(module: types.ModuleType, names: Iterable[str], depth: int = 0) -> list[Any]:
    """The attributes of a followed module that a function may use (those among its names), through
    one level of submodules (``from . import memory`` then ``memory.release``)."""
    if not followed(module.__name__):
        return []
    members = vars(module)
    out: list[Any] = []
    for name in sorted(names):
        value = members.get(name)
        if isinstance(value, types.ModuleType):
            if depth == 0:
                out += _module_attributes(value, names, depth + 1)
        elif name in members:
            out.append(value)
    return out


def _imported(name: str, level: int, package: str | None) -> types.ModuleType | None:
    try:
        absolute = importlib.util.resolve_name("." * level + name, package) if level else name
    except (ImportError, ValueError):
        return None
    return sys.modules.get(absolute)


@functools.lru_cache(maxsize=None)
def _names(code: types.CodeType) -> tuple[frozenset[str], frozenset[tuple[str, int]]]:
    """Every name a code object and its nested code use, and the modules it imports (name, level)."""
    names: set[str] = set()
    imports: set[tuple[str, int]] = set()
    for co in _nested(code):
        names.update(co.co_names)
        consts: list[Any] = []
        for ins in dis.get_instructions(co):
            if ins.opname == "LOAD_CONST":
                consts.append(ins.argval)
            elif ins.opname == "IMPORT_NAME":
                level = consts[-2] if len(consts) >= 2 and isinstance(consts[-2], int) else 0
                imports.add((ins.argval, level))
    return frozenset(names), frozenset(imports)


def _nested(code: types.CodeType) -> list[types.CodeType]:
    out = [code]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            out += _nested(const)
    return out


@functools.lru_cache(maxsize=None)
def _code(code: types.CodeType) -> str:
    """A canonical text of a code object: what it does, not where it sits (no file, no line numbers)."""
    parts = [
        code.co_name, str(code.co_argcount), str(code.co_posonlyargcount), str(code.co_kwonlyargcount),
        str(code.co_flags), code.co_code.hex(), ",".join(code.co_names), ",".join(code.co_varnames),
        getattr(code, "co_exceptiontable", b"").hex(),
    ]
    for const in code.co_consts:
        parts.append(f"<{_code(const)}>" if isinstance(const, types.CodeType) else _canonical(const))
    return "|".join(parts)


def _primitive_container(value: Any) -> bool:
    if isinstance(value, dict):
        return len(value) <= _ELEMENTS and all(
            isinstance(k, _PRIMITIVE) and (isinstance(v, _PRIMITIVE) or _primitive_container(v)) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return len(value) <= _ELEMENTS and all(isinstance(v, _PRIMITIVE) or _primitive_container(v) for v in value)
    return False


def _canonical(value: Any) -> str:
    """A text of a constant that is the same in every process (sets sorted, no addresses)."""
    if isinstance(value, (set, frozenset)):
        return "{" + ",".join(sorted(_canonical(v) for v in value)) + "}"
    if isinstance(value, dict):
        return "{" + ",".join(sorted(f"{_canonical(k)}:{_canonical(v)}" for k, v in value.items())) + "}"
    if isinstance(value, (list, tuple)):
        return type(value).__name__ + "(" + ",".join(_canonical(v) for v in value) + ")"
    if isinstance(value, types.CodeType):
        return _code(value)
    if isinstance(value, _PRIMITIVE):
        return repr(value)
    return type(value).__qualname__
