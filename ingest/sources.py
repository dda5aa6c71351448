"""Sources: the files an ingest reads under one, and the paths a reindex job may read (under the allowed roots)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from core.errors import SourceError


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def resolve_source(raw: str, roots: Sequence[Path]) -> Path:
    """The real path of a reindex source, or :class:`SourceError` when it is not under an allowed root.

    Relative paths are looked up under each root, then under the working directory. ``..``
    is refused outright; symlinks are followed, and one leading out of the roots (the source
    itself or any entry below it) is refused.
    """
    allowed = [root.resolve() for root in roots]
    where = ", ".join(str(root) for root in allowed)
    if not raw.strip():
        raise SourceError("source must not be empty")
    path = Path(raw)
    if ".." in path.parts:
        raise SourceError(f"source {raw!r} must not contain '..'; give a path under the allowed roots ({where})")
    candidates = [path] if path.is_absolute() else [*(root / path for root in allowed), Path.cwd() / path]
    for candidate in candidates:
        if not candidate.exists():
            continue
        resolved = candidate.resolve()
        if not _inside(resolved, allowed):
            raise SourceError(f"source {raw!r} is outside the allowed roots ({where}) or a symlink leading out of them")
        _refuse_escaping_links(raw, resolved, allowed)
        return resolved
    if path.is_absolute() and not _inside(path.resolve(), allowed):
        raise SourceError(f"source {raw!r} is outside the allowed roots ({where})")
    raise SourceError(f"source {raw!r} does not exist under the allowed roots ({where})")


def _refuse_escaping_links(raw: str, resolved: Path, allowed: Sequence[Path]) -> None:
    if not resolved.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(resolved):
        for name in (*dirnames, *filenames):
            entry = Path(dirpath) / name
            if entry.is_symlink() and not _inside(entry.resolve(), allowed):
                raise SourceError(
                    f"source {raw!r} contains a symlink leading outside the allowed roots: "
                    f"{entry.relative_to(resolved).as_posix()}"
                )


def default_sources(conn: psycopg.Connection, collection: str, roots: Sequence[Path]) -> list[Path]:
    """Where ``collection`` was ingested from before (successful runs), still under the allowed roots."""
    rows = conn.execute(
        """SELECT source FROM ingest_runs WHERE collection = %s AND status = 'succeeded'
           GROUP BY source ORDER BY max(id)""",
        (collection,),
    ).fetchall()
    found: list[Path] = []
    for (source,) in rows:
        try:
            path = resolve_source(source, roots)
        except SourceError:
            continue
        if path not in found:
            found.append(path)
    return found


@dataclass(frozen=True)
class SourceFile:
    """One file found under the ingest root."""

    path: Path
    source: str  # relative to the root, '/'-separated

    def estimated_documents(self) -> int:
        """1, or the number of non-empty lines of a JSONL file (for progress totals)."""
        if self.path.suffix.lower() != ".jsonl":
            return 1
        try:
            with self.path.open("rb") as handle:
                return sum(1 for line in handle if line.strip())
        except OSError:
            return 1


def scan_source(root: Path) -> list[SourceFile]:
    """Files to ingest under ``root`` (a folder or one file), sorted; hidden entries skipped."""
    if not root.exists():
        raise SourceError(f"source {root} does not exist")
    if root.is_file():
        return [SourceFile(path=root, source=root.name)]
    if not root.is_dir():
        raise SourceError(f"source {root} is neither a file nor a folder")
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            files.append(SourceFile(path=path, source=path.relative_to(root).as_posix()))
    return files


def quarantine_skipped(root: Path, skipped: list[dict[str, str]], uploads_dir: Path, quarantine_dir: Path) -> None:
    """Move uploaded files an ingest skipped whole out of the uploads folder; their entries say where to.

    A file that cannot be read would otherwise stay among the uploads and be skipped again by every
    reindex; moved to ``quarantine_dir/<collection>/`` it can be inspected, and uploaded again once fixed.
    Entries for part of a file (a JSONL line) and files outside the uploads folder are left alone.
    """
    uploads = uploads_dir.resolve()
    root = root.resolve()
    for entry in skipped:
        path = root if root.is_file() else root / entry["source"]
        if not path.is_file() or path.is_symlink() or not path.resolve().is_relative_to(uploads):
            continue
        relative = path.resolve().relative_to(uploads)
        target = quarantine_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        entry["quarantined"] = target.relative_to(quarantine_dir.parent).as_posix()  # e.g. quarantine/default/x.pdf
