#!/usr/bin/env python3
"""Interop tests: the Dakota server from clients nobody on this project wrote, and the
deployment files checked against what the server really documents and exports.

    python tests/interop/interop.py --server-bin target/debug/dakota-server --cli-bin target/debug/dakota

Needs (scripts/check-deploy.sh installs them into a venv): grpcio, grpcio-tools,
grpcio-health-checking, pyyaml, and the grpcurl (1.8.6, reflection v1alpha) and buf (reflection
v1) binaries on PATH or next to this Python.

Checks, each printed as "ok" or "FAIL" with what mismatched:
  grpcurl         list, describe dakota.content.v1.ContentService, grpc.health.v1.Health/Check
  buf curl        --list-methods, SearchKnowledgeBase
  python client   generated from proto/ with grpcio-tools: a full Generate (offline), its event
                  stream (sequence, progress, phases in plan order, one final completed event
                  with an article), GetArticle, WatchJob, CancelJob
  upstream down   a second server whose LLM is unreachable: the job fails UNAVAILABLE, the
                  breaker opens, ContentService reports NOT_SERVING
  metrics         every metric named by an alert (k8s/prometheusrule.yaml) or the dashboard
                  (k8s/dashboards/dakota-overview.json) is in a live scrape
  ports and env   ports, probe ports and environment variable names of k8s/, compose.yaml and
                  the Dockerfile are the ones `dakota-server --help` documents
  self-test       each of the pure checks above, fed a broken input, reports it
The last line is "N passed, M failed"; the exit code is 1 when any check failed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
import yaml  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

import manifests as m  # noqa: E402

REPO = m.REPO
CONTENT_SERVICE = "dakota.content.v1.ContentService"
PROTO = REPO / "proto/dakota/content/v1/content.proto"
# Prometheus makes these series itself for every target; no server exports them.
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


class Results:
    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []

    def record(self, name: str, problems: list[str], detail: str = "") -> bool:
        if problems:
            self.failed.append(name)
            print(f"FAIL {name}")
            for p in problems:
                print(f"     - {p}")
        else:
            self.passed += 1
            print(f"ok   {name}{': ' + detail if detail else ''}")
        sys.stdout.flush()
        return not problems


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        raise SystemExit(f"{name} not found on PATH nor next to {sys.executable}")
    return found


def run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


class Server:
    """dakota-server on free loopback ports, from the repository root (./knowledge)."""

    def __init__(self, binary: Path, name: str, extra_args: list[str] | None = None, env: dict | None = None):
        self.grpc_port, self.admin_port = free_port(), free_port()
        self.addr = f"127.0.0.1:{self.grpc_port}"
        self.log_path = Path(tempfile.gettempdir()) / f"dakota-interop-{name}-{os.getpid()}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SERPER_", "DAKOTA_", "OTEL_", "REDIS_"))}
        full_env.update(env or {})
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [str(binary), "--grpc-addr", self.addr, "--admin-addr", f"127.0.0.1:{self.admin_port}", *(extra_args or [])],
            cwd=REPO, env=full_env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.channel = grpc.insecure_channel(self.addr)
        deadline = time.monotonic() + 30
        health = health_pb2_grpc.HealthStub(self.channel)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{binary} exited with {self.proc.returncode}; log: {self.log_path}")
            try:
                if health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{binary} not SERVING within 30 s; log: {self.log_path}")
            time.sleep(0.1)

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def stop(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def proto_rpcs() -> list[str]:
    return re.findall(r"^\s*rpc\s+(\w+)\s*\(", PROTO.read_text(), re.M)


# ----------------------------------------------------------------------------------------------
# grpcurl and buf curl


def check_grpcurl(addr: str) -> tuple[list[str], str]:
    grpcurl = tool("grpcurl")
    problems = []
    listed = run([grpcurl, "-plaintext", addr, "list"])
    services = set(listed.stdout.split())
    for need in (CONTENT_SERVICE, "grpc.health.v1.Health"):
        if need not in services:
            problems.append(f"`grpcurl list` lacks {need}: rc={listed.returncode} out={listed.stdout!r} err={listed.stderr!r}")
    described = run([grpcurl, "-plaintext", addr, "describe", CONTENT_SERVICE])
    for rpc in proto_rpcs():
        if not re.search(rf"\brpc {rpc} \(", described.stdout):
            problems.append(f"`grpcurl describe {CONTENT_SERVICE}` lacks rpc {rpc}: rc={described.returncode} {described.stderr.strip()}")
    checks = []
    for service in ("", CONTENT_SERVICE):
        out = run([grpcurl, "-plaintext", "-d", json.dumps({"service": service}), addr, "grpc.health.v1.Health/Check"])
        try:
            status = json.loads(out.stdout).get("status")
        except json.JSONDecodeError:
            status = None
        checks.append(f"{service or '(server)'}={status}")
        if status != "SERVING":
            problems.append(f"grpcurl Health/Check {service!r}: {out.stdout.strip()} {out.stderr.strip()}")
    return problems, f"{len(services)} services listed, {len(proto_rpcs())} RPCs described, health {', '.join(checks)}"


def check_buf_curl(addr: str) -> tuple[list[str], str]:
    buf = tool("buf")
    base = [buf, "curl", "--protocol", "grpc", "--http2-prior-knowledge"]
    problems = []
    listed = run([*base, "--list-methods", f"http://{addr}"])
    for rpc in proto_rpcs():
        if f"{CONTENT_SERVICE}/{rpc}" not in listed.stdout.split():
            problems.append(f"buf curl --list-methods (reflection v1) lacks {CONTENT_SERVICE}/{rpc}: {listed.stdout.strip()!r} {listed.stderr.strip()!r}")
    queries = ["duration risk", "private credit direct lending"]
    out = run([*base, "-d", json.dumps({"queries": queries, "max_results": 3}), f"http://{addr}/{CONTENT_SERVICE}/SearchKnowledgeBase"])
    hits = 0
    try:
        results = json.loads(out.stdout)["results"]
        if [r["query"] for r in results] != queries:
            problems.append(f"SearchKnowledgeBase answered queries {[r['query'] for r in results]}, asked {queries}")
        for r in results:
            if not r.get("hits") or not all(h.get("title") and h.get("url") for h in r["hits"]):
                problems.append(f"SearchKnowledgeBase: query {r['query']!r} has no hits with title and url: {r}")
            hits += len(r.get("hits", []))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        problems.append(f"buf curl SearchKnowledgeBase: {e}: rc={out.returncode} out={out.stdout[:300]!r} err={out.stderr.strip()!r}")
    return problems, f"{len(proto_rpcs())} methods listed over reflection v1; SearchKnowledgeBase {len(queries)} queries, {hits} hits"


# ----------------------------------------------------------------------------------------------
# The Python client generated from proto/


def generate_python_client(out_dir: Path):
    import importlib
    from importlib import resources

    from grpc_tools import protoc

    well_known = str(resources.files("grpc_tools") / "_proto")
    rc = protoc.main(["grpc_tools.protoc", f"-I{REPO / 'proto'}", f"-I{well_known}",
                      f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", str(PROTO)])
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc failed with {rc}")
    sys.path.insert(0, str(out_dir))
    pb2 = importlib.import_module("dakota.content.v1.content_pb2")
    pb2_grpc = importlib.import_module("dakota.content.v1.content_pb2_grpc")
    return pb2, pb2_grpc


def check_events(events: list[dict]) -> list[str]:
    """A Generate stream (events as dicts: MessageToDict-like, with 'kind' = the oneof name)."""
    problems = []
    if not events:
        return ["no events"]
    seqs = [e["sequence"] for e in events]
    if seqs != list(range(1, len(events) + 1)):
        problems.append(f"sequence numbers not 1..{len(events)} without gaps: {seqs[:8]}...{seqs[-3:]}")
    progress = [e["progress"] for e in events]
    if any(b < a for a, b in zip(progress, progress[1:])) or not all(0 <= p <= 100 for p in progress):
        problems.append(f"progress decreases or leaves 0-100: {progress}")
    if len({e["job_id"] for e in events}) != 1:
        problems.append(f"events of several jobs: {sorted({e['job_id'] for e in events})}")
    if events[0]["kind"] != "job_started":
        problems.append(f"first event is {events[0]['kind']}, not job_started")
        return problems
    terminal = [i for i, e in enumerate(events) if e["kind"] in ("completed", "failed")]
    if terminal != [len(events) - 1]:
        problems.append(f"final events at positions {terminal} of {len(events)}: expected exactly one, last")
    if events[-1]["kind"] != "completed":
        problems.append(f"the stream ends with {events[-1]['kind']}: {events[-1].get('body')}")
    plan = events[0]["body"]["phases"]
    order = [p["phase"] for p in plan]
    agents = {p["phase"]: set(p["agents"]) for p in plan}
    started = [e["body"]["phase"] for e in events if e["kind"] == "phase_started"]
    completed = [e["body"]["phase"] for e in events if e["kind"] == "phase_completed"]
    unknown = [p for p in started if p not in order]
    if unknown:
        problems.append(f"phases not in the plan: {unknown}")
    else:
        idx = [order.index(p) for p in started]
        if idx != sorted(idx):
            problems.append(f"phases started out of plan order: {started} (plan {order})")
    missing = [p["phase"] for p in plan if not p["conditional"] and p["phase"] not in started]
    if missing:
        problems.append(f"planned phases never started: {missing}")
    if started != completed:
        problems.append(f"phases started {started} but completed {completed}")
    current = None
    for e in events:
        if e["kind"] == "phase_started":
            if current is not None:
                problems.append(f"phase {e['body']['phase']} started while {current} still ran")
            current = e["body"]["phase"]
        elif e["kind"] == "phase_completed":
            current = None
        elif e["kind"] in ("agent_started", "agent_completed"):
            b = e["body"]
            if b["phase"] != current or b["agent"] not in agents.get(b["phase"], set()):
                problems.append(f"{e['kind']} {b['agent']} in phase {b['phase']} (running: {current}, planned agents {sorted(agents.get(b['phase'], []))})")
    if not any(e["kind"] == "content_delta" for e in events):
        problems.append("no content_delta: the writer's text never streamed")
    if events[-1]["kind"] == "completed":
        article = events[-1]["body"].get("article") or {}
        if article.get("job_id") != events[0]["job_id"]:
            problems.append(f"the article's job_id {article.get('job_id')} is not the job's {events[0]['job_id']}")
        if not str(article.get("markdown", "")).startswith("# ") or not article.get("title"):
            problems.append(f"the article has no title / '# Title' markdown: {str(article.get('markdown'))[:80]!r}")
        if not article.get("sources"):
            problems.append("the article has no sources")
        if not (article.get("metadata", {}).get("content", {}).get("word_count", 0) > 0):
            problems.append("the article's metadata has no word count")
    return problems


def event_dicts(stream) -> list[dict]:
    from google.protobuf.json_format import MessageToDict

    out = []
    for ev in stream:
        kind = ev.WhichOneof("event")
        out.append({
            "job_id": ev.job_id, "sequence": ev.sequence, "progress": ev.progress, "kind": kind,
            "body": MessageToDict(getattr(ev, kind), preserving_proto_field_name=True, always_print_fields_with_no_presence=True),
        })
    return out


def check_python_client(res: Results, server: Server, pb2, pb2_grpc) -> None:
    stub = pb2_grpc.ContentServiceStub(server.channel)
    try:
        events = event_dicts(stub.Generate(pb2.GenerateRequest(topic="Private credit", word_count=800), timeout=120))
        problems = check_events(events)
    except grpc.RpcError as e:
        events, problems = [], [f"Generate: {e.code()} {e.details()}"]
    phases = [e["body"]["phase"] for e in events if e["kind"] == "phase_started"]
    res.record("python client (grpcio-tools from proto/): Generate event stream", problems,
               f"{len(events)} events, phases {' > '.join(phases)}, completed" if events else "")
    if not events or events[-1]["kind"] != "completed":
        return
    job_id = events[0]["job_id"]
    problems = []
    try:
        article = stub.GetArticle(pb2.GetArticleRequest(job_id=job_id), timeout=10)
        if article.title != events[-1]["body"]["article"]["title"]:
            problems.append(f"GetArticle title {article.title!r} differs from the completed event's")
        replay = event_dicts(stub.WatchJob(pb2.WatchJobRequest(job_id=job_id, after_sequence=len(events) - 2), timeout=10))
        if [e["sequence"] for e in replay] != [len(events) - 1, len(events)] or replay[-1]["kind"] != "completed":
            problems.append(f"WatchJob after {len(events) - 2}: {[(e['sequence'], e['kind']) for e in replay]}")
        stub.GetArticle(pb2.GetArticleRequest(job_id=str(uuid.uuid4())), timeout=10)
        problems.append("GetArticle of an unknown job did not fail")
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            problems.append(f"{e.code()} {e.details()}")
    res.record("python client: GetArticle, WatchJob replay, NOT_FOUND for an unknown job", problems)

    # A job cancelled while it runs ends with a `failed` CANCELLED event (and is counted in
    # dakota_jobs_failed_total, which the alerts and the dashboard read).
    problems = []
    try:
        stream = stub.Generate(pb2.GenerateRequest(topic="Infrastructure debt for insurers", word_count=10000,
                                                   idempotency_key=str(uuid.uuid4())), timeout=120)
        first = next(stream)
        cancelled = stub.CancelJob(pb2.CancelJobRequest(job_id=first.job_id), timeout=10)
        rest = event_dicts(stream)
        if pb2.JobState.Name(cancelled.state) != "JOB_STATE_CANCELLED":
            problems.append(f"CancelJob right after job_started answered {pb2.JobState.Name(cancelled.state)}")
        if not rest or rest[-1]["kind"] != "failed" or rest[-1]["body"].get("code") != grpc.StatusCode.CANCELLED.value[0]:
            problems.append(f"the cancelled job's stream ends with {rest[-1] if rest else 'nothing'}")
    except grpc.RpcError as e:
        problems.append(f"{e.code()} {e.details()}")
    res.record("python client: CancelJob ends the stream with failed CANCELLED", problems)


def check_upstream_down(server: Server, pb2, pb2_grpc) -> list[str]:
    stub = pb2_grpc.ContentServiceStub(server.channel)
    problems = []
    events = event_dicts(stub.Generate(pb2.GenerateRequest(topic="Private credit", word_count=300), timeout=60))
    last = events[-1] if events else {}
    if last.get("kind") != "failed" or last["body"].get("code") != grpc.StatusCode.UNAVAILABLE.value[0]:
        problems.append(f"with the LLM unreachable the job ended with {last}")
    status = health_pb2_grpc.HealthStub(server.channel).Check(health_pb2.HealthCheckRequest(service=CONTENT_SERVICE), timeout=5).status
    if status != health_pb2.HealthCheckResponse.NOT_SERVING:
        problems.append(f"ContentService health is {health_pb2.HealthCheckResponse.ServingStatus.Name(status)} with the LLM breaker open")
    open_llm = [line for line in server.scrape().splitlines()
                if line.startswith("dakota_circuit_breaker_state{") and 'upstream="llm"' in line and 'state="open"' in line]
    if not open_llm or not open_llm[0].endswith(" 1"):
        problems.append("no dakota_circuit_breaker_state{upstream=\"llm\",state=\"open\"} 1 in the scrape")
    return problems


# ----------------------------------------------------------------------------------------------
# Metrics named by the alerts and the dashboard, against live scrapes


def exported_names(scrape: str) -> tuple[set[str], dict[str, str]]:
    samples, types = set(), {}
    for line in scrape.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            types[name] = kind
        elif line.startswith("# HELP "):
            types.setdefault(line.split()[2], "untyped")
        elif line and not line.startswith("#"):
            samples.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return samples, types


def metric_exported(name: str, samples: set[str], types: dict[str, str]) -> bool:
    if name in samples or name in types:
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and types.get(name[: -len(suffix)]) in ("histogram", "summary"):
            return True
    # OpenMetrics names a counter family without its `_total`.
    return name.endswith("_total") and types.get(name[:-6]) == "counter"


def check_metrics(referenced: dict[str, str], scrapes: list[str]) -> tuple[list[str], int]:
    samples, types = set(), {}
    for s in scrapes:
        a, b = exported_names(s)
        samples |= a
        types.update(b)
    missing: dict[str, list[str]] = {}
    names = set()
    for where, expr in referenced.items():
        for name in m.promql_metrics(expr):
            names.add(name)
            if name not in PROMETHEUS_SYNTHETIC and not metric_exported(name, samples, types):
                missing.setdefault(name, []).append(where)
    return [f"{name}: not in the live scrape, used by {', '.join(sorted(set(w)))}" for name, w in sorted(missing.items())], len(names)


# ----------------------------------------------------------------------------------------------
# Ports and environment variables of the deployment files, against --help


def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(num) * units[unit]
    return total


def parse_dockerfile(text: str) -> dict:
    text = re.sub(r"\\\n", " ", text)
    runtime = text.split("\nFROM ")[-1]  # the last stage is the image
    env: dict[str, str] = {}
    for line in runtime.splitlines():
        if line.startswith("ENV "):
            for k, v in re.findall(r"([A-Z0-9_]+)=(\S+)", line):
                env[k] = v
    expose = {int(p.split("/")[0]) for line in runtime.splitlines() if line.startswith("EXPOSE ") for p in line.split()[1:]}
    hc = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])", runtime, re.M)
    return {"env": env, "expose": expose, "healthcheck": json.loads(hc.group(1)) if hc else None}


def check_ports_env(server_flags: dict, health_flags: dict, extra_envs: set[str], docs: list[dict],
                    secret_template: dict, compose: dict, prom_targets: list[str], dockerfile: dict) -> list[str]:
    problems = []
    documented = m.help_envs(server_flags)
    allowed = documented | extra_envs
    default_grpc = m.port_of(server_flags.get("--grpc-addr", {}).get("default"))
    default_admin = m.port_of(server_flags.get("--admin-addr", {}).get("default"))
    if not default_grpc or not default_admin:
        return [f"--help documents no default for --grpc-addr/--admin-addr: {server_flags.get('--grpc-addr')} {server_flags.get('--admin-addr')}"]

    def ports_from(env: dict) -> tuple[int, int]:
        return (m.port_of(env.get("DAKOTA_GRPC_ADDR")) or default_grpc, m.port_of(env.get("DAKOTA_ADMIN_ADDR")) or default_admin)

    # Kubernetes: the server's Deployment.
    deps = m.by_kind(docs, "Deployment", "dakota-server")
    if not deps:
        return problems + ["k8s: no Deployment dakota-server"]
    pod = deps[0]["spec"]["template"]["spec"]
    container = next((c for c in pod["containers"] if c["name"] == "dakota-server"), pod["containers"][0])
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            cms = m.by_kind(docs, "ConfigMap", source["configMapRef"]["name"])
            if not cms:
                problems.append(f"k8s: envFrom ConfigMap {source['configMapRef']['name']} is not in the manifests")
            for cm in cms:
                env.update(cm.get("data", {}))
        if "secretRef" in source and source["secretRef"]["name"] != secret_template["metadata"]["name"]:
            problems.append(f"k8s: envFrom Secret {source['secretRef']['name']} is not the template's {secret_template['metadata']['name']}")
    for e in container.get("env", []):
        env[e["name"]] = e.get("value", "")
    for name in sorted(set(env) - allowed):
        problems.append(f"k8s: the server's environment sets {name}, which `dakota-server --help` does not document")
    for name in sorted(set(secret_template.get("stringData", {})) | set(secret_template.get("data", {}))):
        if name not in documented:
            problems.append(f"k8s: the Secret template has {name}, which `dakota-server --help` does not document")
    grpc_port, admin_port = ports_from(env)
    cports = {p["containerPort"]: p.get("name") for p in container.get("ports", [])}
    named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    for port, what in ((grpc_port, "gRPC"), (admin_port, "admin")):
        if port not in cports:
            problems.append(f"k8s: the {what} port {port} (DAKOTA_*_ADDR / --help) is not a containerPort {sorted(cports)}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = container.get(probe)
        if not p:
            problems.append(f"k8s: no {probe}")
        elif "grpc" not in p:
            problems.append(f"k8s: {probe} is not a native gRPC probe: {p}")
        elif p["grpc"].get("port") != grpc_port:
            problems.append(f"k8s: {probe} checks port {p['grpc'].get('port')}, the server's gRPC port is {grpc_port}")
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = duration_seconds(env.get("DAKOTA_SHUTDOWN_GRACE") or server_flags.get("--shutdown-grace", {}).get("default") or "0s")
    if pod.get("terminationGracePeriodSeconds", 30) <= pre_stop + grace:
        problems.append(f"k8s: terminationGracePeriodSeconds {pod.get('terminationGracePeriodSeconds', 30)} is not above preStop {pre_stop} s + shutdown grace {grace} s")
    svc_targets = {}
    for svc in m.by_kind(docs, "Service", "dakota-server"):
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            resolved = named.get(target) if isinstance(target, str) else target
            svc_targets[p["name"]] = resolved
            if resolved not in (grpc_port, admin_port):
                problems.append(f"k8s: Service port {p['name']} targets {target!r}, neither the gRPC nor the admin port")
            if p.get("appProtocol") == "grpc" and resolved != grpc_port:
                problems.append(f"k8s: Service port {p['name']} has appProtocol grpc but targets {resolved}")
        if not any(p.get("appProtocol") == "grpc" for p in svc["spec"]["ports"]):
            problems.append("k8s: no Service port with appProtocol grpc")
    for sm in m.by_kind(docs, "ServiceMonitor"):
        for ep in sm["spec"]["endpoints"]:
            if svc_targets.get(ep.get("port")) != admin_port or ep.get("path", "/metrics") != "/metrics":
                problems.append(f"k8s: ServiceMonitor scrapes port {ep.get('port')} path {ep.get('path')}, not the admin port {admin_port} /metrics")
    for np in m.by_kind(docs, "NetworkPolicy", "dakota-server"):
        ports = {p["port"] for rule in np["spec"].get("ingress", []) for p in rule.get("ports", [])}
        if ports != {grpc_port, admin_port}:
            problems.append(f"k8s: NetworkPolicy lets in {sorted(ports)}, the server listens on {[grpc_port, admin_port]}")

    # compose.yaml
    server = compose.get("services", {}).get("dakota-server", {})
    cenv = m.compose_env(server)
    for name in sorted(set(cenv) - allowed):
        problems.append(f"compose: dakota-server's environment has {name}, which `dakota-server --help` does not document")
    c_grpc, c_admin = ports_from({k: v or "" for k, v in cenv.items()})
    published = {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in server.get("ports", [])}
    if published != {c_grpc, c_admin}:
        problems.append(f"compose: dakota-server publishes container ports {sorted(published)}, it listens on {[c_grpc, c_admin]}")
    if not any(t == f"dakota-server:{c_admin}" for t in prom_targets):
        problems.append(f"compose: Prometheus scrapes {prom_targets}, not dakota-server:{c_admin}")

    # Dockerfile
    for name in sorted(set(dockerfile["env"]) - allowed):
        problems.append(f"Dockerfile: ENV {name} is not documented by `dakota-server --help`")
    d_grpc, d_admin = ports_from(dockerfile["env"])
    if dockerfile["expose"] != {d_grpc, d_admin}:
        problems.append(f"Dockerfile: EXPOSE {sorted(dockerfile['expose'])}, the server listens on {[d_grpc, d_admin]}")
    hc = dockerfile["healthcheck"]
    if not hc or hc[:2] != ["/usr/local/bin/dakota", "health"]:
        problems.append(f"Dockerfile: HEALTHCHECK is not `dakota health` in exec form: {hc}")
    else:
        for arg in hc[2:]:
            if arg.startswith("--") and arg not in health_flags:
                problems.append(f"Dockerfile: HEALTHCHECK passes {arg}, which `dakota health --help` does not document")
        if "--server" in hc and m.port_of(hc[hc.index("--server") + 1]) != d_grpc:
            problems.append(f"Dockerfile: HEALTHCHECK checks {hc[hc.index('--server') + 1]}, the gRPC port is {d_grpc}")
    return problems


# ----------------------------------------------------------------------------------------------
# Self-test: every pure check, fed a broken input, must say so


def self_test(res: Results, good_events: list[dict], referenced: dict[str, str], scrapes: list[str], ctx: dict) -> None:
    """Each mutation must produce a problem that names it (`needle`), so a problem the real
    files already have (say, a metric not landed yet) cannot stand in for it."""
    failures = []
    tried = 0

    def expect_fail(what: str, problems: list[str], needle: str) -> None:
        nonlocal tried
        tried += 1
        if not any(needle in p for p in problems):
            failures.append(f"the check did not notice {what} (no problem mentioning {needle!r}; got {problems})")

    if check_events(good_events):
        failures.append(f"the baseline stream itself fails: {check_events(good_events)}")
    else:
        ev = copy.deepcopy(good_events)
        del ev[len(ev) // 2]
        expect_fail("a missing event", check_events(ev), "without gaps")
        ev = copy.deepcopy(good_events)
        starts = [i for i, e in enumerate(ev) if e["kind"] == "phase_started"]
        ev[starts[1]]["body"]["phase"], ev[starts[-1]]["body"]["phase"] = ev[starts[-1]]["body"]["phase"], ev[starts[1]]["body"]["phase"]
        expect_fail("phases out of order", check_events(ev), "out of plan order")
        expect_fail("no final completed event", check_events(copy.deepcopy(good_events[:-1])), "final events")
        ev = copy.deepcopy(good_events)
        ev[-1]["body"]["article"]["markdown"] = "no title"
        expect_fail("an article without '# Title'", check_events(ev), "no title")
        ev = copy.deepcopy(good_events)
        ev[5]["progress"], ev[6]["progress"] = 90, 10
        expect_fail("progress going back", check_events(ev), "progress decreases")
    expect_fail("an alert on a metric the server does not export",
                check_metrics({**referenced, "alert Bogus": "rate(dakota_not_exported_total[5m]) > 0"}, scrapes)[0],
                "dakota_not_exported_total")
    expect_fail("a histogram suffix on a counter",
                check_metrics({"alert Bogus": "dakota_jobs_started_total_bucket"}, scrapes)[0], "dakota_jobs_started_total_bucket")

    def ports_env(mutate) -> list[str]:
        c = copy.deepcopy(ctx)
        mutate(c)
        return check_ports_env(**c)

    def container(c):
        return m.by_kind(c["docs"], "Deployment", "dakota-server")[0]["spec"]["template"]["spec"]["containers"][0]

    def config_maps(c):
        return [cm for cm in m.by_kind(c["docs"], "ConfigMap") if cm["metadata"]["name"].startswith("dakota-config")]

    expect_fail("a readiness probe on another port",
                ports_env(lambda c: container(c)["readinessProbe"]["grpc"].update(port=50052)), "readinessProbe checks port 50052")
    expect_fail("a gRPC address the containerPorts lack",
                ports_env(lambda c: [cm["data"].update(DAKOTA_GRPC_ADDR="0.0.0.0:50099") for cm in config_maps(c)]), "50099")
    expect_fail("an undocumented variable in the ConfigMap",
                ports_env(lambda c: [cm["data"].update(DAKOTA_NOT_A_FLAG="1") for cm in config_maps(c)]), "DAKOTA_NOT_A_FLAG")
    expect_fail("an undocumented key in the Secret template",
                ports_env(lambda c: c["secret_template"]["stringData"].update(OPENAI_KEY="")), "OPENAI_KEY")
    expect_fail("an undocumented variable in compose.yaml",
                ports_env(lambda c: c["compose"]["services"]["dakota-server"]["environment"].update(DAKOTA_GRPC_PORT="1")), "DAKOTA_GRPC_PORT")
    expect_fail("a compose port the server does not listen on",
                ports_env(lambda c: c["compose"]["services"]["dakota-server"].update(ports=["50051:50051", "8001:8001"])), "8001")
    expect_fail("Prometheus scraping another port", ports_env(lambda c: c.update(prom_targets=["dakota-server:9100"])), "9100")
    expect_fail("a Service port aimed elsewhere",
                ports_env(lambda c: m.by_kind(c["docs"], "Service", "dakota-server")[0]["spec"]["ports"][0].update(targetPort=9999)), "9999")
    expect_fail("a NetworkPolicy without the admin port",
                ports_env(lambda c: m.by_kind(c["docs"], "NetworkPolicy", "dakota-server")[0]["spec"]["ingress"][0].update(ports=[{"port": 50051}])),
                "NetworkPolicy lets in")
    expect_fail("a Dockerfile EXPOSE of another port", ports_env(lambda c: c["dockerfile"].update(expose={50051, 9000})), "EXPOSE")
    expect_fail("a HEALTHCHECK flag `dakota health` lacks",
                ports_env(lambda c: c["dockerfile"].update(healthcheck=["/usr/local/bin/dakota", "health", "--addr", "x"])), "--addr")
    expect_fail("a grace period shorter than the drain",
                ports_env(lambda c: m.by_kind(c["docs"], "Deployment")[0]["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=30)),
                "terminationGracePeriodSeconds")
    compose = copy.deepcopy(ctx["compose"])
    compose["services"]["redis"]["command"] = ["redis-server"]
    expect_fail("Redis without maxmemory in compose", m.check_compose(compose), "--maxmemory")
    compose["services"]["dakota-server"]["environment"]["OPENAI_API_KEY"] = ""
    expect_fail("an empty API key in compose", m.check_compose(compose), "OPENAI_API_KEY")
    docs = copy.deepcopy(ctx["docs"])
    m.by_kind(docs, "ServiceMonitor")[0]["spec"]["endpoints"][0]["port"] = "metrics"
    expect_fail("a ServiceMonitor naming a port the Service lacks", m.check_crds(docs), "'metrics'")
    if shutil.which("promtool"):
        docs = copy.deepcopy(ctx["docs"])
        m.by_kind(docs, "PrometheusRule")[0]["spec"]["groups"][0]["rules"][0]["expr"] = "sum(rate(dakota_jobs_started_total[5m]) >"
        expect_fail("a PromQL syntax error", m.check_crds(docs), "promtool check rules failed")
    res.record("self-test: each check reports a broken input", failures, f"{tried} broken inputs, each reported")


# ----------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server-bin", type=Path, default=REPO / "target/debug/dakota-server")
    ap.add_argument("--cli-bin", type=Path, default=REPO / "target/debug/dakota")
    args = ap.parse_args()
    server_bin, cli_bin = args.server_bin.resolve(), args.cli_bin.resolve()
    res = Results()

    server_flags = m.parse_help(run([str(server_bin), "--help"]).stdout)
    health_flags = m.parse_help(run([str(cli_bin), "health", "--help"]).stdout)
    if not server_flags or not health_flags:
        print(f"cannot read --help of {server_bin} / {cli_bin}")
        return 1
    rendered, how = m.render_k8s(REPO / "k8s")
    docs = m.load_docs(rendered)
    dashboard = json.loads((REPO / "k8s/dashboards/dakota-overview.json").read_text())
    referenced = {**m.alert_exprs(docs), **m.dashboard_exprs(dashboard)}
    print(f"server {server_bin}; k8s/ rendered with {how}; {len(referenced)} alert and panel expressions")

    workdir = Path(tempfile.mkdtemp(prefix="dakota-interop-"))
    pb2, pb2_grpc = generate_python_client(workdir)
    good_events: list[dict] = []
    scrapes: list[str] = []
    server = Server(server_bin, "offline")
    try:
        res.record("grpcurl (reflection v1alpha): list, describe, health", *check_grpcurl(server.addr))
        res.record("buf curl (reflection v1): list methods, SearchKnowledgeBase", *check_buf_curl(server.addr))
        check_python_client(res, server, pb2, pb2_grpc)
        good_events = event_dicts(pb2_grpc.ContentServiceStub(server.channel).Generate(
            pb2.GenerateRequest(topic="Liquidity tiers for pension funds", word_count=300), timeout=60))
        scrapes.append(server.scrape())
    finally:
        server.stop()

    # The LLM at a loopback port nobody listens on: one attempt, the breaker opens at once.
    closed = free_port()
    down = Server(server_bin, "upstream-down", ["--max-attempts", "1", "--breaker-threshold", "1"],
                  {"OPENAI_BASE_URL": f"http://127.0.0.1:{closed}/v1"})
    try:
        res.record("upstream down: job UNAVAILABLE, breaker open, ContentService NOT_SERVING", check_upstream_down(down, pb2, pb2_grpc))
        scrapes.append(down.scrape())
    finally:
        down.stop()

    problems, count = check_metrics(referenced, scrapes)
    res.record("metrics: every metric of the alerts and the dashboard is in a live scrape", problems,
               f"{count} metric names in {len(referenced)} expressions, scrapes of 2 servers")

    extra_envs, extra_problems = m.extra_envs_in_binary(server_bin)
    secret_template = yaml.safe_load((REPO / "k8s/secret.example.yaml").read_text())
    ctx = {
        "server_flags": server_flags, "health_flags": health_flags, "extra_envs": extra_envs, "docs": docs,
        "secret_template": secret_template, "compose": m.load_compose(),
        "prom_targets": m.prometheus_targets(REPO / "deploy/compose/prometheus.yml"),
        "dockerfile": parse_dockerfile((REPO / "Dockerfile").read_text()),
    }
    res.record("ports and env: k8s/, compose.yaml, Dockerfile against `dakota-server --help`",
               extra_problems + check_ports_env(**ctx),
               f"{len(m.help_envs(server_flags))} documented variables (+ {', '.join(sorted(extra_envs))} read by the server outside its flags)")

    self_test(res, good_events, referenced, scrapes, ctx)
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"{res.passed} passed, {len(res.failed)} failed")
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
