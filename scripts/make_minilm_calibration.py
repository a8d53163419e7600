"""Write the MiniLM calibration texts: services/inference-worker/src/rtai_worker/models/minilm_calibration.json.

    python scripts/make_minilm_calibration.py

The static int8 export (`rtai_worker/models/_minilm_export.py`) calibrates its activation ranges once on these
texts: every k-th row of the *train* split of each shipped labelled set (128 per set), so the export needs no data
folder at build time and never sees a test row. Deterministic: the same data gives the same file.
"""

from __future__ import annotations

import json
import sys

from rtai_worker.models import sentiment_data as sd
from rtai_worker.models._minilm_export import CALIBRATION_PATH

PER_SET = 128


def main() -> int:
    texts: list[str] = []
    for name in sorted(sd.SETS):
        train, _test = sd.split(sd.load(name))
        texts += [r.text for r in train[:: max(1, len(train) // PER_SET)]][:PER_SET]
    doc = {
        "format": "rtai-calibration/1",
        "source": f"every k-th train-split row of {', '.join(sorted(sd.SETS))} ({PER_SET} each); "
        "scripts/make_minilm_calibration.py",
        "data_license": "VADER ground truth (Hutto & Gilbert 2014), MIT License, Copyright (c) 2016 C.J. Hutto",
        "texts": texts,
    }
    CALIBRATION_PATH.write_text(json.dumps(doc, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    sys.stdout.write(f"wrote {CALIBRATION_PATH} ({len(texts)} texts, {CALIBRATION_PATH.stat().st_size} bytes)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
