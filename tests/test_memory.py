"""Handing freed memory back between passes."""

from __future__ import annotations

import sys

import pytest

from mechclaims import memory


def _rss_kib() -> int:
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(fields["VmRSS"].split()[0])


@pytest.mark.skipif(not sys.platform.startswith("linux") or memory._malloc_trim() is None, reason="glibc only")
def test_release_returns_freed_heap_pages():
    blocks = [bytearray(64 * 1024) for _ in range(4000)]  # 250 MiB of small heap blocks
    for block in blocks[:-1]:
        del block
    del blocks[:-1]  # all but the last stay free on the heap, behind a live block
    before = _rss_kib()
    memory.release()
    assert before - _rss_kib() > 100 * 1024  # at least 100 MiB handed back


def test_release_is_harmless_without_glibc(monkeypatch):
    monkeypatch.setattr(memory, "_malloc_trim", lambda: None)
    memory.release()
