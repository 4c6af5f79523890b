"""C0, the precondition of every mechanistic claim: the target learns the task in context."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mechclaims import Finding, all_of, at_least, at_most
from mechclaims import proportion_of

MIN_ACCURACY = 0.8  # lower 95% bound of accuracy with context
MAX_ACCURACY_WITHOUT_CONTEXT = 0.2  # upper 95% bound of accuracy without examples


def in_context(correct_with: np.ndarray, correct_without: np.ndarray, task: str) -> Finding:
    """With examples the target answers correctly; without examples it does not."""
    accuracy = proportion_of(correct_with)
    baseline = proportion_of(correct_without)
    finding = all_of(at_least(accuracy, MIN_ACCURACY, "accuracy with context"),
                     at_most(baseline, MAX_ACCURACY_WITHOUT_CONTEXT, "without context"))
    return replace(finding, message=f"task {task}: {finding.message}",
                   figures={"accuracy_without_context": baseline, "task": task})
