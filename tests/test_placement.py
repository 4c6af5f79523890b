"""Placement past one device: device maps reach the boot, pytest-xdist workers take one GPU each,
and interventions, readers and head scores work when layers live on different devices.

The moves are checked under a mocked placement (tests/fake_devices.py: tensors carry ``cuda:K``
labels while their data stays on the CPU, and mixing two labels raises as torch does). What only
a machine with several GPUs can show (accelerate's real split, transfer costs, memory per device)
is listed in docs/targets.md.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fake_devices import FakeDevices
from mechclaims.errors import TargetError
from mechclaims.hooks import FINAL_SCALE, head_z, mlp_out, resid_pre
from mechclaims.interventions import AblateHeads, AblateMLP, SetResidual, forward
from mechclaims.readers import attention_mass
from mechclaims.loading import worker_device

B, POS, D, H, DH, V = 3, 5, 8, 2, 4, 11


# --------------------------------------------------------------------------- the boot


def test_the_device_map_option_reaches_boot_transformers_and_the_report(pytester, as_organism, monkeypatch):
    from transformer_lens.model_bridge import TransformerBridge

    seen, real = [], TransformerBridge.boot_transformers

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(TransformerBridge, "boot_transformers", staticmethod(spy))
    pytester.makepyfile(test_one="""
import pytest
from mechclaims import proportion
from mechclaims.readers import greedy_tokens
import torch

@pytest.mark.claim(id="T.booted")
def test_booted(target, claim):
    greedy_tokens(target.model, torch.tensor([[1, 2, 3]]), last=1)
    claim.record(proportion(9, 10))
