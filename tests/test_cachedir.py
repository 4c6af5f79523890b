"""The disk cache as a whole (mechclaims.cachedir, `mechclaims cache`): seen, pruned least
recently used first, capped by configuration, and a prune never costs a run anything but time."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

from mechclaims import cachedir
from mechclaims.cli import main
from mechclaims.errors import ConfigError
from mechclaims.interventions import AblateHeads, forward, resid_pre
from mechclaims.store import ActivationStore, attach

TOKENS = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 10]])


def _fill(model, directory, label, n, start=0):
    """``n`` entries of target ``label`` (one per ablated head), through a writing store."""
    store = ActivationStore(model_key=label, mode="disk", directory=directory, version="v", label=label)
    attach(model, store)
    try:
        return [forward(model, TOKENS, names=[resid_pre(1)], interventions=[AblateHeads(((0, h),))]).acts[resid_pre(1)]
                for h in range(start, start + n)]
    finally:
        attach(model, None)


def _age(paths, seconds_ago):
    for i, path in enumerate(paths):
        stamp = 1_000_000 + seconds_ago + i
        os.utime(path, (stamp, stamp))


def test_info_counts_entries_per_target_with_their_oldest_and_newest(tiny_model, tmp_path):
    _fill(tiny_model, tmp_path, "alpha", 3)
    _fill(tiny_model, tmp_path, "beta", 1)
    (tmp_path / "notes.txt").write_text("not an entry")  # other files are neither listed nor removed
    inv = cachedir.inventory(tmp_path)
    assert inv.entries == 4 and set(inv.targets) == {"alpha", "beta"}
    assert inv.targets["alpha"].entries == 3 and inv.targets["alpha"].oldest <= inv.targets["alpha"].newest
    assert inv.size == sum(p.stat().st_size for p in tmp_path.glob("*/*.safetensors"))
    assert cachedir.inventory(tmp_path / "missing").entries == 0


def test_prune_removes_the_least_recently_used_down_to_a_size_and_never_follows_links(tiny_model, tmp_path):
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    _fill(tiny_model, cache, "m", 4)
    outside.mkdir()
    (outside / ("0" * 64 + ".safetensors")).write_bytes(b"x" * 10)
    (cache / "ab").mkdir(exist_ok=True)
    # a planted link named like a shard directory the entries did not take (their names come from
    # digests that change with the code): not listed, not followed, not removed
    free = next(name for name in (f"{i:02x}" for i in range(256)) if not (cache / name).exists())
    os.symlink(outside, cache / free)
    paths = sorted(e.path for e in cachedir.entries(cache))
    _age(paths, 0)  # paths[0] least recently used ... paths[3] most
    size = paths[0].stat().st_size
    result = cachedir.prune(cache, max_size=2 * size + size // 2)
    assert result.removed == 2 and [p.exists() for p in paths] == [False, False, True, True]
    assert result.size <= 2 * size + size // 2 and (outside / ("0" * 64 + ".safetensors")).exists()


def test_prune_by_age_keeps_what_was_used_recently(tiny_model, tmp_path):
    _fill(tiny_model, tmp_path, "m", 3)
    paths = sorted(e.path for e in cachedir.entries(tmp_path))
    now = 2_000_000.0
    os.utime(paths[0], (now - 10 * 86400,) * 2)
    os.utime(paths[1], (now - 3600,) * 2)
    result = cachedir.prune(tmp_path, older_than=cachedir.parse_age("7d"), now=now)
    assert result.removed == 1 and not paths[0].exists() and paths[1].exists() and paths[2].exists()


def test_a_hit_marks_an_entry_used_so_a_prune_keeps_it(tiny_model, tmp_path):
    _fill(tiny_model, tmp_path, "m", 2)
    paths = sorted(e.path for e in cachedir.entries(tmp_path))
    _age(paths, 0)
    _fill(tiny_model, tmp_path, "m", 1)  # reads the entry of head 0 again: a hit touches it
    used = max(cachedir.entries(tmp_path), key=lambda e: e.last_used)
    assert used.last_used > 2_000_000
    cachedir.prune(tmp_path, max_size=used.size)
    assert [e.path for e in cachedir.entries(tmp_path)] == [used.path]


def test_a_prune_during_a_run_costs_a_recomputation_and_no_warning(tiny_model, tmp_path):
    warm = _fill(tiny_model, tmp_path, "m", 3)
    store = ActivationStore(model_key="m", mode="disk", directory=tmp_path, version="v", label="m")
    attach(tiny_model, store)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            first = forward(tiny_model, TOKENS, names=[resid_pre(1)], interventions=[AblateHeads(((0, 0),))])
            cachedir.clear(tmp_path)  # another process prunes everything mid-run
            rest = [forward(tiny_model, TOKENS, names=[resid_pre(1)], interventions=[AblateHeads(((0, h),))])
                    for h in (1, 2)]
    finally:
        attach(tiny_model, None)
    assert store.stats.disk_hits == 1 and store.stats.computed == 2 and store.stats.corrupt_entries == 0
    got = [first.acts[resid_pre(1)]] + [r.acts[resid_pre(1)] for r in rest]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, warm))
    assert cachedir.inventory(tmp_path).entries == 2  # the recomputed entries were written back


def test_the_cache_command_shows_prunes_and_clears(tiny_model, tmp_path, capsys):
    _fill(tiny_model, tmp_path, "organism", 4)
    assert main(["cache", "info", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"activation cache: {tmp_path}" in out and "4 entries" in out and "organism: 4 entries" in out
    size = cachedir.inventory(tmp_path).size
    assert main(["cache", "prune", "--dir", str(tmp_path), "--max-size", str(size // 2)]) == 0
    assert cachedir.inventory(tmp_path).size <= size // 2
    assert "removed 2 entries" in capsys.readouterr().out
    assert main(["cache", "prune", "--dir", str(tmp_path)]) == 2
    assert "needs --older-than AGE or --max-size SIZE" in capsys.readouterr().err
    assert main(["cache", "prune", "--dir", str(tmp_path), "--max-size", "2 parsecs"]) == 2
    assert "'2 parsecs' is not a size" in capsys.readouterr().err
    assert main(["cache", "clear", "--dir", str(tmp_path)]) == 0
    assert cachedir.inventory(tmp_path).entries == 0


@pytest.mark.parametrize("text, size", [(1000, 1000), ("500MB", 500 * 10**6), ("2 GiB", 2 * 2**30), ("1.5kib", 1536)])
def test_sizes(text, size):
    assert cachedir.parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "-1", "2 parsecs", True, 1.5, "GiB"])
def test_a_bad_size_names_itself_and_the_valid_units(bad):
    with pytest.raises(ConfigError, match="is not a size; write bytes or a number with a unit"):
        cachedir.parse_size(bad)


CLAIM = '''
import pytest
from mechclaims import AblateHeads, forward, resid_pre, proportion_of
import torch


@pytest.mark.claim(id="K.fill")
def test_fill(target, claim):
    tokens = torch.tensor([[1, 5, 6, 7]])
    for h in range(4):
        forward(target.model, tokens, names=[resid_pre(1)], interventions=[AblateHeads(((0, h),))])
    claim.record(proportion_of(torch.ones(20).numpy() > 0), threshold=0.5)
'''


@pytest.mark.slow
def test_a_run_enforces_the_configured_cap_at_its_end(pytester, as_organism, tmp_path):
    cache = tmp_path / "cache"
    pytester.makepyfile(test_fill=CLAIM)
    pytester.makefile(".toml", pyproject='[tool.pytest.ini_options]\n[tool.mechclaims]\ncache-max-size = "1 KiB"\n')
    # options as --name=value: pytest takes a separate argument naming an existing directory into its rootdir
    args = ("--mechclaims-exploratory", "--mechclaims-target=organism", "--mechclaims-cache=disk",
            f"--mechclaims-cache-dir={cache}", f"--mechclaims-report-dir={tmp_path / 'r'}", "-p", "no:cacheprovider")
    result = pytester.runpytest_subprocess(*args)
    result.stdout.fnmatch_lines(["*activation cache: removed * least recently used entries*cache-max-size (1024 bytes)*"])
    record = json.loads((tmp_path / "r" / "latest" / "claims.json").read_text())
    pruned = record["run"]["activation_cache"]["pruned"]
    assert pruned["removed"] >= 4 and pruned["size"] <= 1024 and record["run"]["activation_cache"]["max_size"] == 1024
    assert sum(e.size for e in cachedir.entries(cache) if e.target != cachedir.PLOTS) <= 1024
    pytester.makefile(".toml", pyproject='[tool.pytest.ini_options]\n[tool.mechclaims]\ncache-max-size = "big"\n')
    result = pytester.runpytest_subprocess(*args)
    result.stderr.fnmatch_lines(["*pyproject.toml: [[]tool.mechclaims[]] cache-max-size: 'big' is not a size*"])
