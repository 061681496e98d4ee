#!/usr/bin/env python3
"""Static checks of deploy/ (run by deploy/ops/check.sh).

    opscheck.py exported                 list metric names the Rust code exports
    opscheck.py alerts                   alerts.yml: names, annotations, runbook links
    opscheck.py dashboards               Grafana dashboards + provisioning
    opscheck.py k8s                      cross-checks of deploy/k8s
    opscheck.py k8s-scaledobjects        the KEDA ScaledObjects as JSON lines (for keda_validate.mjs)
    opscheck.py k8s-schemas WHEEL OUT V… prepare kubeconform schemas from kubernetes-validate
    opscheck.py compose SCHEMA           compose.yaml against the compose-spec schema + checks
    opscheck.py dockerfile BIN_DIR       deploy/Dockerfile stages, user, runtime libraries
    opscheck.py exprs                    every PromQL expression (alerts, dashboards), as JSON

Prints "WARN: ..." for findings that are not failures; exits non-zero on failure.
Metric names "the code exports" are the "switchboard_..." string literals in
runtime/src, broker/src, workers/src and benches/src; names passed to histogram!() also
allow the _bucket/_sum/_count series.
PyYAML and jsonschema come from deploy/ops/.tools/venv (tools.sh).
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
RUST_SOURCES = [ROOT / "runtime/src", ROOT / "broker/src", ROOT / "workers/src", ROOT / "benches/src"]
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Series Prometheus makes itself that our rules and dashboards may use.
PROMETHEUS_SERIES = {"up"}


class Failures:
    def __init__(self) -> None:
        self.items: list[str] = []

    def __call__(self, message: str) -> None:
        self.items.append(message)
        print(f"error: {message}")

    def exit(self) -> None:
        if self.items:
            print(f"{len(self.items)} problem(s)")
            sys.exit(1)


def load_yaml_all(path: pathlib.Path) -> list:
    import yaml

    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


# --------------------------------------------------------------------- names
def exported_metrics() -> tuple[set[str], set[str]]:
    """Metric names in string literals of the Rust sources, and which are histograms."""
    names: set[str] = set()
    histograms: set[str] = set()
    for base in RUST_SOURCES:
        for path in base.rglob("*.rs"):
            text = path.read_text()
            names.update(re.findall(r'"(switchboard_[a-z0-9_]+)"', text))
            histograms.update(re.findall(r'histogram!\s*\(\s*"(switchboard_[a-z0-9_]+)"', text))
    return names, histograms


def allowed_names() -> set[str]:
    names, histograms = exported_metrics()
    allowed = set(names) | PROMETHEUS_SERIES
    for h in histograms:
        allowed.update(h + s for s in HISTOGRAM_SUFFIXES)
    return allowed


KEYWORDS = {
    "and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset", "inf", "nan", "atan2", "start", "end",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (a small PromQL scanner, no full parser)."""
    found = set(re.findall(r'__name__\s*=~?\s*"([A-Za-z_:][A-Za-z0-9_:]*)"', expr))
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+-?[0-9a-zA-Z$_]+", " ", s)
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        token, start, end = m.group(0), m.start(), m.end()
        before = s[start - 1] if start else " "
        if before in "$." or before.isdigit():
            continue  # a Grafana variable or part of a number (1e3)
        if token.lower() in KEYWORDS:
            continue
        if s[end:].lstrip().startswith("("):
            continue  # a function or aggregation
        found.add(token)
    return found


def label_values_metric(query: str) -> set[str]:
    """The metric of a Grafana label_values(metric, label) query."""
    m = re.match(r"\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$", query, re.S)
    if m:
        return promql_metric_names(m.group(1))
    m = re.match(r"\s*label_values\(\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$", query)
    if m:
        return set()
    return promql_metric_names(query)


# --------------------------------------------------------------------- alerts
def github_anchor(heading: str) -> str:
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


