"""The labelled sentiment sets, their fixed train/test split and the metrics, shared by the head's training script,
`make eval` and the tests. Not used when serving.

Data: VADER's ground-truth sets (Hutto & Gilbert 2014, MIT License, Copyright (c) 2016 C.J. Hutto), described in
the data folder's README. The folder is found at $RTAI_DATA_DIR, else ../shared/data next to the repository.
Split: a row is in the test split when sha256("<set>:<id>") mod 5 == 0 (20%), a pure function of the row id, so
train and test never share rows and the split does not depend on file order or a random seed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SETS = {"tweets": "vader_tweets_gt.tsv", "amazon": "vader_amazon_gt.tsv"}
LABELS = ("negative", "neutral", "positive")
TEST_MODULUS = 5
BINARY_MIN_RATING = 0.5
"""Binary task as in the research notes: rows with |mean rating| >= 0.5, labelled by sign."""

REPO = Path(__file__).resolve().parents[5]


@dataclass(frozen=True, slots=True)
class Row:
    set: str
    id: str
    rating: float
    label: int  # index into LABELS
    text: str

    @property
    def is_test(self) -> bool:
        digest = hashlib.sha256(f"{self.set}:{self.id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % TEST_MODULUS == 0


def data_dir() -> Path:
    env = os.environ.get("RTAI_DATA_DIR")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not (path / SETS["tweets"]).is_file():
        files = ", ".join(SETS.values())
        raise FileNotFoundError(f"labelled data not found in {path}: set RTAI_DATA_DIR to the folder holding {files}")
    return path


def load(name: str, folder: Path | None = None) -> list[Row]:
    path = (folder or data_dir()) / SETS[name]
    rows = []
    with path.open(encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        if header != ["id", "mean_rating", "label", "text"]:
            raise ValueError(f"{path}: unexpected header {header}")
        for line in fh:
            rid, rating, label, text = line.rstrip("\n").split("\t", 3)
            rows.append(Row(set=name, id=rid, rating=float(rating), label=LABELS.index(label), text=text))
    return rows


def split(rows: list[Row]) -> tuple[list[Row], list[Row]]:
    """(train, test)"""
    return [r for r in rows if not r.is_test], [r for r in rows if r.is_test]


def macro_f1(y: Any, pred: Any, k: int = len(LABELS)) -> float:
    """Unweighted mean of the per-class F1 scores (a class never predicted nor present scores 0)."""
    y, pred = np.asarray(y), np.asarray(pred)
    scores = []
    for c in range(k):
        tp = float(np.sum((pred == c) & (y == c)))
        fp = float(np.sum((pred == c) & (y != c)))
        fn = float(np.sum((pred != c) & (y == c)))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(scores))
