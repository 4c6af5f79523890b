"""Claim 3 findings: hand-built attention patterns with known roles (and their
shuffled versions), the MLP ablation, and the hook reductions on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechclaims_icl.expectations import task as task_of
from mechclaims_icl import claim3
from mechclaims_icl.claim2 import Reading, read_sequences, role_links
from mechclaims.interventions import AblateMLP
from mechclaims_icl.claim3 import C3Params
from mechclaims import role_mass, role_weights, top_heads, uniform_pattern
from mechclaims_icl.fits import role_attention
from mechclaims_icl.roles import Roles

LAYERS, HEADS, K = 4, 16, 10  # 64 heads: one named head can beat random draws at one-sided p < 0.025
X_HEAD, PREY_HEAD = (1, 2), (2, 0)


def layout(k: int = K) -> Roles:
    """The organism's layout: BOS, "\\n", then per line "(", x, ", ", y, ")\\n"."""
    xs, ys, pre = [], [], []
    pos = 2
    for _ in range(k):
        xs.append(range(pos + 1, pos + 2))
        pre.append(pos + 2)
        ys.append(range(pos + 3, pos + 4))
        pos += 5
    return Roles(tuple(range(pos + 3)), tuple(xs), tuple(ys), tuple(pre), range(pos + 1, pos + 2), pos + 2)


def patterns(n_seq: int, *, shuffle: bool = False, seed: int = 0) -> np.ndarray:
    """``[n_seq, layers, heads, T, T]``: causal-uniform everywhere except two heads with known roles.

    X_HEAD puts 0.8 of each y_i's attention on its own x_i; PREY_HEAD puts 0.9 of the
    attention before y_j on the earlier y tokens.  ``shuffle`` permutes each query's
    attention over its causal window (the roles are lost, the totals kept).
    """
    r = layout()
    t = len(r.tokens)
    rng = np.random.default_rng(seed)
    out = np.broadcast_to(uniform_pattern(t), (n_seq, LAYERS, HEADS, t, t)).copy()
    for s in range(n_seq):
        jitter = rng.uniform(0.7, 0.9)
        for x, y in zip(r.x, r.y):
            q = y[0]
            row = np.full(q + 1, (1 - jitter) / q)
            row[list(x)] = jitter
            out[s, X_HEAD[0], X_HEAD[1], q, : q + 1] = row / row.sum()
        for j in range(1, K):
            q = r.pre_y[j]
            earlier = [p for y in r.y[:j] for p in y]
            share = 0.9 + 0.05 * (jitter - 0.8)  # 0.895 to 0.905: a spread, as real attention has
            row = np.full(q + 1, (1 - share) / (q + 1 - len(earlier)))
            row[earlier] = share / len(earlier)
            out[s, PREY_HEAD[0], PREY_HEAD[1], q, : q + 1] = row
        if shuffle:
            for q in range(t):
                perm = rng.permutation(q + 1)
                out[s, :, :, q, : q + 1] = out[s, :, :, q, : q + 1][..., perm]
    return out


def reading_of(pats: np.ndarray) -> Reading:
    r = layout()
    t = len(r.tokens)
    links = role_links(r)
    w = [role_weights(links[0], t), role_weights(links[1], t)]
    base = uniform_pattern(t)
    n = pats.shape[0]
    flags = np.ones((n, K), dtype=bool)
    return Reading(
        np.full((n, K), 0.5), flags, flags,
        x_to_y=role_mass(pats, w[0]), y_to_prey=role_mass(pats, w[1]),
        uniform_x_to_y=np.full(n, float((base * w[0]).sum())), uniform_y_to_prey=np.full(n, float((base * w[1]).sum())),
    )


PARAMS = C3Params(x_to_y_heads=(X_HEAD,), n_causal_heads=1, mlp_layers=(1,))


def test_hand_built_roles_are_scored_as_built():
    reading = reading_of(patterns(60))
    assert reading.x_to_y.shape == (60, LAYERS, HEADS)
    assert 0.7 <= reading.x_to_y[:, X_HEAD[0], X_HEAD[1]].min() and reading.x_to_y[:, X_HEAD[0], X_HEAD[1]].max() <= 0.9
    assert np.allclose(reading.y_to_prey[:, PREY_HEAD[0], PREY_HEAD[1]], 0.9, atol=0.006)
    assert top_heads(reading.x_to_y.mean(0), 1) == [X_HEAD] and top_heads(reading.y_to_prey.mean(0), 1) == [PREY_HEAD]
    x = claim3.x_to_y(reading, PARAMS)
    assert x.supported, x.message
    prey = claim3.y_to_prey(reading, [PREY_HEAD], np.zeros((LAYERS, HEADS)), PARAMS)
    assert prey.supported, prey.message
    assert prey.figures["heatmaps"] and x.figures["bars"]


