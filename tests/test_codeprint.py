"""Code fingerprints (mechclaims.codeprint): an edit to the code that computes a cache entry
changes its key, an edit elsewhere does not, and every process computes the same key."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import torch

from mechclaims import codeprint
from mechclaims.interventions import AblateHeads
from mechclaims.store import ActivationStore

PACK = '''
import numpy as np

SCALE = 2.0


class Reader:
    """A pack's own helper class."""

    def read(self, x):
        return x * SCALE


def helper(x):
    return np.asarray(x) + 1


def compute(x):
    # the derived computation a pack memoises
    return {"y": helper(x)}


def make_closure(reader, x):
    def run():
        return {"y": reader.read(x)}
    return run


def ping(n):
    return pong(n - 1) if n else 0


def pong(n):
    return ping(n - 1) if n else 1
'''


def _load(tmp_path: Path, source: str, name: str = "packmod"):
    """A fresh module from ``source`` under one module name, imported anew each time (like a later
    process importing edited code)."""
    directory = tmp_path / uuid.uuid4().hex
    directory.mkdir()
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _digest(tmp_path, source, closure=False):
    """The fingerprint of the pack's ``compute`` (or of a closure over a Reader), and what it reached."""
    module = _load(tmp_path, source)
    fn = module.make_closure(module.Reader(), 3) if closure else module.compute
    return codeprint.fingerprint(fn), [label.split(".", 1)[1] for label in codeprint.reached(fn)]


def test_an_edit_to_the_computation_or_what_it_calls_changes_the_fingerprint(tmp_path):
    base, labels = _digest(tmp_path, PACK)
    assert labels == ["compute", "helper"]  # numpy is versioned, not followed; Reader is not reached
    edited_body, _ = _digest(tmp_path, PACK.replace("np.asarray(x) + 1", "np.asarray(x) + 2"))
    assert edited_body != base
    edited_callee_only, _ = _digest(tmp_path, PACK.replace("return {\"y\": helper(x)}", "return {\"y\": helper(x + 0)}"))
    assert edited_callee_only != base


def test_a_comment_a_blank_line_or_an_unrelated_edit_keeps_the_fingerprint(tmp_path):
    base, _ = _digest(tmp_path, PACK)
    moved = "\n\n# a new comment\n\n" + PACK.replace("# the derived computation a pack memoises", "# reworded")
    assert _digest(tmp_path, moved)[0] == base
    unrelated = PACK.replace("return x * SCALE", "return x * SCALE * 1")  # Reader is not reached from compute
    assert _digest(tmp_path, unrelated)[0] == base


def test_a_constant_it_names_is_part_of_the_fingerprint(tmp_path):
    base, labels = _digest(tmp_path, PACK, closure=True)
    assert {"Reader", "Reader.read", "make_closure.<locals>.run"} <= set(labels)  # the class of an object it closes over
    assert _digest(tmp_path, PACK.replace("SCALE = 2.0", "SCALE = 3.0"), closure=True)[0] != base
    assert _digest(tmp_path, PACK.replace("return x * SCALE", "return x / SCALE"), closure=True)[0] != base


def test_mutual_recursion_gives_one_digest_whatever_is_reached_first(tmp_path):
    path = tmp_path / "rec.py"
    path.write_text(PACK)
    script = textwrap.dedent(f'''
        import importlib.util, sys
        from mechclaims import codeprint
        spec = importlib.util.spec_from_file_location("rec", {str(path)!r})
        m = importlib.util.module_from_spec(spec); sys.modules["rec"] = m; spec.loader.exec_module(m)
        first = sys.argv[1]
        codeprint.fingerprint(getattr(m, first))
        print(codeprint.fingerprint(m.ping), codeprint.fingerprint(m.pong))
    ''')
    outs = {first: subprocess.run([sys.executable, "-c", script, first], capture_output=True, text=True,
                                  check=True).stdout.split() for first in ("ping", "pong")}
    assert outs["ping"] == outs["pong"]
    assert outs["ping"][0] == outs["ping"][1]  # each reaches the other: one set of code


def test_the_framework_and_an_intervention_class_are_the_same_in_a_fresh_process():
    script = ("from mechclaims import codeprint; from mechclaims.interventions import AblateHeads; "
              "print(codeprint.framework(), codeprint.fingerprint(AblateHeads))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    AblateHeads(((0, 0),)).hooks()  # running the code (Python specialises bytecode as it runs) changes nothing
    assert out == [codeprint.framework(), codeprint.fingerprint(AblateHeads)]


def test_a_packs_derived_computation_reaches_its_helpers():
    from mechclaims_icl import scores

    acts = {name: torch.zeros(1) for name in ("a",)}
    closure = lambda: dict(zip(("dla", "dot"), scores._scores(None, acts, [1], 0)))  # noqa: E731
    reached = codeprint.reached(closure)
    assert "mechclaims_icl.scores._scores" in reached
    assert not [name for name in reached if name.startswith(("torch", "numpy"))]
    assert "mechclaims.interventions.AblateHeads._hook" in codeprint.reached(AblateHeads)


def test_the_disk_cache_misses_for_edited_code_and_hits_for_the_same_code(tmp_path):
    cache = tmp_path / "cache"

    def store():
        return ActivationStore(model_key="m", mode="disk", directory=cache, version="v")

    first = _load(tmp_path, PACK)
    calls = []

    def counted(module):
        def compute():
            calls.append(module.__name__)
            return module.compute(np.arange(3.0))
        return compute

    y = store().derived("pack", "k", 3, counted(first))["y"]
    again = _load(tmp_path, PACK)  # the same code, imported anew: a hit
    assert np.array_equal(store().derived("pack", "k", 3, counted(again))["y"], y) and len(calls) == 1
    edited = _load(tmp_path, PACK.replace("np.asarray(x) + 1", "np.asarray(x) + 2"))
    got = store().derived("pack", "k", 3, counted(edited))["y"]
    assert len(calls) == 2 and np.array_equal(got, y + 1)  # computed by the edited code, not served


def _runs_a_pass(path) -> bool:
    """Whether a module calls a model or installs hooks on one (``model(...)``, ``model.hooks(...)``)."""
    import ast

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "model":
                return True
            if isinstance(func, ast.Attribute) and func.attr == "hooks" and isinstance(func.value, ast.Name) \
                    and func.value.id == "model":
                return True
    return False


def test_every_core_module_that_runs_a_pass_is_in_every_cache_key():
    """An edit to code that runs a forward pass must change every key, or a stale entry is served: each
    core module that calls the model is one of FORWARD_MODULES, by its own name (a package's digest is
    its ``__init__``'s alone). The finiteness check runs one pass to reject a model, never to compute
    an entry."""
    from pathlib import Path

    core = Path(codeprint.__file__).parent
    running = {".".join(["mechclaims", *p.relative_to(core).with_suffix("").parts]).removesuffix(".__init__")
               for p in core.rglob("*.py") if _runs_a_pass(p)}
    assert running - set(codeprint.FORWARD_MODULES) == {"mechclaims.finite"}


def test_the_pass_walk_finds_a_model_call(tmp_path):
    """Negative control: a module that calls the model, or its hooks, is found; a mention is not."""
    for text, found in (("def f(model, t):\n    return model(t)\n", True),
                        ("def f(model):\n    with model.hooks(fwd_hooks=[]):\n        pass\n", True),
                        ("def registered_model(loaded):\n    return loaded\n", False)):
        (tmp_path / "m.py").write_text(text)
        assert _runs_a_pass(tmp_path / "m.py") is found
