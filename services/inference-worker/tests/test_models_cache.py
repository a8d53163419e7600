from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from rtai_worker.models._cache import build_once


def test_concurrent_builders_build_once_and_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "artifact.bin"
    calls: list[int] = []

    def build(tmp: Path) -> None:
        calls.append(1)
        with tmp.open("wb") as fh:
            fh.write(b"x" * 1000)
            fh.flush()
            time.sleep(0.2)  # a slow export: a reader must not see the half-written file
            fh.write(b"y" * 1000)

    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(build_once(target, build))) for _ in range(4)]
    for t in threads:
        t.start()
    seen_sizes = set()
    while any(t.is_alive() for t in threads):
        if target.exists():
            seen_sizes.add(target.stat().st_size)
        time.sleep(0.01)
    for t in threads:
        t.join()
    assert calls == [1]
    assert results == [target] * 4
    assert seen_sizes <= {2000}
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "artifact"

    def build(tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "part").write_text("half")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError, match="export failed"):
        build_once(target, build)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
