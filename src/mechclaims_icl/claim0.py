"""C0, the precondition of every mechanistic claim: the target learns the task in context."""

from __future__ import annotations

import numpy as np

from mechclaims.results import Finding
from mechclaims.stats import proportion_of

MIN_ACCURACY = 0.8  # lower 95% bound of accuracy with context
MAX_ACCURACY_WITHOUT_CONTEXT = 0.2  # upper 95% bound of accuracy without examples


def in_context(correct_with: np.ndarray, correct_without: np.ndarray, task: str) -> Finding:
    """With examples the target answers correctly; without examples it does not."""
    accuracy = proportion_of(correct_with)
    baseline = proportion_of(correct_without)
    ok = accuracy.ci.low >= MIN_ACCURACY and baseline.ci.high <= MAX_ACCURACY_WITHOUT_CONTEXT
    return Finding(
        accuracy, bool(ok),
        f"task {task}: accuracy with context {accuracy} (lower bound must be >= {MIN_ACCURACY}); "
        f"without context {baseline} (upper bound must be <= {MAX_ACCURACY_WITHOUT_CONTEXT})",
        threshold=MIN_ACCURACY,
        figures={"accuracy_without_context": baseline, "task": task},
    )
