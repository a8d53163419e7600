"""A Dockerfile's final stage as a container runtime reads it: its ENV, exec-form ENTRYPOINT, CMD and WORKDIR."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ImageSpec:
    entrypoint: list[str]
    cmd: list[str]
    env: dict[str, str]
    workdir: str


def _logical_lines(text: str) -> list[str]:
    out: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        out.append(buf + line)
        buf = ""
    if buf:
        out.append(buf)
    return out


def image_spec(dockerfile: Path) -> ImageSpec:
    """ENV, ENTRYPOINT, CMD and WORKDIR of the Dockerfile's final stage (exec-form entrypoint required)."""
    stages: list[list[str]] = []
    for line in _logical_lines(dockerfile.read_text()):
        word = line.split(None, 1)[0].upper()
        if word == "FROM":
            stages.append([])
        elif stages:
            stages[-1].append(line)
    env: dict[str, str] = {}
    entrypoint: list[str] = []
    cmd: list[str] = []
    workdir = "/"
    for line in stages[-1]:
        word, _, rest = line.partition(" ")
        word = word.upper()
        rest = rest.strip()
        if word == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), f"${m.group(1)}"), value)
        elif word == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif word == "CMD":
            cmd = json.loads(rest)
        elif word == "WORKDIR":
            workdir = rest
    if not entrypoint:
        raise ValueError(f"{dockerfile}: no exec-form ENTRYPOINT in the final stage")
    return ImageSpec(entrypoint, cmd, env, workdir)
