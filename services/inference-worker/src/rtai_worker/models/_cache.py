"""Build-once artifacts in the model cache, safe when several workers start at the same time.

A builder writes into a private temporary path next to the target, then renames it into place, so a reader sees
either nothing or a complete artifact. An exclusive `flock` on a sibling lock file makes concurrent starters wait
for the first builder instead of doing the same work twice; where locks do not work (some network filesystems),
the atomic rename still keeps readers safe.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Return `target`, calling `build(tmp)` first if it does not exist yet. `build` must create `tmp` (a file or
    a directory); it is renamed to `target` only after `build` returned without raising."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with lock_path.open("a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if target.exists():  # another process built it while we waited for the lock
                return target
            tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                build(tmp)
                if not tmp.exists():
                    raise RuntimeError(f"builder for {target} did not create {tmp}")
                try:
                    os.replace(tmp, target)
                except OSError:
                    if not target.exists():  # a lock-less racer may have won; anything else is a real error
                        raise
            finally:
                _remove(tmp)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target