def test_a_shuffled_pattern_is_not():
    reading = reading_of(patterns(60, shuffle=True))
    assert not claim3.x_to_y(reading, PARAMS).supported
    assert not claim3.y_to_prey(reading, [PREY_HEAD], np.zeros((LAYERS, HEADS)), PARAMS).supported


def test_the_wrong_heads_are_not():
    reading = reading_of(patterns(60))
    wrong = C3Params(x_to_y_heads=((0, 0), (3, 3)), n_causal_heads=2, mlp_layers=(1,))
    assert not claim3.x_to_y(reading, wrong).supported  # uniform heads: no excess
    assert not claim3.y_to_prey(reading, [X_HEAD], np.zeros((LAYERS, HEADS)), PARAMS).supported


def test_the_random_heads_baseline_catches_heads_that_all_heads_match():
    """Every head attends to x_i as much as the named one: above uniform, but not above random heads."""
    pats = patterns(60)
    pats[:, :, :] = pats[:, X_HEAD[0], X_HEAD[1]][:, None, None]
    result = role_attention(reading_of(pats).x_to_y, reading_of(pats).uniform_x_to_y, [X_HEAD])
    assert result.excess.ci.low > 0.5 and result.random_p > 0.05
    assert not result.above_baselines(0.1)


def test_uniform_attention_has_exactly_the_uniform_mass():
    r = layout()
    t = len(r.tokens)
    w = role_weights(role_links(r)[0], t)
    assert role_mass(uniform_pattern(t), w) == pytest.approx(np.mean([1 / (y[0] + 1) for y in r.y]))
    with pytest.raises(ValueError):
        role_weights([(3, [4])], t)  # a key after its query


def test_mlp_drop_known_answers():
    rng = np.random.default_rng(0)
    clean = np.ones(100, dtype=bool)
    broken = rng.random(100) < 0.2
    intact = rng.random(100) < 0.95
    assert claim3.mlp_needed(clean, broken, PARAMS).supported
    assert not claim3.mlp_needed(clean, intact, PARAMS).supported
    assert not claim3.mlp_needed(clean, clean, PARAMS).supported


# --------------------------------------------------------------------------- on a model


def test_attention_masses_from_the_hook_equal_the_full_pattern(tiny_model):
    from mechclaims.interventions import capture
    from mechclaims_icl.roles import roles
    from mechclaims_icl.tasks import CANONICAL, make_prompts

    prompts = make_prompts(CANONICAL, n_prompts=5, n_examples=6, seed=1)
    got = read_sequences(tiny_model, prompts, attention=True, examples=[])
    n_layers = tiny_model.cfg.n_layers
    for i, prompt in enumerate(prompts.prompts):
        r = roles(tiny_model.tokenizer, prompt)
        names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]
        _, acts = capture(tiny_model, torch.tensor([r.tokens]), names, position=None)
        links = role_links(r)
        for layer, name in enumerate(names):
            pat = acts[name][0].float().numpy()
            assert np.allclose(got.x_to_y[i, layer], role_mass(pat, role_weights(links[0], len(r.tokens))), atol=1e-5)
            assert np.allclose(got.y_to_prey[i, layer], role_mass(pat, role_weights(links[1], len(r.tokens))), atol=1e-5)
    assert tiny_model.list_hooks() == {}