""")
    result = pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism",
                                "--mechclaims-device-map", "auto", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()[-2000:]
    assert seen and seen[0]["device_map"] == "auto" and seen[0]["device"] is None
    target = json.loads((pytester.path / "reports" / "latest" / "claims.json").read_text())["run"]["targets"]["organism"]
    assert target["placement"] == {"device_map": "auto"} and target["devices"] == ["cpu"]


def test_an_unknown_device_map_is_refused_naming_the_valid_ones(pytester, as_organism):
    result = pytester.runpytest("--mechclaims-target", "organism", "--mechclaims-device-map", "everywhere")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--mechclaims-device-map: invalid choice: 'everywhere' (choose from *auto*balanced*"])
    from mechclaims import load_target

    with pytest.raises(TargetError, match="unknown device map 'everywhere'; valid device maps: auto, balanced"):
        load_target("organism", device_map="everywhere")


# --------------------------------------------------------------------------- one worker per GPU


@pytest.mark.parametrize("device, worker, n_gpus, expected", [
    ("cuda", "gw0", 2, "cuda:0"),
    ("cuda", "gw1", 2, "cuda:1"),
    ("cuda", None, 2, "cuda"),  # no workers: torch's current device
    ("cuda:3", "gw0", 4, "cuda:3"),  # an explicit GPU stays
    ("cpu", "gw1", 0, "cpu"),
])
def test_worker_k_takes_gpu_k(device, worker, n_gpus, expected):
    assert worker_device(device, worker, n_gpus) == expected


def test_more_workers_than_gpus_is_refused():
    with pytest.raises(TargetError, match=r"worker gw2 would take cuda:2, but torch sees 2 GPU\(s\): run with -n 2 or fewer"):
        worker_device("cuda", "gw2", 2)


def test_a_spread_target_under_workers_is_refused(monkeypatch):
    from mechclaims.session import ClaimSession
    from mechclaims.settings import settings

    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    session = ClaimSession(settings=settings("ci"), root=None, device="cuda", device_map="auto")
    with pytest.raises(TargetError, match="organism is spread over GPUs by a device map, and pytest-xdist worker gw1"):
        session.target("organism")


@pytest.mark.slow
@pytest.mark.parametrize("dist", [[], ["--dist", "loadgroup"]], ids=["default", "loadgroup"])
def test_two_workers_two_targets_each_target_boots_once_on_one_worker(pytester, tiny_llama, monkeypatch, dist):
    """-n 2 (and --dist loadgroup): the plugin groups items by target, so each model loads on one worker."""
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_DIR", str(tiny_llama))
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_CONTROL_DIR", str(tiny_llama))
    pytester.makepyfile(test_many="import pytest, torch\nfrom mechclaims import proportion\n"
                        "from mechclaims.readers import greedy_tokens\n" + "\n".join(f'''
@pytest.mark.claim(id="T.{i}")
def test_{i}(target, claim):
    greedy_tokens(target.model, torch.tensor([[1, 2, {i + 3}]]), last=1)
    claim.record(proportion({i}, 10))
''' for i in range(4)))
    result = pytester.runpytest_subprocess(
        "--mechclaims-exploratory", "--mechclaims-target", "organism", "--mechclaims-target", "organism-control",
        "-n", "2", *dist, "-p", "no:cacheprovider")
    report = json.loads((pytester.path / "reports" / "latest" / "claims.json").read_text())
    run = report["run"]
    assert result.ret == 0 and len(report["claims"]) == 8  # one report, from the controller
    assert run["load_counts"] == {"organism": 1, "organism-control": 1}
    assert run["boots"] == {"organism": 1, "organism-control": 1}
    workers = [run["targets"][t]["workers"] for t in ("organism", "organism-control")]
    assert all(len(w) == 1 for w in workers) and workers[0] != workers[1], workers
    reports = [p for p in (pytester.path / "reports").iterdir() if not p.is_symlink()]
    assert len(reports) == 1


# --------------------------------------------------------------------------- moves under a mocked placement


def test_the_mock_catches_a_hook_that_does_not_move_its_value():
    """Negative control: writing a value from another device into an activation raises."""
    with FakeDevices() as fd:
        resid = fd.place(torch.zeros(B, POS, D), "cuda:1")
        values = fd.place(torch.ones(B, D), "cuda:0")
        with pytest.raises(RuntimeError, match="same device.*cuda:0 and cuda:1"):
            resid[:, -1] = values


def test_interventions_move_their_values_to_the_hooked_layers_device():
    with FakeDevices() as fd:
        means = {1: fd.place(torch.full((H, DH), 2.0), "cuda:0")}
        mlp_means = {1: fd.place(torch.full((D,), 3.0), "cuda:0")}
        ivs = [SetResidual(1, -1, fd.place(torch.ones(B, D), "cuda:0")),
               AblateHeads(((1, 0),), mode="mean", means=means),
               AblateMLP((1,), mlp_means)]
        acts = {resid_pre(1): torch.zeros(B, POS, D), head_z(1): torch.zeros(B, POS, H, DH), mlp_out(1): torch.zeros(B, POS, D)}
        for name, act in acts.items():
            fd.place(act, "cuda:1")
        for iv in ivs:
            for name, hook in iv.hooks():
                assert hook(acts[name], None).device == torch.device("cuda:1")
        assert fd.moves >= 3
    assert (acts[resid_pre(1)][:, -1] == 1).all() and (acts[head_z(1)][:, -1, 0] == 2).all()
    assert (acts[mlp_out(1)][:, 1:] == 3).all() and (acts[mlp_out(1)][:, 0] == 0).all()


class SpreadModel:
    """A stand-in for a bridge whose layer L lives on cuda:L and whose unembedding on cuda:1:
    each hook gets a random activation on its layer's device."""

    def __init__(self, fd: FakeDevices):
        self.fd = fd
        self.cfg = SimpleNamespace(device="cuda:0", n_layers=2, n_heads=H, d_model=D)
        self._hooks: list = []
        g = torch.Generator().manual_seed(0)
        self.blocks = [SimpleNamespace(attn=SimpleNamespace(W_O=fd.place(torch.randn(H, DH, D, generator=g), f"cuda:{layer}")))
                       for layer in range(2)]
        self.W_U = fd.place(torch.randn(D, V, generator=g), "cuda:1")
        norm = fd.place(torch.rand(D, generator=g) + 0.5, "cuda:1")
        self.ln_final = SimpleNamespace(named_parameters=lambda: [("weight", norm)])

    @contextmanager
    def hooks(self, fwd_hooks=()):
        self._hooks = list(fwd_hooks)
        try:
            yield
        finally:
            self._hooks = []

    def __call__(self, tokens, **kwargs):
        assert tokens.device == torch.device("cuda:0")  # inputs go to the embedding's device
        b, n = tokens.shape
        g = torch.Generator().manual_seed(1)
        for name, hook in self._hooks:
            layer = int(name.split(".")[1]) if name.startswith("blocks.") else 1
            shape = {"hook_pattern": (b, H, n, n), "hook_z": (b, n, H, DH)}.get(name.rsplit(".", 1)[-1], (b, n, D))
            act = torch.rand(*shape, generator=g)
            hook(self.fd.place(act.softmax(-1) if "pattern" in name else act, f"cuda:{layer}"), None)
        return self.fd.place(torch.randn(b, n, V, generator=g), "cuda:1")


