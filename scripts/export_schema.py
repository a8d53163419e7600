"""Write (or check) the JSON Schema of the wire protocol: libs/protocol/schema/*.json."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rtai_protocol.codec import CLIENT_FRAME, INTERNAL_MESSAGE, SERVER_FRAME

OUT = Path(__file__).resolve().parents[1] / "libs" / "protocol" / "schema"
SCHEMAS = {
    "client-frame.schema.json": CLIENT_FRAME,
    "server-frame.schema.json": SERVER_FRAME,
    "internal-message.schema.json": INTERNAL_MESSAGE,
}


def render() -> dict[str, str]:
    return {
        name: json.dumps(adapter.json_schema(), indent=2, sort_keys=True) + "\n" for name, adapter in SCHEMAS.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    drift = []
    for name, text in render().items():
        path = OUT / name
        if args.write:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        elif not path.exists() or path.read_text() != text:
            drift.append(name)
    if drift:
        sys.stderr.write(f"protocol schema out of date: {', '.join(drift)}; run `make schema` and commit\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
