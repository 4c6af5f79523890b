"""Hugging Face libraries, kept offline.

mechclaims never downloads: a missing model is an error that says how to fetch it.
:func:`offline` sets ``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE`` (unless the environment
already says otherwise) and is called just before transformers or transformer-lens is imported,
so that merely installing mechclaims changes nothing for other pytest runs.
"""

from __future__ import annotations

import os


def offline() -> None:
    """Keep the Hugging Face libraries this process imports from here on off the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
