"""The sections this pack owns in an expectations file, and the task they name.

``[task]`` is the affine task the Claim 1-3 tests run on (default y = 2x + 3), ``[c1]``,
``[c2]`` and ``[c3]`` the values discovery pre-registers for each claim.  The core refuses
any key not declared here (the ``mechclaims.packs`` entry point hands it ``SECTIONS``), and
any value outside its range: a margin so wide that any change is "equivalent", or a
tolerance no onset can miss, would make its claim vacuous.
"""

from __future__ import annotations

from mechclaims import LAYER, LAYERS, RATE, SHARE, ConfigError, Expectations, Key, register_section

from .tasks import CANONICAL, AffineTask

SECTIONS: dict[str, dict[str, Key]] = {
    "task": {"a": Key(int, 1, 999, "the slope of y = a x + b"), "b": Key(int, 0, 999, "the intercept")},
    "c1": {
        "onset": LAYER, "read_layer": LAYER, "stage1": LAYERS, "stage2": LAYERS, "stage3": LAYERS,
        "backup_layers": LAYERS, "threshold": RATE,
        "onset_tolerance": Key(int, 0, 3, "layers; a wider tolerance lets almost any onset pass"),
        "margin": Key(float, 0.01, 0.25, "an equivalence margin in accuracy; a wider one calls any change equivalent"),
        "backup_share": SHARE,
        "min_pairs": Key(int, 1, 20000, "prompt pairs; more would run for days on a CPU"),
        "probe": Key(str, why="the format of prompt B: post, newline or neutral-line (mechclaims_icl.tasks.PROBES)"),
        "probe_variants": Key(list, why="the formats of B C1.onset-robust runs under (mechclaims_icl.tasks.PROBES)"),
    },
    "c2": {
        "n_examples": Key(int, 2, 64, "examples per sequence"), "fit_first": Key(int, 0, 63, "an example index"),
        "fit_last": Key(int, 0, 63, "an example index"), "parity_from": Key(int, 0, 63, "an example index"),
        "feature_layer": LAYER, "saturation": RATE, "min_r2": Key(float, 0.5, 1.0, "a fit quality"),
        "parity_threshold": RATE, "c_expected": Key(float, 0.01, 10.0, "a log-odds step"),
        "c_margin": Key(float, 0.01, 1.0, "an equivalence margin in log-odds"),
        "parity_reference": Key(list, why="reference rates"),
        "max_prompts": Key(int, 1, 10000, "prompts; more would run for days on a CPU"),
    },
    "c3": {
        "x_to_y_heads": Key(list, why="[layer, head] pairs"), "n_causal_heads": Key(int, 1, 64, "heads"),
        "mlp_layers": LAYERS, "min_excess": SHARE, "min_drop": SHARE,
    },
}

# Examples before the query in Claim 0's prompts and the Claim 1-3 preconditions: the post's twelve.
N_EXAMPLES = 12


def task(exp: Expectations) -> AffineTask:
    """The task a target's Claim 1-3 tests run on: ``[task] a, b`` (default y = 2x + 3)."""
    a = exp.get("task", "a", int, default=CANONICAL.a)
    b = exp.get("task", "b", int, default=CANONICAL.b)
    if a < 1 or b < 0:
        raise ConfigError(f"{exp.path or exp.target}: [task] a = {a}, b = {b}; expected a >= 1 and b >= 0")
    return AffineTask(a, b)


for _name, _keys in SECTIONS.items():  # also when the pack runs from a source tree, not installed
    register_section(_name, _keys)
