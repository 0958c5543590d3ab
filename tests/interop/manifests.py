"""The deployment files as data, and the checks on them that need no running server.

Used by interop.py (which adds the live checks) and by scripts/check-deploy.sh:

    python manifests.py render k8s/ OUT.yaml   # kubectl kustomize, or the fallback below
    python manifests.py check-crds OUT.yaml    # ServiceMonitor / PrometheusRule structure, rules to promtool
    python manifests.py check-compose          # compose.yaml parses and hangs together

Each check returns a list of problems (strings); empty means it passed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]

# ----------------------------------------------------------------------------------------------
# `dakota-server --help` / `dakota health --help`


def parse_help(text: str) -> dict:
    """Flags of a clap --help: {"--flag": {"env": NAME or None, "default": str or None}}."""
    flags: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^\s{2,}(?:-\w, )?(--[a-z0-9-]+)", line)
        if m:
            current = m.group(1)
            flags[current] = {"env": None, "default": None}
        if current is None:
            continue
        for env in re.findall(r"\[env: ([A-Z0-9_]+)", line):
            flags[current]["env"] = env
        d = re.search(r"\[default: ([^\]]*)\]", line)
        if d:
            flags[current]["default"] = d.group(1)
    return flags


def help_envs(flags: dict) -> set[str]:
    return {f["env"] for f in flags.values() if f["env"]}


def port_of(addr: str | None) -> int | None:
    if not addr:
        return None
    m = re.search(r":(\d+)$", addr.strip())
    return int(m.group(1)) if m else None


# Variables the server reads outside its flags (so `--help` does not list them): the tracing
# setup (server/telemetry.rs, README "Observability") and the log filter. Each must appear in
# the server binary as a string, or the check fails (see extra_envs_in_binary).
EXTRA_ENVS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "RUST_LOG")


def extra_envs_in_binary(server_bin: Path) -> tuple[set[str], list[str]]:
    data = server_bin.read_bytes()
    found = {name for name in EXTRA_ENVS if name.encode() in data}
    problems = [f"{name}: not found in {server_bin} (no longer read by the server?)" for name in EXTRA_ENVS if name not in found]
    return found, problems


# ----------------------------------------------------------------------------------------------
# Kubernetes


def render_k8s(directory: Path) -> tuple[str, str]:
    """The rendered manifests and which renderer made them."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"kubectl kustomize {directory} failed:\n{out.stderr}")
        return out.stdout, "kubectl kustomize"
    return yaml.safe_dump_all(fallback_render(directory), sort_keys=False), "fallback renderer (no kubectl)"


