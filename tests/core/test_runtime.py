"""Process tuning for long-running commands."""

from __future__ import annotations

import sys

import pytest

from core.runtime import pin_malloc_mmap_threshold


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_mmap_threshold_is_pinned_unless_the_environment_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pin_malloc_mmap_threshold() is True  # glibc accepted the value
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert pin_malloc_mmap_threshold() is False  # the operator's choice wins
