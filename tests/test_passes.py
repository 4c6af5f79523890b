"""The one pass runner (mechclaims.run_pass), on a tiny random Llama: it stops after the hooks a
reading needs, names any hook that never fired, and always removes its hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechclaims import ConfigError, HookNeverFired, attention_mass, attn_pattern, encode, forward, resid_pre, run_pass


@pytest.fixture
def model(tiny_model):
    return tiny_model


@pytest.fixture
def tokens(model):
    return torch.tensor([encode(model.tokenizer, "\n(3, 9)\n(4, ")])


def _blocks_run(model):
    ran: list[int] = []
    handles = [block.register_forward_hook(lambda *a, i=i: ran.append(i)) for i, block in enumerate(model.blocks)]
    return ran, handles


def test_the_pass_ends_after_its_last_stop_hook(model, tokens):
    seen = []
    ran, handles = _blocks_run(model)
    try:
        out = run_pass(model, tokens, [(resid_pre(1), lambda act, hook: seen.append(act.shape) or act)],
                       stop_after=[resid_pre(0), resid_pre(1)])
    finally:
        for handle in handles:
            handle.remove()
    assert out is None and ran == [0] and len(seen) == 1  # block 1 never ran: resid_pre(1) is its input
    assert model.list_hooks() == {}


def test_without_a_stop_the_pass_runs_to_the_logits(model, tokens):
    out = run_pass(model, tokens, require=[resid_pre(0)], logits_to_keep=1)
    assert out.shape == (1, 1, model.cfg.d_vocab)
    assert torch.equal(out[:, -1], forward(model, tokens, logits="last").logits)


@pytest.mark.parametrize("where", ["stop_after", "require"])
def test_a_hook_point_the_model_lacks_is_refused_by_name(model, tokens, where):
    absent = resid_pre(model.cfg.n_layers + 3)
    with pytest.raises(ConfigError, match=rf"{absent}.*n_layers = {model.cfg.n_layers}"):
        run_pass(model, tokens, **{where: [resid_pre(0), absent]})
    assert model.list_hooks() == {}


def test_a_needed_hook_the_pass_never_reached_is_named(model, tokens):
    """Negative control of the runner: a reading that would be left half-filled fails instead."""
    with pytest.raises(HookNeverFired, match=rf"hooks never fired: \['{resid_pre(1)}'\]"):
        run_pass(model, tokens, stop_after=[resid_pre(0)], require=[resid_pre(1)])
    assert model.list_hooks() == {}


def test_a_reading_of_a_layer_the_model_lacks_fails_rather_than_reading_nan(model, tokens, monkeypatch):
    """attention_mass once ended its pass through a private exception and could leave a layer NaN."""
    weights = np.ones((tokens.shape[1], tokens.shape[1]), dtype=np.float32)
    assert np.isfinite(attention_mass(model, tokens, weights, layers=[0, 1])[:, [0, 1]]).all()
    import mechclaims.readers as readers

    monkeypatch.setattr(readers, "attn_pattern", lambda layer: attn_pattern(layer + 100))
    with pytest.raises(ConfigError, match=attn_pattern(100)):
        attention_mass(model, tokens, weights, layers=[0, 1])