def doc_anchors(path: pathlib.Path) -> set[str]:
    anchors = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and (m := re.match(r"#{1,6}\s+(.*)", line)):
            anchors.add(github_anchor(m.group(1)))
    return anchors


def alert_rules() -> list[dict]:
    (doc,) = load_yaml_all(DEPLOY / "prometheus/alerts.yml")
    return [r for g in doc["groups"] for r in g["rules"]]


def check_alerts() -> None:
    fail = Failures()
    allowed = allowed_names()
    anchors = doc_anchors(ROOT / "docs/operations.md")
    rules = alert_rules()
    names = [r.get("alert") for r in rules]
    if len(set(names)) != len(names):
        fail(f"duplicate alert names: {names}")
    for rule in rules:
        alert = rule.get("alert", "<record rule>")
        for key in ("summary", "description", "runbook_url"):
            if not str(rule.get("annotations", {}).get(key, "")).strip():
                fail(f"{alert}: annotation {key} is missing")
        if "severity" not in rule.get("labels", {}):
            fail(f"{alert}: label severity is missing")
        runbook = rule.get("annotations", {}).get("runbook_url", "")
        m = re.fullmatch(r"docs/operations\.md#([\w\-]+)", runbook)
        if not m:
            fail(f"{alert}: runbook_url {runbook!r} is not docs/operations.md#<section>")
        elif m.group(1) not in anchors:
            fail(f"{alert}: runbook_url section #{m.group(1)} is not a heading of docs/operations.md")
        unknown = promql_metric_names(rule["expr"]) - allowed
        if unknown:
            fail(f"{alert}: expression names metrics the code does not export: {sorted(unknown)}")
        print(f"  {alert}: {sorted(promql_metric_names(rule['expr']))}")
    # The alerts the operations issue asks for all exist as rules.
    required = {"SwitchboardIngestErrorRatioHigh", "SwitchboardIngestAckLatencyHigh",
                "SwitchboardConsumerLagGrowing", "SwitchboardDeadLetters", "SwitchboardNoWorkers",
                "SwitchboardDestinationCircuitOpen"}
    missing = required - set(names)
    if missing:
        fail(f"alerts.yml lacks the rules {sorted(missing)}")
    print(f"{len(rules)} alert rules checked against {len(allowed)} exported series names")
    fail.exit()