def fallback_render(directory: Path) -> list[dict]:
    """What this repository's kustomization.yaml uses, rendered without kustomize: its
    resources, configMapGenerator (envs, files, literals; no hash suffix, so references stay
    as written), `namespace`, `labels` and `images`. Enough to validate the objects' schemas when kubectl
    is missing; kubectl kustomize is the real renderer."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "namespace", "labels", "resources", "configMapGenerator", "images"}
    unknown = set(kust) - known
    if unknown:
        raise RuntimeError(f"fallback renderer: kustomization fields it does not know: {sorted(unknown)}")
    docs: list[dict] = []
    for res in kust.get("resources", []):
        path = directory / res
        if path.is_dir():
            docs.extend(fallback_render(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for gen in kust.get("configMapGenerator", []):
        data: dict[str, str] = {}
        for env_file in gen.get("envs", []):
            for line in (directory / env_file).read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    key, _, value = line.partition("=")
                    data[key] = value
        for spec in gen.get("files", []):
            key, _, path = spec.partition("=") if "=" in spec else (Path(spec).name, "", spec)
            data[key] = (directory / path).read_text()
        for literal in gen.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        meta = {"name": gen["name"]}
        labels = (gen.get("options") or {}).get("labels")
        if labels:
            meta["labels"] = dict(labels)
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
    images = {i["name"]: i for i in kust.get("images", [])}
    for doc in docs:
        pod = (doc.get("spec") or {}).get("template", {}).get("spec", {})
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            name = c["image"].split(":")[0]
            if name in images:
                i = images[name]
                c["image"] = f"{i.get('newName', name)}:{i.get('newTag', c['image'].partition(':')[2] or 'latest')}"
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
    for doc in docs:
        meta = doc.setdefault("metadata", {})
        if kust.get("namespace") and doc["kind"] not in cluster_scoped:
            meta["namespace"] = kust["namespace"]
        for group in kust.get("labels", []):
            meta.setdefault("labels", {}).update(group.get("pairs", {}))
    return docs


def load_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


def check_crds(docs: list[dict]) -> list[str]:
    """kubernetes-validate has no schema for the Prometheus Operator's kinds: their structure
    is checked here (the fields the operator requires, the Service port a ServiceMonitor names),
    and the alert rules go to `promtool check rules` (PromQL syntax, templates) when promtool is
    there."""
    problems = []
    services = by_kind(docs, "Service")
    monitors = by_kind(docs, "ServiceMonitor")
    rules = by_kind(docs, "PrometheusRule")
    if not monitors:
        problems.append("no ServiceMonitor")
    if not rules:
        problems.append("no PrometheusRule")
    for sm in monitors:
        where = f"ServiceMonitor {sm['metadata']['name']}"
        if sm.get("apiVersion") != "monitoring.coreos.com/v1":
            problems.append(f"{where}: apiVersion {sm.get('apiVersion')}")
        spec = sm.get("spec") or {}
        unknown = set(spec) - {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels", "sampleLimit"}
        if unknown:
            problems.append(f"{where}: unknown spec fields {sorted(unknown)}")
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        matched = [s for s in services if selector and all(s["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())]
        if not matched:
            problems.append(f"{where}: selector {selector} matches no Service")
        for ep in spec.get("endpoints") or [{}]:
            port = ep.get("port")
            unknown = set(ep) - {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings", "metricRelabelings", "targetPort"}
            if unknown:
                problems.append(f"{where}: unknown endpoint fields {sorted(unknown)}")
            if not any(port == p.get("name") for s in matched for p in s["spec"]["ports"]):
                problems.append(f"{where}: endpoint port {port!r} is not a port name of the selected Service")
    for pr in rules:
        where = f"PrometheusRule {pr['metadata']['name']}"
        if pr.get("apiVersion") != "monitoring.coreos.com/v1":
            problems.append(f"{where}: apiVersion {pr.get('apiVersion')}")
        groups = (pr.get("spec") or {}).get("groups") or []
        if not groups:
            problems.append(f"{where}: no rule groups")
        for g in groups:
            for r in g.get("rules", []):
                unknown = set(r) - {"alert", "record", "expr", "for", "labels", "annotations", "keep_firing_for"}
                if unknown or "expr" not in r or ("alert" in r) == ("record" in r):
                    problems.append(f"{where}: malformed rule {r.get('alert') or r.get('record')}: {sorted(unknown)}")
        promtool = shutil.which("promtool")
        if promtool and groups:
            tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"dakota-rules-{os.getpid()}.yaml"
            tmp.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
            out = subprocess.run([promtool, "check", "rules", str(tmp)], capture_output=True, text=True)
            tmp.unlink()
            if out.returncode != 0:
                problems.append(f"{where}: promtool check rules failed:\n{out.stdout}{out.stderr}")
            else:
                print(f"  promtool check rules: {sum(len(g.get('rules', [])) for g in groups)} rules of {where} ok")
        elif not promtool:
            print("  (promtool not installed: PromQL syntax of the rules not checked)")
    return problems


# ----------------------------------------------------------------------------------------------
# PromQL: the metric names an expression reads

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or",
    "unless", "inf", "nan", "atan2",
}


def promql_metrics(expr: str) -> set[str]:
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"'(?:[^'\\]|\\.)*'", "''", s)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges, subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", s):
        if s[m.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if m.group(0).lower() in PROMQL_WORDS:
            continue
        names.add(m.group(0))
    return names


def alert_exprs(docs: list[dict]) -> dict[str, str]:
    out = {}
    for pr in by_kind(docs, "PrometheusRule"):
        for g in pr["spec"]["groups"]:
            for r in g["rules"]:
                out[f"alert {r.get('alert') or r.get('record')}"] = r["expr"]
    return out


def dashboard_exprs(dashboard: dict) -> dict[str, str]:
    out = {}

    def walk(node, title):
        if isinstance(node, dict):
            title = node.get("title", title)
            if isinstance(node.get("expr"), str):
                out[f"panel {title!r} {node.get('refId', '')}".strip()] = node["expr"]
            for v in node.values():
                walk(v, title)
        elif isinstance(node, list):
            for v in node:
                walk(v, title)

    walk(dashboard, "")
    return out


# ----------------------------------------------------------------------------------------------
# compose.yaml


def load_compose(path: Path = REPO / "compose.yaml") -> dict:
    return yaml.safe_load(path.read_text())


def compose_env(service: dict) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return {e.partition("=")[0]: (e.partition("=")[2] if "=" in e else None) for e in env}
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def check_compose(compose: dict, repo: Path = REPO) -> list[str]:
    """compose.yaml hangs together: the services the local stack needs, files it mounts exist,
    depends_on names services, the server is built from the Dockerfile, Redis is bounded, the
    trace endpoint and the Prometheus target name services of the file."""
    problems = []
    services = compose.get("services") or {}
    for need in ("dakota-server", "redis", "jaeger", "prometheus", "grafana"):
        if need not in services:
            problems.append(f"compose: no service {need!r}")
    for name, svc in services.items():
        if "image" not in svc and "build" not in svc:
            problems.append(f"compose: {name} has neither image nor build")
        deps = svc.get("depends_on") or []
        for dep in deps if isinstance(deps, list) else deps.keys():
            if dep not in services:
                problems.append(f"compose: {name} depends on unknown service {dep!r}")
        for vol in svc.get("volumes") or []:
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith("."):
                if not (repo / src).exists():
                    problems.append(f"compose: {name} mounts {src}, which does not exist")
    server = services.get("dakota-server", {})
    build = server.get("build")
    dockerfile = (build or {}).get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
    if not build or not (repo / dockerfile).exists():
        problems.append("compose: dakota-server is not built from the repository's Dockerfile")
    redis_cmd = " ".join(map(str, services.get("redis", {}).get("command") or []))
    for arg in ("--maxmemory", "--maxmemory-policy"):
        if arg not in redis_cmd:
            problems.append(f"compose: redis runs without {arg}")
    env = compose_env(server)
    otlp = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if otlp:
        m = re.match(r"https?://([^:/]+):(\d+)", otlp)
        if not m or m.group(1) not in services:
            problems.append(f"compose: OTEL_EXPORTER_OTLP_ENDPOINT {otlp} names no service of the file")
        elif m.group(2) != "4317":
            problems.append(f"compose: OTEL_EXPORTER_OTLP_ENDPOINT {otlp} is not the OTLP/gRPC port 4317")
    redis_url = env.get("REDIS_URL")
    if redis_url and not re.match(r"redis://redis:6379", redis_url):
        problems.append(f"compose: REDIS_URL {redis_url} is not the redis service")
    for key, value in env.items():
        if value == "" and key in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_VECTOR_STORE_ID", "SERPER_API_KEY"):
            problems.append(f"compose: {key} set to an empty value (counted as unset: leave it out instead)")
    return problems


def prometheus_targets(path: Path) -> list[str]:
    cfg = yaml.safe_load(path.read_text())
    return [t for job in cfg.get("scrape_configs", []) for sc in job.get("static_configs", []) for t in sc.get("targets", [])]


# ----------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "render":
        text, how = render_k8s(Path(argv[1]))
        Path(argv[2]).write_text(text)
        print(f"  rendered {argv[1]} with {how}: {len(load_docs(text))} objects")
        return 0
    if len(argv) == 2 and argv[0] == "check-crds":
        problems = check_crds(load_docs(Path(argv[1]).read_text()))
    elif argv == ["check-compose"]:
        compose = load_compose()
        problems = check_compose(compose)
        targets = prometheus_targets(REPO / "deploy/compose/prometheus.yml")
        if not any(t.split(":")[0] in compose["services"] for t in targets):
            problems.append(f"deploy/compose/prometheus.yml scrapes {targets}, no service of compose.yaml")
        dash = json.loads((REPO / "k8s/dashboards/dakota-overview.json").read_text())
        if not dash.get("panels"):
            problems.append("dashboard JSON has no panels")
    else:
        print(__doc__)
        return 2
    for p in problems:
        print(f"FAIL: {p}")
    if not problems:
        print(f"  {argv[0]}: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
