"""Train the `sentiment-minilm` head and write services/inference-worker/src/rtai_worker/models/sentiment_head.json.

    python scripts/train_sentiment_head.py [--train-set tweets] [--select]

Features: MiniLM embeddings from the serving backend (int8 ONNX on CPU; `make models` first) + VADER's four scores.
Trained on the train split of one set (tweets by default), so the other set stays a cross-domain test and the
test split of the same set a within-domain one (`make eval`). `--select` picks the L2 strength and class weighting
on an inner validation split of the training rows only (never on test rows) and prints the grid; the defaults below
are what it chose. Deterministic: the same embeddings give the same file.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from rtai_worker.models import sentiment_data as sd
from rtai_worker.models.minilm import MiniLMEncoder
from rtai_worker.models.options import ModelOptions
from rtai_worker.models.sentiment_data import macro_f1
from rtai_worker.models.sentiment_head import DEFAULT_L2, HEAD_PATH, featurize, fit_head


def select(x: Any, y: Any, rows: list[sd.Row]) -> None:
    inner_val = np.array([int(hashlib.sha256(f"val:{r.id}".encode()).hexdigest(), 16) % 4 == 0 for r in rows])
    for balanced in (False, True):
        for l2 in (0.003, 0.01, 0.03, 0.1, 0.3):
            head = fit_head(x[~inner_val], y[~inner_val], l2=l2, balanced=balanced)
            pred = head.predict_proba(x[inner_val]).argmax(axis=1)
            acc = float(np.mean(pred == y[inner_val]))
            print(f"balanced={balanced!s:5} l2={l2:<6} val acc {acc:.3f} macro-F1 {macro_f1(y[inner_val], pred):.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-set", choices=sorted(sd.SETS), default="tweets")
    parser.add_argument("--l2", type=float, default=DEFAULT_L2)
    parser.add_argument("--balanced", action="store_true", help="weight classes inversely to their frequency")
    parser.add_argument("--select", action="store_true", help="print a validation grid and exit")
    parser.add_argument("--out", type=Path, default=HEAD_PATH)
    parser.add_argument("--cache-dir", type=Path, default=ModelOptions().cache_dir)
    args = parser.parse_args()

    train, _test = sd.split(sd.load(args.train_set))
    encoder = MiniLMEncoder(ModelOptions(device="cpu", cache_dir=args.cache_dir))
    encoder.load()
    x = featurize(encoder, SentimentIntensityAnalyzer(), [r.text for r in train])
    y = np.array([r.label for r in train])
    if args.select:
        select(x, y, train)
        return 0
    meta = {
        "trained_on": f"{args.train_set} train split ({len(train)} rows; test rows: sha256(set:id) mod 5 == 0)",
        "embeddings": encoder.fingerprint,
        "script": "scripts/train_sentiment_head.py",
        "data_license": "VADER ground truth (Hutto & Gilbert 2014), MIT License, Copyright (c) 2016 C.J. Hutto",
    }
    head = fit_head(x, y, l2=args.l2, balanced=args.balanced, meta=meta)
    args.out.write_text(head.to_json(), encoding="utf-8")
    sys.stdout.write(f"wrote {args.out} ({args.out.stat().st_size} bytes)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