# --------------------------------------------------------------------- dashboards
def dashboard_exprs() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) for every panel query and variable."""
    out = []
    for path in sorted((DEPLOY / "grafana/dashboards").glob("*.json")):
        board = json.loads(path.read_text())

        def walk(panels):
            for p in panels:
                yield p
                yield from walk(p.get("panels", []))

        for panel in walk(board.get("panels", [])):
            for t in panel.get("targets", []):
                if "expr" in t:
                    out.append((path.name, panel.get("title", ""), t["expr"]))
        for var in board.get("templating", {}).get("list", []):
            if var.get("type") == "query":
                q = var.get("query")
                q = q.get("query") if isinstance(q, dict) else q
                out.append((path.name, f"variable ${var['name']}", q))
    return out


def check_dashboards() -> None:
    fail = Failures()
    allowed = allowed_names()
    boards = sorted((DEPLOY / "grafana/dashboards").glob("*.json"))
    if len(boards) < 3:
        fail(f"expected the ingest, routing and agents dashboards, found {[b.name for b in boards]}")
    uids = {}
    for path in boards:
        try:
            board = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            fail(f"{path.name}: invalid JSON: {e}")
            continue
        for key in ("uid", "title", "panels", "schemaVersion"):
            if key not in board:
                fail(f"{path.name}: no {key}")
        if board.get("uid") in uids:
            fail(f"{path.name}: uid {board['uid']} also in {uids[board['uid']]}")
        uids[board.get("uid")] = path.name
        ids = set()
        for panel in board.get("panels", []):
            if panel.get("id") in ids:
                fail(f"{path.name}: duplicate panel id {panel.get('id')}")
            ids.add(panel.get("id"))
            if panel.get("type") in ("row", "text"):
                continue
            if not panel.get("targets"):
                fail(f"{path.name}: panel {panel.get('title')!r} has no query")
            ds = panel.get("datasource", {})
            if ds.get("type") != "prometheus":
                fail(f"{path.name}: panel {panel.get('title')!r} does not use a Prometheus data source")
    agents = DEPLOY / "grafana/dashboards/switchboard-agents.json"
    if agents.exists():
        text = agents.read_text()
        for series in ("switchboard_agent_queue_depth", "switchboard_agent_wait_duration_seconds",
                       "switchboard_agent_assignments_total", "switchboard_agent_utilization_ratio"):
            if series not in text:
                fail(f"agents dashboard has no panel on {series}")
    exprs = dashboard_exprs()
    for board, title, expr in exprs:
        names = label_values_metric(expr) if title.startswith("variable ") else promql_metric_names(expr)
        if not names:
            fail(f"{board}: {title!r}: no metric found in {expr!r}")
        unknown = names - allowed
        if unknown:
            fail(f"{board}: {title!r}: names metrics the code does not export: {sorted(unknown)}")
    # Provisioning: a Prometheus data source with the uid the dashboards default to,
    # and a file provider whose path is where compose mounts the dashboards.
    import yaml

    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    sources = ds.get("datasources", [])
    if not any(s.get("type") == "prometheus" and s.get("uid") == "switchboard-prometheus" for s in sources):
        fail("provisioning: no prometheus data source with uid switchboard-prometheus")
    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/switchboard.yaml").read_text())
    paths = [p.get("options", {}).get("path") for p in prov.get("providers", [])]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = [v.split(":")[1] for v in compose["services"]["grafana"].get("volumes", []) if v.startswith("./grafana/dashboards")]
    if not set(paths) & set(mounts):
        fail(f"provisioning dashboard path {paths} is not where compose mounts the dashboards {mounts}")
    # The JSON is what deploy/grafana/generate.py writes.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(DEPLOY / "grafana/generate.py"), tmp], check=True,
                       capture_output=True, timeout=60)
        generated = {p.name: p.read_text() for p in pathlib.Path(tmp).glob("*.json")}
    committed = {p.name: p.read_text() for p in boards}
    if generated != committed:
        differ = sorted(n for n in set(generated) | set(committed) if generated.get(n) != committed.get(n))
        fail(f"dashboards differ from deploy/grafana/generate.py's output: {differ} (run it)")
    print(f"{len(boards)} dashboards, {len(exprs)} queries checked against {len(allowed)} exported series names")
    fail.exit()


def print_exprs() -> None:
    exprs = [{"source": "alerts.yml", "title": r["alert"], "expr": r["expr"]} for r in alert_rules()]
    exprs += [{"source": b, "title": t, "expr": e} for b, t, e in dashboard_exprs() if not t.startswith("variable ")]
    json.dump(exprs, sys.stdout)


# --------------------------------------------------------------------- k8s
def k8s_docs() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for d in load_yaml_all(path):
            docs.append((path.name, d))
    return docs


def configmap_files() -> dict[str, str]:
    """'<configmap or secret name>/<key>' -> file content."""
    files = {}
    for _, d in k8s_docs():
        if d.get("kind") == "ConfigMap":
            for k, v in d.get("data", {}).items():
                files[f"{d['metadata']['name']}/{k}"] = v
        if d.get("kind") == "Secret":
            for k, v in d.get("stringData", {}).items():
                files[f"{d['metadata']['name']}/{k}"] = v
    return files


def check_k8s() -> None:
    fail = Failures()
    docs = k8s_docs()
    by_kind: dict[str, dict[str, dict]] = {}
    for file, d in docs:
        if file == "kustomization.yaml":
            continue
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    # kustomization lists every manifest, and only existing files.
    (kust,) = load_yaml_all(DEPLOY / "k8s/kustomization.yaml")
    listed = set(kust.get("resources", []))
    present = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    if listed != present:
        fail(f"kustomization resources {sorted(listed)} != manifests {sorted(present)}")
    files = configmap_files()
    toml = {}
    for name, content in files.items():
        if name.endswith(".toml"):
            try:
                toml[name] = tomllib.loads(content)
            except tomllib.TOMLDecodeError as e:
                fail(f"{name}: invalid TOML: {e}")
    broker_cfg = toml.get("switchboard-broker-config/broker.toml", {})
    workers_cfg = toml.get("switchboard-workers-config/workers.toml", {})
    for name, cfg, keys in (("broker", broker_cfg, ("grpc_addr", "metrics_addr")), ("workers", workers_cfg, ("metrics_addr",))):
        for key in keys:
            if not str(cfg.get(key, "")).startswith("0.0.0.0:"):
                fail(f"{name} config: {key} = {cfg.get(key)!r}; in a pod it must listen on 0.0.0.0")

    def port(addr):
        return int(str(addr).rsplit(":", 1)[1])

    deployments = by_kind.get("Deployment", {})
    for dep_name, cfg_name, cfg in (
        ("switchboard-broker", "switchboard-broker-config", broker_cfg),
        ("switchboard-workers", "switchboard-workers-config", workers_cfg),
    ):
        dep = deployments.get(dep_name)
        if not dep:
            fail(f"no Deployment {dep_name}")
            continue
        pod = dep["spec"]["template"]
        spec = pod["spec"]
        if dep["spec"]["selector"]["matchLabels"].items() - pod["metadata"]["labels"].items():
            fail(f"{dep_name}: selector does not match the pod labels")
        if "replicas" in dep["spec"]:
            fail(f"{dep_name}: sets replicas, which fights its autoscaler")
        ann = pod["metadata"].get("annotations", {})
        if ann.get("prometheus.io/scrape") != "true" or int(ann.get("prometheus.io/port", 0)) != port(cfg.get("metrics_addr", ":0")):
            fail(f"{dep_name}: prometheus.io annotations do not point at metrics_addr {cfg.get('metrics_addr')}")
        (c,) = spec["containers"]
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        if ports.get("metrics") != port(cfg.get("metrics_addr", ":0")):
            fail(f"{dep_name}: container port metrics {ports.get('metrics')} != metrics_addr")
        if "http_addr" in cfg and cfg["http_addr"] != "off" and ports.get("http") != port(cfg["http_addr"]):
            fail(f"{dep_name}: container port http {ports.get('http')} != http_addr {cfg['http_addr']}")
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(part, {}):
                    fail(f"{dep_name}: no {part}.{r}")
        grace = spec.get("terminationGracePeriodSeconds", 30)
        sg = cfg.get("shutdown_grace", "10s")
        if not sg.endswith("s") or int(sg[:-1]) + 5 > grace:
            fail(f"{dep_name}: terminationGracePeriodSeconds {grace} leaves no room after shutdown_grace {sg}")
        if not spec.get("securityContext", {}).get("runAsNonRoot"):
            fail(f"{dep_name}: runAsNonRoot is not set")
        # --config points into the mounted ConfigMap.
        mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}

        def mounted_file(path):
            for vname, mpath in mounts.items():
                if path.startswith(mpath.rstrip("/") + "/"):
                    v = volumes[vname]
                    src = (v.get("configMap") or {}).get("name") or (v.get("secret") or {}).get("secretName")
                    return f"{src}/{path[len(mpath.rstrip('/')) + 1:]}"
            return None

        args = c.get("args", [])
        cfg_path = args[args.index("--config") + 1] if "--config" in args else None
        if mounted_file(cfg_path or "") != f"{cfg_name}/{dep_name.split('-')[1]}.toml":
            fail(f"{dep_name}: --config {cfg_path} is not the mounted {cfg_name}")
        for key in ("auth_file", "rules_file"):
            if key in cfg and mounted_file(cfg[key]) not in files:
                fail(f"{dep_name}: {key} {cfg[key]} is not a mounted ConfigMap/Secret file")
        if any("subPath" in m for m in c.get("volumeMounts", [])):
            fail(f"{dep_name}: subPath mounts never see ConfigMap/Secret updates")
        # Probes.
        if dep_name == "switchboard-broker":
            for probe in ("readinessProbe", "livenessProbe"):
                g = c.get(probe, {}).get("grpc")
                if not g or g.get("port") != port(cfg.get("grpc_addr", ":0")):
                    fail(f"{dep_name}: {probe} is not a gRPC probe on grpc_addr's port")
        else:
            for probe in ("readinessProbe", "livenessProbe"):
                h = c.get(probe, {}).get("httpGet", {})
                p = h.get("port")
                p = ports.get(p, p)
                if h.get("path") != "/metrics" or p != port(cfg.get("metrics_addr", ":0")):
                    fail(f"{dep_name}: {probe} is not an HTTP probe on /metrics at metrics_addr's port")
            if "grpc" in json.dumps(c):
                fail(f"{dep_name}: workers serve no gRPC, yet a probe or port says grpc")
    # Services select pods and target named ports that exist.
    for name, svc in by_kind.get("Service", {}).items():
        sel = svc["spec"].get("selector", {})
        targets = [d for d in deployments.values() if sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        if not targets:
            fail(f"Service {name}: selects no Deployment's pods")
        for d in targets:
            cports = {p["name"] for p in d["spec"]["template"]["spec"]["containers"][0].get("ports", [])}
            for p in svc["spec"]["ports"]:
                if isinstance(p.get("targetPort"), str) and p["targetPort"] not in cports:
                    fail(f"Service {name}: targetPort {p['targetPort']} is not a port of {d['metadata']['name']}")
    for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        sel = pdb["spec"]["selector"]["matchLabels"]
        if not any(sel.items() <= d["spec"]["template"]["metadata"]["labels"].items() for d in deployments.values()):
            fail(f"PodDisruptionBudget {name}: selects no Deployment's pods")
    for dep_name in deployments:
        if not any(pdb["spec"]["selector"]["matchLabels"].items() <= deployments[dep_name]["spec"]["template"]["metadata"]["labels"].items()
                   for pdb in by_kind.get("PodDisruptionBudget", {}).values()):
            fail(f"Deployment {dep_name}: no PodDisruptionBudget")
    hpas = by_kind.get("HorizontalPodAutoscaler", {})
    hpa = hpas.get("switchboard-broker")
    if not hpa or hpa["spec"]["scaleTargetRef"]["name"] not in deployments:
        fail("no HPA scaling the broker Deployment")
    elif not any(m.get("resource", {}).get("name") == "cpu" for m in hpa["spec"].get("metrics", [])):
        fail("the broker HPA does not scale on CPU")
    # KEDA: kafka trigger on the workers' group and topic, capped at the partitions.
    so = by_kind.get("ScaledObject", {}).get("switchboard-workers")
    if not so:
        fail("no ScaledObject switchboard-workers")
    else:
        spec = so["spec"]
        known = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "idleReplicaCount", "initialCooldownPeriod",
                 "minReplicaCount", "maxReplicaCount", "advanced", "triggers", "fallback"}
        if set(spec) - known:
            fail(f"ScaledObject: unknown spec fields {sorted(set(spec) - known)}")
        if spec["scaleTargetRef"]["name"] not in deployments:
            fail("ScaledObject: scaleTargetRef names no Deployment")
        partitions = broker_cfg.get("kafka", {}).get("topic_partitions")
        if spec.get("maxReplicaCount", 100) > (partitions or 0):
            fail(f"ScaledObject: maxReplicaCount {spec.get('maxReplicaCount')} exceeds the partition count {partitions}")
        if workers_cfg.get("kafka", {}).get("topic_partitions") != partitions:
            fail("broker and workers configs disagree on topic_partitions")
        kafka = [t for t in spec.get("triggers", []) if t.get("type") == "kafka"]
        if not kafka:
            fail("ScaledObject: no kafka trigger")
        for t in kafka:
            md = t.get("metadata", {})
            for key in ("bootstrapServers", "consumerGroup", "topic", "lagThreshold"):
                if key not in md:
                    fail(f"ScaledObject kafka trigger: no {key}")
            if md.get("consumerGroup") != workers_cfg.get("group_id"):
                fail(f"ScaledObject: consumerGroup {md.get('consumerGroup')} != workers group_id {workers_cfg.get('group_id')}")
            if md.get("topic") != workers_cfg.get("messages_topic") or md.get("topic") != broker_cfg.get("messages_topic"):
                fail("ScaledObject: topic differs from the configs' messages_topic")
            if md.get("bootstrapServers") != workers_cfg.get("kafka", {}).get("bootstrap_servers"):
                fail("ScaledObject: bootstrapServers differs from workers kafka.bootstrap_servers")
            if not str(md.get("lagThreshold", "")).isdigit():
                fail("ScaledObject: lagThreshold must be a whole number (as a string)")
    print(f"{len(docs)} documents cross-checked")
    fail.exit()


def k8s_docs_json() -> None:
    """The ScaledObjects as JSON lines, for the KEDA schema check (node)."""
    for _, d in k8s_docs():
        if d.get("kind") == "ScaledObject":
            print(json.dumps(d))


def prepare_k8s_schemas(wheel: str, out: str, versions: list[str]) -> None:
    """Extracts kubernetes-validate's '-local-strict' schemas for kubeconform.

    They reference '/api/_definitions.json' under a '$id' of https://kubernetes.io/...;
    kubeconform would try to fetch that. Dropping '$id' and making the references
    relative to the file lets it resolve them from the same directory, offline."""
    import zipfile

    def fix(node):
        if isinstance(node, dict):
            node.pop("$id", None)
            for k, v in list(node.items()):
                if k == "$ref" and isinstance(v, str) and v.startswith("/api/_definitions.json"):
                    node[k] = v[len("/api/"):]
                else:
                    fix(v)
        elif isinstance(node, list):
            for v in node:
                fix(v)

    outdir = pathlib.Path(out)
    with zipfile.ZipFile(wheel) as z:
        for version in versions:
            prefix = f"kubernetes_validate/kubernetes-json-schema/v{version}-local-strict/"
            members = [n for n in z.namelist() if n.startswith(prefix) and n.endswith(".json")]
            if not members:
                raise SystemExit(f"{wheel} has no schemas for Kubernetes {version}")
            target = outdir / f"v{version}-local-strict"
            target.mkdir(parents=True, exist_ok=True)
            for name in members:
                doc = json.loads(z.read(name))
                fix(doc)
                (target / name[len(prefix):]).write_text(json.dumps(doc))
            print(f"Kubernetes {version}: {len(members)} schemas")


# --------------------------------------------------------------------- compose
def check_compose(schema_path: str) -> None:
    import jsonschema
    import yaml

    fail = Failures()
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    schema = json.loads(pathlib.Path(schema_path).read_text())
    validator = jsonschema.Draft7Validator(schema)
    for e in sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path)):
        fail(f"schema: /{'/'.join(map(str, e.absolute_path))}: {e.message}")
    services = compose.get("services", {})
    for want in ("kafka", "broker", "workers", "prometheus", "grafana"):
        if want not in services:
            fail(f"no service {want}")
    for name, svc in services.items():
        for p in svc.get("ports", []):
            if not str(p).startswith("127.0.0.1:"):
                fail(f"{name}: port {p} is not bound to 127.0.0.1")
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                if not (DEPLOY / src).exists():
                    fail(f"{name}: mounts {src}, which does not exist")
        build = svc.get("build")
        if build:
            dockerfile = (DEPLOY / build["context"] / build["dockerfile"]).resolve()
            if not dockerfile.exists():
                fail(f"{name}: Dockerfile {dockerfile} does not exist")
            elif not re.search(rf"^FROM .* AS {re.escape(build['target'])}\s*$", dockerfile.read_text(), re.M | re.I):
                fail(f"{name}: build target {build['target']} is not a stage of {dockerfile.name}")
    if "kafka" in services and "apache/kafka" not in services["kafka"].get("image", ""):
        fail("kafka: not the apache/kafka image")
    env = services.get("kafka", {}).get("environment", {})
    if "controller" not in str(env.get("KAFKA_PROCESS_ROLES", "")):
        fail("kafka: not a KRaft combined broker/controller")
    # Prometheus: the config it is given exists and scrapes the services by name.
    prom = services.get("prometheus", {})
    cfg = next((a.split("=", 1)[1] for a in prom.get("command", []) if a.startswith("--config.file=")), None)
    mount = next((v for v in prom.get("volumes", []) if v.startswith("./prometheus:")), None)
    if not cfg or not mount:
        fail("prometheus: no --config.file or deploy/prometheus mount")
    else:
        inside = mount.split(":")[1]
        host = DEPLOY / "prometheus" / pathlib.PurePosixPath(cfg).relative_to(inside)
        pcfg = yaml.safe_load(host.read_text())
        targets = {t for j in pcfg["scrape_configs"] for sc in j.get("static_configs", []) for t in sc["targets"]}
        for t in targets:
            svc, port = t.rsplit(":", 1)
            envs = " ".join(str(v) for v in services.get(svc, {}).get("environment", {}).values())
            if svc not in services or f":{port}" not in envs:
                fail(f"prometheus target {t}: no service {svc} with metrics on port {port}")
    graf = services.get("grafana", {})
    if "PROMETHEUS_URL" not in graf.get("environment", {}):
        fail("grafana: PROMETHEUS_URL (used by the data source provisioning) is not set")
    if not any(v.startswith("./grafana/provisioning:/etc/grafana/provisioning") for v in graf.get("volumes", [])):
        fail("grafana: provisioning is not mounted at /etc/grafana/provisioning")
    workers_env = services.get("workers", {}).get("environment", {})
    if any("RULES_FILE" in k or "BOTS" in k for k in workers_env):
        fail("workers: compose is meant to run without bots (analytics only)")
    print(f"compose.yaml: {len(services)} services validated against {schema.get('title')} ({schema_path})")
    fail.exit()


# --------------------------------------------------------------------- dockerfile
def check_dockerfile(bin_dir: str) -> None:
    fail = Failures()
    text = (DEPLOY / "Dockerfile").read_text()
    stages = {name: image for image, name in re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)\s*$", text, re.M | re.I)}
    for want in ("builder", "runtime", "broker", "workers"):
        if want not in stages:
            fail(f"no stage {want}")
    if "bookworm-slim" not in stages.get("runtime", "") and "DEBIAN_RELEASE" not in stages.get("runtime", ""):
        fail("runtime stage is not debian:bookworm-slim")
    if not re.search(r"^ARG DEBIAN_RELEASE=bookworm$", text, re.M):
        fail("DEBIAN_RELEASE does not default to bookworm")
    for stage, binary in (("broker", "switchboard-broker"), ("workers", "switchboard-workers")):
        body = re.split(rf"^FROM\s+\S+\s+AS\s+{stage}\s*$", text, flags=re.M | re.I)
        if len(body) < 2 or binary not in body[1].split("\nFROM")[0]:
            fail(f"stage {stage} does not ship {binary}")
        if stages.get(stage) != "runtime":
            fail(f"stage {stage} is not built on the runtime stage")
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    if not user or user[-1].split(":")[0] in ("root", "0"):
        fail("the runtime image does not switch to a non-root user")
    builder = text.split("AS builder", 1)[-1].split("\nFROM", 1)[0]
    for pkg in ("libssl-dev", "pkg-config", "perl", "zlib1g-dev"):
        if pkg not in builder:
            fail(f"builder does not install {pkg}")
    if "make" not in builder and "build-essential" not in builder:
        fail("builder installs neither make nor build-essential")
    runtime = text.split("AS runtime", 1)[-1].split("\nFROM", 1)[0]
    installed = set(re.findall(r"\b([a-z0-9][a-z0-9.+-]+)\b", runtime.split("install", 1)[-1].split("&&", 2)[0]))
    for pkg in ("ca-certificates", "libssl3"):
        if pkg not in installed:
            fail(f"runtime does not install {pkg}")
    # The k8s manifests run as the image's user.
    uid = user[-1].split(":")[0] if user else ""
    for _, d in k8s_docs():
        if d.get("kind") == "Deployment":
            sc = d["spec"]["template"]["spec"].get("securityContext", {})
            if str(sc.get("runAsUser")) != uid:
                fail(f"{d['metadata']['name']}: runAsUser {sc.get('runAsUser')} != the image's USER {uid}")
    # Every shared library the built binaries need comes from a package the
    # runtime stage installs, or from the base image: debian:*-slim holds the
    # Essential packages and what they depend on (libc6, libgcc-s1, zlib1g...).
    # This machine runs the same Debian release, so its apt metadata tells.
    essential = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Essential}\n"], capture_output=True,
                               text=True, timeout=60).stdout
    essential = [line.split()[0] for line in essential.splitlines() if line.endswith(" yes")]
    closure = subprocess.run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                              "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *essential],
                             capture_output=True, text=True, timeout=120).stdout
    base = {line.strip().split(":")[-1].strip().split(":")[0] for line in closure.splitlines()} | set(essential)
    base = {b.split(":")[0] for b in base if b and not b.startswith("<")}
    if "libc6" not in base:
        fail("cannot work out the base image's packages (apt-cache depends found no libc6)")
    for binary in ("switchboard-broker", "switchboard-workers"):
        path = pathlib.Path(bin_dir) / binary
        if not path.exists():
            fail(f"{path} does not exist (build it first)")
            continue
        ldd = subprocess.run(["ldd", str(path)], capture_output=True, text=True, timeout=60).stdout
        for lib in re.findall(r"=>\s+(/\S+)", ldd):
            owner = subprocess.run(["dpkg", "-S", lib], capture_output=True, text=True, timeout=60)
            if owner.returncode != 0:
                real = subprocess.run(["readlink", "-f", lib], capture_output=True, text=True).stdout.strip()
                owner = subprocess.run(["dpkg", "-S", real], capture_output=True, text=True, timeout=60)
            pkg = owner.stdout.split(":", 1)[0].strip()
            if not pkg:
                fail(f"{binary}: cannot tell which package ships {lib}")
                continue
            where = "runtime stage" if pkg in installed else "base image" if pkg in base else None
            ok = where is not None
            print(f"  {binary}: {lib} <- {pkg} ({where or 'MISSING from the runtime image'})")
            if not ok:
                fail(f"{binary} needs {lib} from {pkg}, which the runtime stage does not install")
    fail.exit()


def main() -> None:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "exported":
        names, hist = exported_metrics()
        for n in sorted(names):
            print(n + ("  (histogram)" if n in hist else ""))
    elif cmd == "alerts":
        check_alerts()
    elif cmd == "dashboards":
        check_dashboards()
    elif cmd == "exprs":
        print_exprs()
    elif cmd == "k8s":
        check_k8s()
    elif cmd == "k8s-scaledobjects":
        k8s_docs_json()
    elif cmd == "k8s-schemas":
        prepare_k8s_schemas(args[0], args[1], args[2:])
    elif cmd == "compose":
        check_compose(args[0])
    elif cmd == "dockerfile":
        check_dockerfile(args[0])
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