def test_mlp_mean_ablation_changes_the_answer_positions_but_not_bos(tiny_model):
    from mechclaims.interventions import run_with
    from mechclaims_icl.tasks import CANONICAL, make_prompts
    from mechclaims_icl.answers import encode

    prompts = make_prompts(CANONICAL, n_prompts=4, n_examples=4, seed=2)
    found = claim3.explore(tiny_model, prompts, dla_example=2)
    assert found.dla.shape == (tiny_model.cfg.n_layers, tiny_model.cfg.n_heads)
    assert set(found.mlp_means) == set(range(tiny_model.cfg.n_layers))
    tokens = torch.tensor([encode(tiny_model.tokenizer, prompts.prompts[0].text)])
    clean = run_with(tiny_model, tokens)
    ablated = run_with(tiny_model, tokens, [AblateMLP((0, 1), found.mlp_means)])
    assert torch.allclose(clean[:, 0], ablated[:, 0])  # BOS kept
    assert not torch.allclose(clean[:, 1:], ablated[:, 1:])
    assert tiny_model.list_hooks() == {}
    with pytest.raises(Exception, match="means"):
        AblateMLP((0, 5), found.mlp_means)


def test_head_attribution_at_an_example_equals_the_claim1_score(tiny_model):
    from mechclaims_icl.scores import head_scores
    from mechclaims_icl.tasks import CANONICAL, Prompt, make_prompts

    prompts = make_prompts(CANONICAL, n_prompts=4, n_examples=5, seed=3)
    j = 3
    found = claim3.explore(tiny_model, prompts, dla_example=j)
    cut = [Prompt(p.examples[:j], p.examples[j][0], p.examples[j][1]) for p in prompts.prompts]
    want = head_scores(tiny_model, [p.text for p in cut], [p.answer for p in cut], read_layer=1)
    assert np.allclose(found.dla, want.dla.mean(0), atol=1e-5)


def test_c3_params_read_back_and_are_range_checked(tmp_path):
    from mechclaims.errors import ConfigError
    from mechclaims.expectations import load

    path = tmp_path / "organism.toml"
    path.write_text("[c3]\nx_to_y_heads = [[1, 2]]\nn_causal_heads = 2\nmlp_layers = [0, 1]\n")
    p = claim3.params_from(load(path, "organism"), 2, 4)
    assert p.x_to_y_heads == ((1, 2),) and p.mlp_layers == (0, 1) and p.min_drop == 0.3
    path.write_text("[c3]\nx_to_y_heads = [[1, 9]]\nn_causal_heads = 2\nmlp_layers = [0]\n")
    with pytest.raises(ConfigError, match="out of range"):
        claim3.params_from(load(path, "organism"), 2, 4)


def test_discovery_preregisters_claims_2_and_3(as_organism, tmp_path):
    from mechclaims import load_target
    from mechclaims_icl import claim2
    from mechclaims_icl.discover import discover_sequences, write
    from mechclaims.expectations import load
    from mechclaims_icl.tasks import AffineTask

    loaded = load_target("organism")
    tiny_model = loaded.model
    found = discover_sequences(tiny_model, AffineTask(1, 0), n_prompts=10, seed=0, example=4, n_examples=8, log=lambda m: None)
    found = {**found, "c1": {}}
    path = tmp_path / "organism.toml"
    write(path, loaded, found, "python -m mechclaims_icl.discover --target organism")
    exp = load(path, "organism")
    assert task_of(exp) == AffineTask(1, 0)
    c2p = claim2.params_from(exp, tiny_model.cfg.n_layers)
    c3p = claim3.params_from(exp, tiny_model.cfg.n_layers, tiny_model.cfg.n_heads)
    assert c2p.n_examples == 8 and c2p.max_prompts == 10 and c3p.n_causal_heads == 2
    assert set(exp.verdicts) == {
        "C2.log-additive", "C2.parity-by-n", "C2.feature-linear", "C3.x-to-y", "C3.y-to-prey", "C3.mlp",
    }


def test_control_layers_lie_outside_the_band_and_skip_the_first_mlp():
    assert claim3.control_layers((1, 2, 3, 4, 5), 8) == (6, 7)
    assert claim3.control_layers(range(8, 20), 30) == (6, 7, *range(20, 30))
    assert claim3.control_layers((2,), 4) == (3,)
    assert claim3.control_layers((1, 2, 3), 4) == ()


def test_the_mlp_control_is_reported_not_decisive():
    rng = np.random.default_rng(0)
    clean = np.ones(100, dtype=bool)
    broken = rng.random(100) < 0.2
    f = claim3.mlp_needed(clean, broken, PARAMS, control=broken, control_layers=(3,))
    assert f.supported and f.figures["control_drop"].statistic > 0.5
    assert len(f.figures["bars"]["C3.mlp: accuracy with and without the MLPs"]["labels"]) == 3
