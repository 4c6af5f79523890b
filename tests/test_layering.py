"""The core knows no task: no module of ``src/mechclaims`` imports a claim pack.

Packs import the core, never the other way. The walk reads every import statement
(top-level and inside functions) with ``ast``, so a lazy import is caught too.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "src" / "mechclaims"
# Everything importable from this tree that is not the core: the post's pack, the organism
# tooling and the example packs.
PACKS = ("mechclaims_icl", "organisms", "examples", "claims")


def imports_of(path: Path, core: Path = CORE) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``; relative imports resolved against ``core``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(core.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if node.module is None:  # from . import a, b: the modules a and b
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return found


def pack_imports(core: Path = CORE, repo: Path = ROOT) -> list[str]:
    return [
        f"{path.relative_to(repo)}:{line}: imports {module}"
        for path in sorted(core.rglob("*.py"))
        for line, module in imports_of(path, core)
        if module.split(".")[0] in PACKS
    ]


def test_no_core_module_imports_a_pack():
    offenders = pack_imports()
    assert not offenders, "the core must not import a claim pack:\n" + "\n".join(offenders)


def test_the_walk_finds_a_pack_import_where_there_is_one(tmp_path):
    """Negative control: a planted lazy import of the post's pack is reported."""
    core = tmp_path / "src" / "mechclaims"
    core.mkdir(parents=True)
    (core / "fine.py").write_text("from .stats import proportion\nimport numpy\n")
    (core / "leaky.py").write_text("def f():\n    from mechclaims_icl.tasks import CANONICAL\n")
    assert pack_imports(core, tmp_path) == ["src/mechclaims/leaky.py:2: imports mechclaims_icl.tasks"]


@pytest.mark.parametrize("source, expected", [
    ("from . import plots", "mechclaims.report.plots"),
    ("from .. import memory", "mechclaims.memory"),
    ("from ..results import SUPPORTED", "mechclaims.results"),
    ("import mechclaims_icl.claim1", "mechclaims_icl.claim1"),
])
def test_relative_imports_resolve_inside_the_core(tmp_path, source, expected):
    sub = tmp_path / "src" / "mechclaims" / "report"
    sub.mkdir(parents=True)
    (sub / "x.py").write_text(source + "\n")
    assert [m for _, m in imports_of(sub / "x.py", tmp_path / "src" / "mechclaims")] == [expected]


# What only the post's pack may name: its models, its claim ids and its outcome classes.
POST_WORDS = re.compile(r"llama-3|Meta-Llama|smollm|organism|\bC[0-3]\.[a-z]|\bapprox\b|^copy$", re.IGNORECASE)


def post_names(core: Path = CORE, repo: Path = ROOT) -> list[str]:
    """Every string constant of the core's code (docstrings and comments aside) that names the post."""
    found = []
    for path in sorted(core.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and POST_WORDS.search(node.value)):
                found.append((str(path.relative_to(repo)), node.lineno, node.value[:80]))
    return [f"{file}:{line}: {text!r}" for file, line, text in sorted(found)]


def test_the_core_names_none_of_the_posts_models_claims_or_classes():
    offenders = post_names()
    assert not offenders, "the core names the post (move it to the pack):\n" + "\n".join(offenders)


def test_the_name_walk_finds_a_planted_name(tmp_path):
    """Negative control: a model name, a claim id and an outcome class in code are found; the same
    words in a docstring or a comment are not."""
    core = tmp_path / "src" / "mechclaims"
    core.mkdir(parents=True)
    (core / "x.py").write_text('"""Runs on llama-3-8b."""\n# C1.onset\nA = "organism"\nB = {"approx": 1}\n'
                               'C = "see C2.log-additive"\n')
    assert [line.split(": ", 1)[0] for line in post_names(core, tmp_path)] == [
        "src/mechclaims/x.py:3", "src/mechclaims/x.py:4", "src/mechclaims/x.py:5"]


