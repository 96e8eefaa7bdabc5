"""What kdistill wrote: a manifest in every folder it writes into, so `--overwrite` removes exactly that.

Each folder kdistill fills (a run directory, its `state/` and `export/`, a teacher cache, a quickstart,
compare or sweep folder) holds `kdistill-manifest.json`, mapping the names kdistill created there to
their kind:

- `file`: a file (its atomic-write sibling `NAME.tmp`, left by a crash, is kdistill's too);
- `folder`: a sub-folder with a manifest of its own (ownership is checked inside it, recursively);
- `tree`: a sub-folder whose whole content kdistill's own code writes (the Hugging Face Trainer's
  checkpoints in a text run's `state/`, the work folder of an export).

A name is recorded *before* it is written (the manifest is replaced atomically under a lock), so a
crash never leaves an unrecorded kdistill file. Removal takes exactly the recorded paths, after
checking that the folder holds nothing else; anything not recorded is the user's and makes
kdistill refuse with one line. A folder without a manifest (a user's folder, or one written by a
kdistill older than the manifest) owns nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from kdistill.errors import KdistillError

MANIFEST = "kdistill-manifest.json"
FILE, FOLDER, TREE = "file", "folder", "tree"
KINDS = (FILE, FOLDER, TREE)
_FORMAT = "kdistill-manifest/1"


class Owned:
    """A folder kdistill writes into, and the manifest of what it created there."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def entries(self) -> dict[str, str] | None:
        """Recorded names and their kinds; None without a (readable, well-formed) manifest."""
        path = self.root / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        entries = data.get("entries") if isinstance(data, dict) and data.get("format") == _FORMAT else None
        if not isinstance(entries, dict) or not all(isinstance(k, str) and v in KINDS for k, v in entries.items()):
            return None
        return entries

    def is_owned(self) -> bool:
        return self.entries() is not None

    def claim(self, *names: str, kind: str = FILE) -> None:
        """Record `names` (top-level entries of this folder) as kdistill's, before they are written."""
        self._update({name: kind for name in names})

    def release(self, *names: str) -> None:
        """Forget `names` (after kdistill removed or renamed them)."""
        self._update({name: None for name in names})

    def path(self, name: str, kind: str = FILE) -> Path:
        """Claim `name` and return its path."""
        self.claim(name, kind=kind)
        return self.root / name

    def foreign(self) -> list[str]:
        """Paths (relative to this folder) of what kdistill did not write; everything when there is no manifest."""
        return _foreign(self.root, "")

    def check_removable(self, what: str) -> None:
        """One-line refusal when the folder holds anything kdistill did not write."""
        foreign = self.foreign()
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise KdistillError(f"{what}: {self.root} holds files kdistill did not write ({shown}); "
                                "move them away or choose another folder")

    def remove(self, what: str) -> None:
        """Remove exactly what kdistill recorded here (refusing first if anything else is present); the folder stays."""
        self.check_removable(what)
        _remove_recorded(self.root)

    def _update(self, changes: dict[str, str | None]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with _locked(self.root):
            entries = dict(self.entries() or {})
            for name, kind in changes.items():
                if "/" in name or name in ("", ".", "..", MANIFEST):
                    raise ValueError(f"not a top-level entry name: {name!r}")
                if kind is None:
                    entries.pop(name, None)
                else:
                    entries[name] = kind
            text = json.dumps({"format": _FORMAT, "entries": dict(sorted(entries.items()))}, indent=1) + "\n"
            tmp = fresh_tmp(self.root / MANIFEST)
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(self.root / MANIFEST)


def fresh_tmp(path: Path) -> Path:
    """`NAME.tmp` beside `path`, for an atomic write: a stale one (a file, or a symlink, which is never followed)
    left by a crash is removed first, so the write cannot land in a file the link points to."""
    tmp = path.with_name(path.name + ".tmp")
    if tmp.is_symlink() or tmp.is_file():
        tmp.unlink()
    return tmp


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """An exclusive lock on the folder itself (no extra file), so concurrent claims do not lose each other's names."""
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _kind_of(entries: dict[str, str], name: str) -> str | None:
    if name in (MANIFEST, MANIFEST + ".tmp"):
        return FILE
    if name in entries:
        return entries[name]
    if name.endswith(".tmp") and entries.get(name[: -len(".tmp")]) == FILE:
        return FILE  # the temporary sibling of an atomic write, left by a crash
    return None


def _foreign(root: Path, prefix: str) -> list[str]:
    entries = Owned(root).entries()
    found: list[str] = []
    try:
        children = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise KdistillError(f"cannot read {root}: {exc.strerror or exc}") from None
    for child in children:
        kind = _kind_of(entries, child.name) if entries is not None else None
        rel = prefix + child.name
        is_dir = child.is_dir() and not child.is_symlink()
        if kind is None or (not child.is_symlink() and (kind == FILE) == is_dir):
            found.append(rel)  # unrecorded, or not what was recorded (a folder of the user's under a file's name)
        elif kind == FOLDER and is_dir:
            found += _foreign(child, rel + "/")
    return found


def _remove_recorded(root: Path) -> None:
    entries = Owned(root).entries() or {}
    for child in list(root.iterdir()):
        kind = _kind_of(entries, child.name)
        if child.name == MANIFEST or kind is None:
            continue
        if child.is_symlink() or not child.is_dir():
            child.unlink()
        elif kind == FOLDER:
            _remove_recorded(child)
            child.rmdir()
        else:
            shutil.rmtree(child)
    (root / MANIFEST).unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Is process `pid` running on this host (the owner of a work folder named after it)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
