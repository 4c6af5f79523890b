"""The Claim 1 patch sweep: batched across layers against the naive per-(layer, prompt) loop.

Forward calls are counted by the loader's counter and stored in the benchmark's
extra_info next to the timings.
"""

from __future__ import annotations

import numpy as np
import pytest

from mechclaims import load_target
from mechclaims_icl.patching import patch_sweep, patch_sweep_loop
from mechclaims import split_seed
from mechclaims_icl.tasks import CANONICAL, make_patch_pairs

N_PAIRS = 50


@pytest.fixture(scope="module")
def organism():
    return load_target("organism")


@pytest.fixture(scope="module")
def pairs():
    return make_patch_pairs(CANONICAL, n_pairs=N_PAIRS, n_examples=12, seed=split_seed(0, "confirmation"))


def _measure(benchmark, organism, sweep, pairs):
    before = organism.forwards.calls, organism.forwards.tokens
    result = benchmark.pedantic(sweep, args=(organism.model, pairs), rounds=3, iterations=1)
    rounds = 3
    benchmark.extra_info["forward_calls"] = (organism.forwards.calls - before[0]) // rounds
    benchmark.extra_info["forward_tokens"] = (organism.forwards.tokens - before[1]) // rounds
    benchmark.extra_info["n_pairs"] = len(pairs)
    return result


@pytest.mark.benchmark(group="c1-sweep")
def test_batched_sweep(benchmark, organism, pairs):
    sweep = _measure(benchmark, organism, patch_sweep, pairs)
    assert sweep.answers.shape == (organism.info.n_layers, N_PAIRS)


@pytest.mark.benchmark(group="c1-sweep")
def test_naive_sweep(benchmark, organism, pairs):
    sweep = _measure(benchmark, organism, patch_sweep_loop, pairs)
    assert np.array_equal(sweep.answers, patch_sweep(organism.model, pairs).answers)
