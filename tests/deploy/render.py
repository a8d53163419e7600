"""Render the rtai Helm charts and read what the pods would run (env, args, ports, probes).

Used by the deploy tests and by the chart-vs-code conformance test, e.g.::

    docs = render_chart("gateway", values_files=[VALUES_DIR / "kind.yaml"])
    gw = container_view(docs, "Deployment", "gateway")
    gw.env["RTAI_GW_PORT"], gw.probes["readiness"].path, gw.port("http")

Nothing here installs anything: helm comes from ./.tools/bin (``make deploy-tools``) or PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DIR = REPO_ROOT.parent / "shared"
CHARTS_DIR = REPO_ROOT / "deploy" / "helm"
VALUES_DIR = REPO_ROOT / "deploy" / "values"
CHARTS = ("gateway", "inference-worker", "redis")
# Kubernetes versions every rendering is validated against.
KUBE_VERSIONS = ("1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0", "1.35.0")

Doc = dict[str, Any]


def helm_bin() -> str | None:
    """The helm binary: $HELM, ./.tools/bin/helm, or helm on PATH (None when there is none)."""
    for cand in (os.environ.get("HELM"), str(REPO_ROOT / ".tools" / "bin" / "helm")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return shutil.which("helm")


def values_files_for(chart: str) -> list[Path]:
    """Values files in deploy/values/ whose first line says `# charts: a, b` and names this chart."""
    out = []
    for path in sorted(VALUES_DIR.glob("*.yaml")):
        first = path.read_text().splitlines()[0] if path.stat().st_size else ""
        if first.startswith("# charts:"):
            charts = {c.strip() for c in first.removeprefix("# charts:").split(",")}
            if chart in charts:
                out.append(path)
    return out


def render_chart(
    chart: str,
    values_files: list[Path] | tuple[Path, ...] = (),
    set_values: dict[str, Any] | None = None,
    *,
    release: str | None = None,
    namespace: str = "rtai",
    kube_version: str = "1.33.0",
    api_versions: tuple[str, ...] = (),
) -> list[Doc]:
    """`helm template` a chart of deploy/helm and return its documents (empty ones dropped)."""
    helm = helm_bin()
    if helm is None:
        raise FileNotFoundError("helm not found: run `make deploy-tools` (installs it into ./.tools/bin)")
    cmd = [
        helm,
        "template",
        release or chart,
        str(CHARTS_DIR / chart),
        "--namespace",
        namespace,
        "--kube-version",
        kube_version,
    ]
    for f in values_files:
        cmd += ["-f", str(f)]
    for key, value in (set_values or {}).items():
        cmd += ["--set-json", f"{key}={json.dumps(value)}"]
    for api in api_versions:
        cmd += ["--api-versions", api]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


@dataclass(frozen=True)
class Probe:
    kind: str  # startup | liveness | readiness
    path: str | None  # httpGet path
    port: int | None  # resolved container port (named ports looked up)
    command: list[str] | None  # exec probes
    spec: Doc


@dataclass(frozen=True)
class ContainerView:
    """What one container of a rendered workload would run with."""

    workload: str
    name: str
    image: str
    command: list[str]
    args: list[str]
    env: dict[str, str]  # literal `value` entries
    env_refs: dict[str, Doc]  # `valueFrom` entries (secretKeyRef, fieldRef ...)
    ports: dict[str, int]  # containerPort by port name
    probes: dict[str, Probe]
    security_context: Doc
    pod_spec: Doc = field(repr=False)

    def port(self, name: str) -> int:
        return self.ports[name]

    def resolved_env(
        self, secrets: dict[tuple[str, str], str] | None = None, *, pod_name: str = "pod-0"
    ) -> dict[str, str]:
        """env with valueFrom filled in: secretKeyRef from `secrets[(name, key)]`, fieldRef metadata.name = pod_name.

        `$(VAR)` references are expanded like the kubelet does. A secret that is not given raises KeyError.
        """
        out = dict(self.env)
        for key, ref in self.env_refs.items():
            if "secretKeyRef" in ref:
                s = ref["secretKeyRef"]
                out[key] = (secrets or {})[(s["name"], s["key"])]
            elif ref.get("fieldRef", {}).get("fieldPath") == "metadata.name":
                out[key] = pod_name
            elif ref.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
                out[key] = "rtai"
        for key, value in out.items():
            for ref_name, ref_value in out.items():
                value = value.replace(f"$({ref_name})", ref_value)
            out[key] = value
        return out


def _probe(kind: str, spec: Doc, ports: dict[str, int]) -> Probe:
    http = spec.get("httpGet")
    port: int | None = None
    if http is not None:
        raw = http.get("port")
        port = ports[raw] if isinstance(raw, str) else int(raw)
    command = spec.get("exec", {}).get("command")
    return Probe(kind, http.get("path") if http else None, port, command, spec)


def container_view(docs: list[Doc], kind: str, container: str, workload: str | None = None) -> ContainerView:
    """The named container of the (only, or named) workload of `kind` (Deployment, StatefulSet)."""
    workloads = find(docs, kind, workload)
    if len(workloads) != 1:
        raise LookupError(f"expected one {kind} (name={workload}), found {len(workloads)}")
    pod_spec = workloads[0]["spec"]["template"]["spec"]
    for c in pod_spec["containers"]:
        if c["name"] == container:
            break
    else:
        raise LookupError(f"no container {container!r} in {kind} {workloads[0]['metadata']['name']}")
    ports = {p["name"]: int(p["containerPort"]) for p in c.get("ports", [])}
    env = {e["name"]: str(e["value"]) for e in c.get("env", []) if "value" in e}
    env_refs = {e["name"]: e["valueFrom"] for e in c.get("env", []) if "valueFrom" in e}
    probes = {
        k.removesuffix("Probe"): _probe(k.removesuffix("Probe"), c[k], ports)
        for k in ("startupProbe", "livenessProbe", "readinessProbe")
        if k in c
    }
    return ContainerView(
        workload=workloads[0]["metadata"]["name"],
        name=container,
        image=c["image"],
        command=list(c.get("command", [])),
        args=list(c.get("args", [])),
        env=env,
        env_refs=env_refs,
        ports=ports,
        probes=probes,
        security_context=c.get("securityContext", {}),
        pod_spec=pod_spec,
    )


def gateway_container(values_files: list[Path] | tuple[Path, ...] = (), **kw: Any) -> ContainerView:
    return container_view(render_chart("gateway", values_files, **kw), "Deployment", "gateway")


def worker_container(values_files: list[Path] | tuple[Path, ...] = (), **kw: Any) -> ContainerView:
    return container_view(render_chart("inference-worker", values_files, **kw), "Deployment", "inference-worker")
