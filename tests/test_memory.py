"""Handing freed memory back between passes."""

from __future__ import annotations

import sys

import pytest

from mechclaims import memory

MIB = 1024


def _rss_kib() -> int:
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(fields["VmRSS"].split()[0])


@pytest.mark.skipif(not sys.platform.startswith("linux") or memory._malloc_trim() is None, reason="glibc only")
def test_release_returns_freed_heap_pages():
    """Freed small blocks behind a live one stay resident until trimmed; release hands back at
    least half of them. The figure is relative to what the allocation itself made resident, so
    it holds whatever else the process holds."""
    start = _rss_kib()
    blocks = [bytearray(64 * 1024) for _ in range(4000)]  # 250 MiB of small heap blocks, each written
    grown = _rss_kib() - start
    if grown < 64 * MIB:  # pages freed by earlier tests in this process are reused, not grown
        pytest.skip(f"the allocation made only {grown // MIB} MiB resident: the allocator did not put it on the heap")
    del blocks[:-1]  # all but the last are free, behind a live block at the heap's top
    before = _rss_kib()
    assert memory.release_memory() is True
    assert before - _rss_kib() > grown // 2, f"release handed back {(before - _rss_kib()) // MIB} of {grown // MIB} MiB"
    assert len(blocks) == 1


def test_release_does_nothing_without_glibc(monkeypatch):
    monkeypatch.setattr(memory, "_malloc_trim", lambda: None)
    assert memory.release_memory() is False
