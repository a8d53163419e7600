"""Accuracy and macro-F1 of each sentiment model on both shipped sets (`make eval`); prints a markdown table.

    python scripts/eval_sentiment.py [--json PATH]

Every number is measured on the test split of a set (20% of its rows, chosen by a hash of the row id; see
scripts/sentiment_data.py), never on rows a head was trained on. VADER has no training; `minilm-sentiment` is the
served model with the committed head (trained on the tweets train split); the last row trains the same kind of
head on the Amazon train split, to measure the other direction. A cell marked "x" is cross-domain: the head was
trained on the other set. "binary" is accuracy on test rows with |mean rating| >= 0.5, positive vs negative.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from rtai_worker.engine import ModelInput
from rtai_worker.models import create_model
from rtai_worker.models import sentiment_data as sd
from rtai_worker.models.minilm import MiniLMEncoder
from rtai_worker.models.options import ModelOptions
from rtai_worker.models.sentiment_data import macro_f1
from rtai_worker.models.sentiment_head import DEFAULT_L2, LABELS, featurize, fit_head

NEG, NEU, POS = (LABELS.index(x) for x in ("negative", "neutral", "positive"))


def scores(rows: list[sd.Row], pred: Any, pos_over_neg: Any) -> dict[str, float]:
    y = np.array([r.label for r in rows])
    binary = np.array([abs(r.rating) >= sd.BINARY_MIN_RATING for r in rows])
    truth_pos = np.array([r.rating > 0 for r in rows])
    return {
        "rows": len(rows),
        "accuracy": float(np.mean(pred == y)),
        "macro_f1": macro_f1(y, pred),
        "binary_rows": int(binary.sum()),
        "binary_accuracy": float(np.mean(pos_over_neg[binary] == truth_pos[binary])),
    }


def served(spec: str, options: ModelOptions, rows: list[sd.Row]) -> dict[str, float]:
    model = create_model(spec, options)
    model.load()
    out = model.predict([ModelInput(text=r.text) for r in rows])
    pred = np.array([LABELS.index(o["label"]) for o in out])
    if spec == "vader":
        pos_over_neg = np.array([o["scores"]["compound"] > 0 for o in out])
    else:
        pos_over_neg = np.array([o["scores"]["positive"] > o["scores"]["negative"] for o in out])
    return scores(rows, pred, pos_over_neg)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--cache-dir", type=Path, default=ModelOptions().cache_dir)
    args = parser.parse_args()
    options = ModelOptions(device="cpu", cache_dir=args.cache_dir)
    started = time.perf_counter()

    splits = {name: sd.split(sd.load(name)) for name in sd.SETS}
    tests = {name: test for name, (_train, test) in splits.items()}
    results: list[dict[str, Any]] = []
    for spec, trained_on in (("vader", None), ("minilm-sentiment", "tweets")):
        for name, rows in tests.items():
            cell = served(spec, options, rows)
            results.append(
                {
                    "model": spec,
                    "trained_on": trained_on,
                    "set": name,
                    **cell,
                    "cross_domain": trained_on is not None and trained_on != name,
                }
            )

    encoder = MiniLMEncoder(options)
    encoder.load()
    amazon_train = splits["amazon"][0]
    analyzer = SentimentIntensityAnalyzer()
    x_train = featurize(encoder, analyzer, [r.text for r in amazon_train])
    head = fit_head(x_train, np.array([r.label for r in amazon_train]), l2=DEFAULT_L2)
    for name, rows in tests.items():
        probs = head.predict_proba(featurize(encoder, analyzer, [r.text for r in rows]))
        cell = scores(rows, probs.argmax(axis=1), probs[:, POS] > probs[:, NEG])
        results.append(
            {
                "model": "minilm head (eval only)",
                "trained_on": "amazon",
                "set": name,
                **cell,
                "cross_domain": name != "amazon",
            }
        )

    columns = [f"{s} {m}" for s in ("tweets", "amazon") for m in ("acc", "macro-F1", "binary")]
    lines = [
        "| model | head trained on | " + " | ".join(columns) + " |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model in dict.fromkeys(r["model"] for r in results):
        cells = {r["set"]: r for r in results if r["model"] == model}
        first = next(iter(cells.values()))
        row = [model, first["trained_on"] or "(rules, no training)"]
        for name in ("tweets", "amazon"):
            c = cells[name]
            mark = " x" if c["cross_domain"] else ""
            row += [f"{c['accuracy']:.3f}{mark}", f"{c['macro_f1']:.3f}{mark}", f"{c['binary_accuracy']:.3f}{mark}"]
        lines.append("| " + " | ".join(row) + " |")
    t, a = tests["tweets"], tests["amazon"]
    lines.append("")
    lines.append(
        f"Test splits: tweets {len(t)} rows ({sum(abs(r.rating) >= sd.BINARY_MIN_RATING for r in t)} binary), "
        f"amazon {len(a)} rows ({sum(abs(r.rating) >= sd.BINARY_MIN_RATING for r in a)} binary); "
        "x = cross-domain (head trained on the other set). 3 classes: negative / neutral / positive."
    )
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        doc = {"results": results, "seconds": round(time.perf_counter() - started, 1)}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