def internal_imports(paths) -> dict[str, set[str]]:
    """module -> names, of every import of a ``mechclaims.*`` submodule in ``paths``, and of every
    name taken from ``mechclaims`` that its ``__all__`` does not export (a submodule, under ``mechclaims``)."""
    import mechclaims

    found: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(Path(path).read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "mechclaims":
                hidden = {alias.name for alias in node.names} - set(mechclaims.__all__)
                if hidden:
                    found.setdefault("mechclaims", set()).update(hidden)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("mechclaims."):
                found.setdefault(node.module, set()).update(alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("mechclaims."):
                        found.setdefault(alias.name, set()).add("*")
    return found


def test_the_example_pack_imports_only_the_public_package():
    assert internal_imports(sorted((ROOT / "examples").rglob("*.py"))) == {}


def test_the_posts_pack_imports_only_the_public_package():
    """The post's pack, its claim tests included, is written on the public API alone: what it needed
    and the API lacked (a pass runner, store keys, batching, split seeds, pre-registration files)
    became public."""
    files = sorted([*(ROOT / "src" / "mechclaims_icl").rglob("*.py"), *(ROOT / "claims").rglob("*.py")])
    assert internal_imports(files) == {}, "the post's pack imports internals the public API should carry"


def test_the_internal_import_walk_finds_a_planted_one(tmp_path):
    """Negative control: an internal import, top level or lazy, is found; a public one is not."""
    (tmp_path / "p.py").write_text("from mechclaims import proportion\ndef f():\n"
                                   "    from mechclaims.store import derived\n    import mechclaims.targets\n"
                                   "    from mechclaims import memory, run_pass\n")
    assert internal_imports([tmp_path / "p.py"]) == {
        "mechclaims.store": {"derived"}, "mechclaims.targets": {"*"}, "mechclaims": {"memory"}}


def test_every_package_of_the_source_tree_is_installed():
    """pyproject.toml lists its packages by name: a new subpackage left off the list would be missing
    from every wheel (an editable install hides it)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT / "src").parts) for init in (ROOT / "src").rglob("__init__.py")
             if "egg-info" not in str(init)}
    assert found <= listed, f"packages missing from [tool.setuptools] packages: {sorted(found - listed)}"


def import_graph(core: Path = CORE) -> dict[str, set[str]]:
    """module -> the core modules it imports (top level or lazily; a package as its ``__init__``). The
    public facade ``mechclaims`` is left out: it resolves every export lazily, by name, for users."""
    modules = {".".join(["mechclaims", *p.relative_to(core).with_suffix("").parts]).removesuffix(".__init__"): p
               for p in core.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for _, module in imports_of(path, core):
            while module and module not in modules:  # `from .x import name`: the module x, not x.name
                module = module.rpartition(".")[0]
            if module and module not in (name, "mechclaims"):  # the public facade resolves names lazily
                edges.add(module)
        graph[name] = edges
    return graph


def cycles_through(graph: dict[str, set[str]], start: str) -> list[list[str]]:
    """Import paths that lead from ``start`` back to it."""
    found, stack = [], [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                found.append(path + [start])
            elif nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return found


def test_the_core_imports_in_no_cycle():
    """The registry reads specs and sources from mechclaims.targets, loading reads the registry, and
    nothing in the core leads back to a module it came from (lazy imports count)."""
    graph = import_graph()
    assert {module: cycles_through(graph, module)[0] for module in graph if cycles_through(graph, module)} == {}


def test_the_cycle_walk_finds_a_planted_cycle(tmp_path):
    core = tmp_path / "src" / "mechclaims"
    core.mkdir(parents=True)
    (core / "a.py").write_text("from .b import x\n")
    (core / "b.py").write_text("def f():\n    from . import a\n")
    (core / "c.py").write_text("from .a import y\n")
    graph = import_graph(core)
    assert cycles_through(graph, "mechclaims.a") == [["mechclaims.a", "mechclaims.b", "mechclaims.a"]]
    assert cycles_through(graph, "mechclaims.c") == []