def test_kept_activations_and_logits_come_back_to_the_inputs_device():
    with FakeDevices() as fd:
        model = SpreadModel(fd)
        tokens = torch.zeros(B, POS, dtype=torch.long, device="cuda:0")
        out = forward(model, tokens, names=[resid_pre(0), resid_pre(1)], logits="all",
                      interventions=[SetResidual(1, -1, torch.ones(B, D, device="cuda:0"))])
        assert {str(t.device) for t in out.acts.values()} == {"cuda:0"} and out.logits.device == torch.device("cuda:0")
        # and a reading over both layers' patterns combines them on one device
        masses = attention_mass(model, tokens, np.eye(POS) / POS)
    assert masses.shape == (B, 2, H) and np.isfinite(masses).all()


def test_head_scores_of_a_spread_model_equal_those_on_one_device():
    from mechclaims_icl.scores import _scores

    g = torch.Generator().manual_seed(2)
    acts = {head_z(0): torch.randn(B, H, DH, generator=g), head_z(1): torch.randn(B, H, DH, generator=g),
            FINAL_SCALE: torch.rand(B, 1, generator=g) + 0.5, resid_pre(1): torch.randn(B, D, generator=g)}
    with FakeDevices() as fd:
        spread = SpreadModel(fd)
        for act in acts.values():
            fd.place(act, "cuda:0")  # as forward() hands them back
        dla, dot = _scores(spread, acts, [1, 2, 3], 1)
    plain = SimpleNamespace(cfg=spread.cfg, blocks=spread.blocks, W_U=spread.W_U, ln_final=spread.ln_final)
    for t in [*acts.values(), spread.W_U, *(b.attn.W_O for b in spread.blocks)]:
        del t._fake_device
    one_dla, one_dot = _scores(plain, acts, [1, 2, 3], 1)
    np.testing.assert_allclose(dla, one_dla, rtol=1e-6)
    np.testing.assert_allclose(dot, one_dot, rtol=1e-6)


@pytest.mark.parametrize("nodeid, expected", [
    ("claims/test_claim1.py::test_onset[organism]", "organism"),
    ("claims/test_claim1.py::test_onset[organism-control]", "organism-control"),  # the longest name wins
    ("t.py::test_x[organism-3]", "organism"),
    ("t.py::test_x[3-organism-control-a]", "organism-control"),
    ("t.py::test_x[organisms]", None),
    ("t.py::test_x", None),
])
def test_the_scheduler_reads_the_target_from_the_node_id(nodeid, expected):
    from mechclaims.scheduling import target_of

    assert target_of(nodeid, ["llama-3-8b", "organism", "organism-control"]) == expected
