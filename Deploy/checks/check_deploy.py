#!/usr/bin/env python3
"""Offline checks of Veil's deployment files (no Docker engine, no cluster needed).

    python3 Deploy/checks/check_deploy.py                   # from anywhere; paths are repo-relative
    python3 Deploy/checks/check_deploy.py --print-acl-table # the Kafka ACL table of docs/DEPLOYMENT.md

What it checks (one `ok ...` / `FAIL ...` line each, then `N passed, M failed`; exit 1 on any failure):
  * docker-compose.yml renders (`docker-compose config` with .env.example), every ${VAR} it reads is
    listed in .env.example (and nothing stale is), and each of the seven services sets every required
    variable, runs non-root / read-only with a healthcheck on /health/ready, waits for veil-setup,
    Kafka and PostgreSQL, and has no container_name (so --scale works).
  * `kubectl kustomize` renders Deploy/k8s/base and Deploy/k8s/overlays/production, and in each every
    service's Deployment sets every required variable (env, envFrom ConfigMap keys, secretKeyRef),
    has liveness + readiness probes on the admin port, resource requests + limits and a restricted
    security context (runAsNonRoot, readOnlyRootFilesystem, no privilege escalation, drop ALL,
    seccomp RuntimeDefault, emptyDir /tmp); HPA, PDB, admin Service per service; default-deny policy.
  * The Dockerfile's runtime stage installs a Debian package for every shared library the built
    binaries link (`ldd $VEIL_BIN/<exe>` -> `dpkg -S` -> the package, or a dependency of one, must be
    installed; libc6, libgcc-s1 and libstdc++6 come with debian:bookworm-slim). Swift runtime
    libraries of a debug build (not --static-swift-stdlib) are skipped with a note.
  * veil-entrypoint and the Dockerfile list every executable; Prometheus scrapes every service; the
    Grafana dashboard shows the five metric families; docs/DEPLOYMENT.md's ACL table matches
    Shared/VeilContracts/ServiceName.swift.
  * docs/asyncapi.yaml: a channel per topic of Topic.swift (address, retention, compaction, output),
    the {topic}.dlq channel, send/receive operations as in ServiceName.swift, messages and producers as
    in KeyDirectory.veilAllowlist; every sample payload of `veilctl contracts samples` names a
    documented type/topic/part/schema and is valid against that JSON Schema (Draft 2020-12), and the
    samples cover every documented part.

Environment:
  VEIL_BIN             folder of built executables (default .build/debug)
  VEIL_VARIABLES_JSON  the variable list instead of `$VEIL_BIN/veilctl config variables --json`:
                       either the JSON itself (starts with '[') or a path to a file holding it.
                       JSON: [{"name", "required", "default", "secret", "help"}, ...]
  VEIL_CONTRACT_SAMPLES_JSON  the samples instead of `$VEIL_BIN/veilctl contracts samples`: the JSON
                       itself (starts with '[') or a path to a file holding it.
                       JSON: [{"type", "topic", "part", "schema", "payload"}, ...]
  DOCKER_COMPOSE       compose command (default: docker-compose, else `docker compose`)
  KUBECTL              kubectl command (default kubectl)
Needs Python 3, PyYAML and jsonschema 4+ (Deploy/local/install-deps.sh installs both).
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import yaml

ROOT = Path(__file__).resolve().parents[2]
VEIL_BIN = Path(os.environ.get("VEIL_BIN", ROOT / ".build" / "debug"))
if not VEIL_BIN.is_absolute():
    VEIL_BIN = ROOT / VEIL_BIN
TOOLS = ["veilctl", "veil-dev-broker"]
# Shipped by debian:bookworm-slim itself (Essential / Priority required), never in the install line.
BASE_IMAGE_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6"}
OVERLAYS = ["Deploy/k8s/base", "Deploy/k8s/overlays/production"]


class Report:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, condition, message, problems=()):
        if condition:
            self.passed += 1
            print(f"ok   {message}")
        else:
            self.failed += 1
            detail = f": {'; '.join(problems)}" if problems else ""
            print(f"FAIL {message}{detail}")
        return condition

    def ok(self, message):
        return self.check(True, message)

    def fail(self, message, *problems):
        return self.check(False, message, problems)

    @staticmethod
    def note(message):
        print(f"note {message}")


def run(command, **kwargs):
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, **kwargs)


# ------------------------------------------------------------------------------------- contracts

def read_contracts():
    """Services (raw names, in order) and their consumed / produced topic names, from the Swift source."""
    names = (ROOT / "Shared/VeilContracts/ServiceName.swift").read_text()
    topics_source = (ROOT / "Shared/VeilContracts/Topic.swift").read_text()
    topic_names = dict(re.findall(r'public static let (\w+) = Topic\("([^"]+)"', topics_source))
    enum_body = names.split("public enum ServiceName", 1)[1].split("public var", 1)[0]
    cases = re.findall(r'^\s*case\s+(\w+)(?:\s*=\s*"([^"]+)")?\s*$', enum_body, re.M)
    identifiers = {ident: (raw or ident) for ident, raw in cases}
    services = list(identifiers.values())

    def table(var):
        block = names.split(f"public var {var}:", 1)[1].split("\n    }\n", 1)[0]
        result = {}
        for ident, items in re.findall(r'case \.(\w+): \[([^\]]*)\]', block):
            result[identifiers[ident]] = [topic_names[t] for t in re.findall(r'\.(\w+)', items)]
        return result

    return services, table("consumes"), table("produces"), topic_names


def acl_table(services, consumes, produces, topic_names):
    directory = topic_names["keysDirectory"]
    code = lambda items: ", ".join(f"`{i}`" for i in items) if items else "—"
    lines = ["| principal | READ (topics) | WRITE (topics) | READ (groups) |", "|---|---|---|---|"]
    for s in services:
        reads = consumes[s] + ([directory] if directory not in consumes[s] else [])
        # Followed topics (directory, grants, POS lookup replies) are read by per-process groups and never dead-lettered.
        grants, replies = topic_names["keysGrants"], topic_names["posLookupReplies"]
        writes = produces[s] + [f"{t}.dlq" for t in consumes[s] if t not in (directory, grants, replies)]
        groups = f"`veil.{s}`; prefix `veil.{s}.directory.`" + (f", `veil.{s}.grants.`" if grants in consumes[s] else "") \
            + (f", `veil.{s}.pos-replies.`" if replies in consumes[s] else "")
        lines.append(f"| `User:veil-{s}` | {code(reads)} | {code(writes)} | {groups} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- variables

def load_variables(report):
    override = os.environ.get("VEIL_VARIABLES_JSON")
    if override:
        source = "VEIL_VARIABLES_JSON"
        text = override if override.lstrip().startswith("[") else Path(override).read_text()
    else:
        veilctl = VEIL_BIN / "veilctl"
        source = f"{veilctl.relative_to(ROOT) if veilctl.is_relative_to(ROOT) else veilctl} config variables --json"
        if not veilctl.exists():
            report.fail(f"variables: {veilctl} not built (or set VEIL_VARIABLES_JSON)")
            return None
        result = run([str(veilctl), "config", "variables", "--json"])
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["no output"])[0]
            report.fail(f"variables: `{source}` failed ({first}); set VEIL_VARIABLES_JSON until it exists")
            return None
        text = result.stdout
    try:
        variables = json.loads(text)
        assert isinstance(variables, list) and all("name" in v and "required" in v for v in variables)
    except (ValueError, AssertionError):
        report.fail(f"variables: {source} is not a JSON array of {{name, required, ...}}")
        return None
    required = [v["name"] for v in variables if v["required"]]
    report.ok(f"variables: {len(variables)} from {source}; required: {', '.join(required)}")
    return variables


def conditional_requirements(env):
    """Variables that become necessary because of others (Kafka security)."""
    protocol = (env.get("KAFKA_SECURITY_PROTOCOL") or "").lower()
    needed = []
    if protocol.startswith("sasl"):
        needed += ["KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"]
    if protocol.endswith("ssl"):
        needed += ["KAFKA_SSL_CA_LOCATION"]
    return needed


# ------------------------------------------------------------------------------------- compose

def compose_command():
    configured = os.environ.get("DOCKER_COMPOSE")
    if configured:
        return shlex.split(configured)
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]


def check_compose(report, services, variables):
    compose_file, env_file = ROOT / "docker-compose.yml", ROOT / ".env.example"
    if not compose_file.exists() or not env_file.exists():
        report.fail("compose: docker-compose.yml and .env.example exist")
        return
    raw = compose_file.read_text()
    used = set(re.findall(r'(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)', raw))
    listed = set(re.findall(r'^([A-Za-z_][A-Za-z0-9_]*)=', env_file.read_text(), re.M))
    problems = [f"{v} not in .env.example" for v in sorted(used - listed)]
    problems += [f"{v} in .env.example but unused" for v in sorted(listed - used)]
    report.check(not problems, f"compose: .env.example lists the {len(used)} variables docker-compose.yml reads",
                 problems)

    command = compose_command() + ["-f", "docker-compose.yml", "--env-file", ".env.example", "config"]
    try:
        result = run(command)
    except FileNotFoundError:
        report.fail(f"compose: `{' '.join(command)}` (compose not installed)")
        return
    warnings = [l for l in result.stderr.splitlines() if "WARN" in l.upper()]
    if not report.check(result.returncode == 0 and not warnings, f"compose: `{' '.join(command)}` accepts the file",
                        (warnings or result.stderr.strip().splitlines())[:3]):
        return
    config = yaml.safe_load(result.stdout)
    defined = config.get("services", {})

    images = {name: (svc.get("image") or "") for name, svc in defined.items()}
    report.check(re.fullmatch(r"apache/kafka:3\.9\.\d+", images.get("kafka", "")) is not None,
                 f"compose: kafka image pinned to 3.9.x ({images.get('kafka')})")
    report.check(images.get("postgres", "").startswith("postgres:16"), f"compose: postgres image 16 ({images.get('postgres')})")
    setup = defined.get("veil-setup", {})
    setup_text = json.dumps(setup.get("command", ""))
    report.check("keys init" in setup_text and "db provision" in setup_text and setup.get("restart", "no") == "no",
                 "compose: one-shot veil-setup runs `veilctl keys init` and `veilctl db provision`")

    required = [v["name"] for v in variables or [] if v["required"]]
    for s in services:
        svc = defined.get(s)
        if svc is None:
            report.fail(f"compose {s}: service defined")
            continue
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
        missing = [v for v in required + conditional_requirements(env) if not env.get(v)]
        problems = [f"{v} not set" for v in missing]
        db = urlparse(env.get("DATABASE_URL") or "")
        expected_role = "veil_" + s.replace("-", "_")
        if env.get("DATABASE_URL") and db.username != expected_role:
            problems.append(f"DATABASE_URL role {db.username}, expected {expected_role}")
        keys_dir = env.get("VEIL_KEYS_DIR")
        mounts = [v if isinstance(v, str) else f"{v.get('source')}:{v.get('target')}:{'ro' if v.get('read_only') else 'rw'}"
                  for v in svc.get("volumes", [])]
        if keys_dir and not any(m.split(":")[1:2] == [keys_dir] and m.endswith(":ro") for m in mounts):
            problems.append(f"VEIL_KEYS_DIR {keys_dir} is not a read-only volume")
        if variables is None:
            problems.append("variable list unavailable")
        report.check(not problems, f"compose {s}: required variables set", problems)

        problems = []
        test = " ".join(svc.get("healthcheck", {}).get("test", []))
        if "/health/ready" not in test:
            problems.append("healthcheck does not probe /health/ready")
        if svc.get("restart") != "unless-stopped":
            problems.append("restart is not unless-stopped")
        if svc.get("read_only") is not True:
            problems.append("read_only is not true")
        if "/tmp" not in [t.split(":")[0] for t in (svc.get("tmpfs") or [])]:
            problems.append("no tmpfs /tmp")
        if str(svc.get("user", "")).split(":")[0] != "10001":
            problems.append("user is not 10001")
        if "container_name" in svc:
            problems.append("container_name prevents --scale")
        depends = svc.get("depends_on") or {}
        wanted = {"veil-setup": "service_completed_successfully", "kafka": "service_healthy", "postgres": "service_healthy"}
        for dependency, condition in wanted.items():
            if not isinstance(depends, dict) or depends.get(dependency, {}).get("condition") != condition:
                problems.append(f"depends_on {dependency} is not {condition}")
        if (svc.get("build") or {}).get("dockerfile") != "Deploy/docker/Dockerfile":
            problems.append("image not built from Deploy/docker/Dockerfile")
        ports = [str(p.get("target") if isinstance(p, dict) else p).split(":")[-1] for p in svc.get("ports", [])]
        if s == "ingress" and "8080" not in ports:
            problems.append("ingress does not publish 8080")
        if "9090" in ports:
            problems.append("admin port published (use the documented override)")
        report.check(not problems, f"compose {s}: healthcheck, restart, read-only, non-root, depends_on, no container_name",
                     problems)


# ------------------------------------------------------------------------------------- kubernetes

def check_kubernetes(report, services, variables):
    kubectl = shlex.split(os.environ.get("KUBECTL", "kubectl"))
    required = [v["name"] for v in variables or [] if v["required"]]
    for overlay in OVERLAYS:
        try:
            result = run(kubectl + ["kustomize", overlay])
        except FileNotFoundError:
            report.fail(f"k8s {overlay}: kubectl installed")
            continue
        if not report.check(result.returncode == 0, f"k8s {overlay}: `kubectl kustomize` renders",
                            result.stderr.strip().splitlines()[:3]):
            continue
        docs = [d for d in yaml.safe_load_all(result.stdout) if d]
        by_kind = {}
        for d in docs:
            by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
        configmaps, secrets = by_kind.get("ConfigMap", {}), by_kind.get("Secret", {})

        for s in services:
            deployment = by_kind.get("Deployment", {}).get(s)
            if deployment is None:
                report.fail(f"k8s {overlay} {s}: Deployment exists")
                continue
            pod = deployment["spec"]["template"]["spec"]
            container = pod["containers"][0]
            env, problems = {}, []
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    name = source["configMapRef"]["name"]
                    if name in configmaps:
                        env.update(configmaps[name].get("data", {}))
                    else:
                        problems.append(f"envFrom ConfigMap {name} not in the manifests")
                if "secretRef" in source:
                    name = source["secretRef"]["name"]
                    if name in secrets:
                        env.update({k: "<secret>" for k in {**secrets[name].get("data", {}), **secrets[name].get("stringData", {})}})
                    else:
                        problems.append(f"envFrom Secret {name}: keys cannot be verified (use env + secretKeyRef)")
            for item in container.get("env", []):
                if "valueFrom" in item:
                    env[item["name"]] = "<from " + next(iter(item["valueFrom"])) + ">"
                elif item.get("value"):
                    env[item["name"]] = item["value"]
            problems += [f"{v} not set" for v in required + conditional_requirements(env) if not env.get(v)]
            db_ref = next((i["valueFrom"].get("secretKeyRef", {}) for i in container.get("env", [])
                           if i["name"] == "DATABASE_URL" and "valueFrom" in i), {})
            if db_ref and db_ref.get("name") != f"veil-{s}-db":
                problems.append(f"DATABASE_URL from Secret {db_ref.get('name')}, expected veil-{s}-db")
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            keys_dir = env.get("VEIL_KEYS_DIR")
            keys_mount = mounts.get(keys_dir)
            if keys_dir and not (keys_mount and keys_mount.get("readOnly")
                                 and volumes.get(keys_mount["name"], {}).get("secret", {}).get("secretName") == "veil-keys"):
                problems.append(f"VEIL_KEYS_DIR {keys_dir} is not Secret veil-keys mounted read-only")
            ca = env.get("KAFKA_SSL_CA_LOCATION")
            if ca and not ca.startswith("<") and not any(ca.startswith(p.rstrip("/") + "/") for p in mounts):
                problems.append(f"KAFKA_SSL_CA_LOCATION {ca} is not under a mounted volume")
            if variables is None:
                problems.append("variable list unavailable")
            report.check(not problems, f"k8s {overlay} {s}: required variables set", problems)

            problems = []
            ports = {p.get("name"): p.get("containerPort") for p in container.get("ports", [])}
            if ports.get("admin") != 9090:
                problems.append("no container port admin=9090")
            if str(env.get("VEIL_ADMIN_PORT", "9090")) != "9090":
                problems.append(f"VEIL_ADMIN_PORT {env.get('VEIL_ADMIN_PORT')} differs from the admin port")
            for probe, path in (("livenessProbe", "/health/live"), ("readinessProbe", "/health/ready")):
                http = (container.get(probe) or {}).get("httpGet") or {}
                if http.get("path") != path or http.get("port") not in ("admin", 9090):
                    problems.append(f"{probe} is not GET {path} on admin")
            if s == "ingress" and ports.get("http") != 8080:
                problems.append("ingress has no container port http=8080")
            report.check(not problems, f"k8s {overlay} {s}: liveness + readiness probes on admin", problems)

            resources = container.get("resources") or {}
            problems = [f"{kind}.{r} missing" for kind in ("requests", "limits") for r in ("cpu", "memory")
                        if not (resources.get(kind) or {}).get(r)]
            report.check(not problems, f"k8s {overlay} {s}: resource requests + limits", problems)

            pod_sc, sc = pod.get("securityContext") or {}, container.get("securityContext") or {}
            merged = {**pod_sc, **sc}
            problems = []
            if merged.get("runAsNonRoot") is not True:
                problems.append("runAsNonRoot")
            if merged.get("runAsUser") != 10001:
                problems.append("runAsUser 10001")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append("readOnlyRootFilesystem")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append("allowPrivilegeEscalation false")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                problems.append("capabilities drop ALL")
            if (merged.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
                problems.append("seccompProfile RuntimeDefault")
            tmp = mounts.get("/tmp")
            if not tmp or "emptyDir" not in volumes.get(tmp["name"], {}):
                problems.append("emptyDir at /tmp")
            report.check(not problems, f"k8s {overlay} {s}: security context (non-root, read-only root, no escalation, drop ALL, seccomp, /tmp)",
                         [f"missing {p}" for p in problems])

        problems = []
        hpas = {h["spec"]["scaleTargetRef"]["name"] for h in by_kind.get("HorizontalPodAutoscaler", {}).values()}
        pdbs = by_kind.get("PodDisruptionBudget", {})
        admin_services = {svc["spec"].get("selector", {}).get("app.kubernetes.io/name")
                          for svc in by_kind.get("Service", {}).values()
                          if any(p.get("port") == 9090 for p in svc["spec"].get("ports", []))}
        for s in services:
            if s not in hpas:
                problems.append(f"no HPA for {s}")
            pdb = pdbs.get(s)
            if not pdb or pdb["spec"].get("minAvailable") != 1:
                problems.append(f"no PDB minAvailable 1 for {s}")
            if s not in admin_services:
                problems.append(f"no admin Service for {s}")
        ingress_ports = [p.get("port") for p in (by_kind.get("Service", {}).get("ingress") or {}).get("spec", {}).get("ports", [])]
        if 8080 not in ingress_ports:
            problems.append("no Service ingress on 8080")
        report.check(not problems, f"k8s {overlay}: HPA, PDB and admin Service per service; ingress Service 8080", problems)

        policies = by_kind.get("NetworkPolicy", {}).values()
        deny = [p for p in policies if p["spec"].get("podSelector") in ({}, None)
                and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
                and not p["spec"].get("ingress") and not p["spec"].get("egress")]
        egress_ports = {port.get("port") for p in policies for rule in p["spec"].get("egress", []) for port in rule.get("ports", [])}
        problems = [] if deny else ["no default deny ingress+egress policy"]
        problems += [f"no egress to port {port}" for port in (53, 9092, 9093, 5432) if port not in egress_ports]
        report.check(not problems, f"k8s {overlay}: NetworkPolicies (default deny; DNS, Kafka, PostgreSQL egress)", problems)


# ------------------------------------------------------------------------------------- image

def join_continuations(text):
    return re.sub(r"\\\n", " ", "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#")))


def runtime_packages(dockerfile_text):
    stages = re.split(r"^FROM\s", join_continuations(dockerfile_text), flags=re.M | re.I)
    runtime = stages[-1]
    packages = []
    for command in re.findall(r"apt-get\s+install\s+([^&;|\n]*)", runtime):
        packages += [t for t in command.split() if not t.startswith("-") and "=" not in t]
    return packages, stages


def dpkg_owner(path, cache={}):
    candidates = [path, os.path.realpath(path)]
    for p in list(candidates):
        if p.startswith("/lib/") or p.startswith("/lib64/"):
            candidates.append("/usr" + p)
        elif p.startswith("/usr/lib/"):
            candidates.append(p[len("/usr"):])
    for candidate in candidates:
        if candidate not in cache:
            result = run(["dpkg", "-S", candidate])
            line = next((l for l in result.stdout.splitlines() if not l.startswith("diversion")), "")
            cache[candidate] = line.split(":")[0].split(",")[0].strip() if result.returncode == 0 and line else None
        if cache[candidate]:
            return cache[candidate]
    return None


def dependency_closure(packages):
    """Packages pulled in by `packages` according to the local dpkg database (same Debian release)."""
    seen, queue, via = set(), list(packages), {}
    while queue:
        package = queue.pop()
        if package in seen:
            continue
        seen.add(package)
        result = run(["dpkg-query", "-W", "-f=${Depends}, ${Pre-Depends}", package])
        if result.returncode != 0:
            continue
        for alternative in result.stdout.split(","):
            for name in alternative.split("|")[:1]:
                name = re.sub(r"\(.*?\)|:\w+", "", name).strip()
                if name and name not in seen:
                    via.setdefault(name, via.get(package, package))
                    queue.append(name)
    return seen, via


def check_image(report, services):
    executables = services + TOOLS
    dockerfile = ROOT / "Deploy/docker/Dockerfile"
    entrypoint = ROOT / "Deploy/docker/veil-entrypoint"
    text = dockerfile.read_text()
    packages, stages = runtime_packages(text)
    problems = []
    if len(stages) < 3:
        problems.append("not multi-stage")
    if "--static-swift-stdlib" not in text:
        problems.append("build does not use --static-swift-stdlib")
    listed = re.search(r'VEIL_EXECUTABLES="([^"]*)"', text)
    missing = [e for e in executables if not listed or e not in listed.group(1).split()]
    if missing:
        problems.append(f"VEIL_EXECUTABLES lacks {', '.join(missing)}")
    if not re.search(r'^ENTRYPOINT \["/opt/veil/bin/veil-entrypoint"\]', text, re.M):
        problems.append("ENTRYPOINT is not /opt/veil/bin/veil-entrypoint")
    if not re.search(r"^USER 10001", stages[-1], re.M):
        problems.append("runtime stage does not run as USER 10001")
    report.check(not problems, f"image: Dockerfile multi-stage, static Swift stdlib, all {len(executables)} executables, "
                               f"non-root, runtime packages: {' '.join(packages)}", problems)

    syntax = run(["sh", "-n", str(entrypoint)])
    script = entrypoint.read_text()
    listed = re.search(r'^executables="([^"]*)"', script, re.M)
    problems = [] if syntax.returncode == 0 else [syntax.stderr.strip()]
    if not os.access(entrypoint, os.X_OK):
        problems.append("not executable")
    if not listed or sorted(listed.group(1).split()) != sorted(executables):
        problems.append(f"executables list differs from {' '.join(executables)}")
    report.check(not problems, "image: veil-entrypoint is valid POSIX sh and lists every executable", problems)

    # Shared libraries of the built binaries -> Debian packages -> installed by the runtime stage?
    needed, swift_runtime, unresolved = {}, set(), []
    built = [e for e in executables if (VEIL_BIN / e).exists()]
    for e in executables:
        if e not in built:
            report.fail(f"image: {VEIL_BIN / e} built (needed for the ldd check)")
    for e in built:
        result = run(["ldd", str(VEIL_BIN / e)])
        for line in result.stdout.splitlines():
            line = line.strip()
            if "not found" in line:
                unresolved.append(f"{e}: {line}")
                continue
            match = re.match(r"(\S+)\s+=>\s+(\S+)\s+\(", line) or re.match(r"(/\S+)\s+\(", line)
            if not match:
                continue  # linux-vdso and similar
            path = match.group(match.lastindex)
            if "/usr/lib/swift/" in path or path.startswith("/opt/swift"):
                swift_runtime.add(os.path.basename(path))
                continue
            needed.setdefault(path, set()).add(e)
    if unresolved:
        report.fail("image: every library the binaries link resolves on this machine", *unresolved[:3])
    by_package = {}
    for path, users in needed.items():
        package = dpkg_owner(path)
        if package is None:
            report.fail(f"image: {os.path.basename(path)} ({path}) belongs to a Debian package (dpkg -S)")
            continue
        entry = by_package.setdefault(package, [set(), set()])
        entry[0].add(os.path.basename(path))
        entry[1].update(users)
    closure, via = dependency_closure(packages)
    for package, (libraries, users) in sorted(by_package.items()):
        libs = ", ".join(sorted(libraries))
        who = "all executables" if len(users) == len(built) else ", ".join(sorted(users))
        if package in BASE_IMAGE_PACKAGES:
            report.ok(f"image: {package} ({libs}; {who}) ships with debian:bookworm-slim")
        elif package in packages:
            report.ok(f"image: {package} ({libs}; {who}) installed by the runtime stage")
        elif package in closure:
            report.ok(f"image: {package} ({libs}; {who}) pulled in by {via.get(package, '?')}")
        else:
            report.fail(f"image: {package} ({libs}; {who}) installed by the runtime stage",
                        f"add {package} to the runtime apt-get install line")
    if swift_runtime:
        report.note(f"{VEIL_BIN} links the Swift runtime dynamically ({len(swift_runtime)} libraries under "
                    f"/usr/lib/swift or /opt/swift, e.g. {', '.join(sorted(swift_runtime)[:3])}): a build without "
                    f"--static-swift-stdlib; skipped, the image builds with --static-swift-stdlib")


# ------------------------------------------------------------------------------------- monitoring, docs

def check_monitoring(report, services):
    prometheus = yaml.safe_load((ROOT / "Deploy/monitoring/prometheus.yml").read_text())
    targets = set()
    for job in prometheus.get("scrape_configs", []):
        for sd in job.get("dns_sd_configs", []):
            if sd.get("port") == 9090:
                targets.update(sd.get("names", []))
        for sc in job.get("static_configs", []):
            targets.update(t.rsplit(":", 1)[0] for t in sc.get("targets", []) if t.endswith(":9090"))
    missing = [s for s in services if s not in targets]
    report.check(not missing, "monitoring: Prometheus scrapes every service's admin port", [f"{m} not scraped" for m in missing])

    dashboards = list((ROOT / "Deploy/monitoring/grafana/dashboards").glob("*.json"))
    exprs = ""
    problems = []
    for d in dashboards:
        try:
            exprs += json.dumps(json.loads(d.read_text()))
        except ValueError as error:
            problems.append(f"{d.name}: {error}")
    for needle in ("veil_messages_in_total", "veil_messages_out_total", "histogram_quantile(0.50",
                   "histogram_quantile(0.99", "veil_processing_duration_seconds_bucket", "veil_errors_total",
                   "veil_dead_letters_total", "veil_consumer_lag_messages"):
        if needle not in exprs:
            problems.append(f"no panel uses {needle}")
    datasources = (ROOT / "Deploy/monitoring/grafana/provisioning/datasources").glob("*.yml")
    uids = {d.get("uid") for f in datasources for d in (yaml.safe_load(f.read_text()) or {}).get("datasources", [])}
    used = set(re.findall(r'"uid": "([^"]+)"', exprs)) - {"veil-overview"}
    if used - uids:
        problems.append(f"dashboard datasource uid {', '.join(sorted(used - uids))} is not provisioned")
    report.check(dashboards and not problems,
                 "monitoring: Grafana dashboard (messages in/out, latency p50/p99, errors, dead letters, lag)", problems)


def check_docs(report, expected_table):
    doc = ROOT / "docs/DEPLOYMENT.md"
    text = doc.read_text() if doc.exists() else ""
    report.check(expected_table in text, "docs: DEPLOYMENT.md Kafka ACL table matches ServiceName.swift",
                 [] if expected_table in text else ["regenerate: python3 Deploy/checks/check_deploy.py --print-acl-table"])


# ------------------------------------------------------------------------------------- topic contracts

ASYNCAPI = "docs/asyncapi.yaml"
TOPIC_ARGUMENTS = re.compile(r'^\s*public static let (\w+) = Topic\("([^"]+)"(.*)\)\s*$', re.M)


def swift_int(expression, constants):
    """Value of a Swift integer product such as `3_600_000` or `7 * day` over the given constants."""
    value = 1
    for factor in expression.split("*"):
        factor = factor.strip()
        value *= constants[factor] if factor in constants else int(factor.replace("_", ""))
    return value


def read_topic_catalog():
    """`Topic.all` from Topic.swift: {identifier: {name, retention, compacted, output}}, in catalog order."""
    source = (ROOT / "Shared/VeilContracts/Topic.swift").read_text()
    constants = {}
    for name, expression in re.findall(r'^\s*static let (\w+): Int64 = ([^\n]+)$', source, re.M):
        constants[name] = swift_int(expression, constants)
    topics = {}
    for ident, name, rest in TOPIC_ARGUMENTS.findall(source):
        retention = re.search(r'retentionMilliseconds:\s*([^,)]+)', rest)
        topics[ident] = {"name": name, "retention": swift_int(retention.group(1), constants) if retention else None,
                         "compacted": "compacted: true" in rest, "output": "isOutput: true" in rest}
    listed = source.split("public static let all: [Topic] = [", 1)[1].split("]", 1)[0]
    return {ident: topics[ident] for ident in re.findall(r"\w+", listed)}


def read_allowlist():
    """`KeyDirectory.veilAllowlist`: [(topic, type, [producers])]."""
    source = (ROOT / "Shared/VeilEnvelope/KeyDirectory+veil.swift").read_text()
    return [(topic, kind, re.findall(r'"([^"]+)"', producers)) for topic, kind, producers in
            re.findall(r'\.init\(topic: "([^"]+)", type: "([^"]+)", producers: \[([^\]]*)\]\)', source)]


def json_pointer(document, ref):
    if not ref.startswith("#/"):
        raise KeyError(ref)
    node = document
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node


def all_refs(node):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from all_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from all_refs(value)


def load_contract_samples(report):
    """The samples of `veilctl contracts samples`: [{type, topic, part, schema, payload}], or None."""
    override = os.environ.get("VEIL_CONTRACT_SAMPLES_JSON")
    if override:
        source = "VEIL_CONTRACT_SAMPLES_JSON"
        try:
            text = override if override.lstrip().startswith("[") else Path(override).read_text()
        except OSError as error:
            report.fail(f"contracts: {source} names no readable file ({error.strerror})")
            return None
    else:
        veilctl = VEIL_BIN / "veilctl"
        source = f"{veilctl.relative_to(ROOT) if veilctl.is_relative_to(ROOT) else veilctl} contracts samples"
        if not veilctl.exists():
            report.fail(f"contracts: {veilctl} not built (or set VEIL_CONTRACT_SAMPLES_JSON)")
            return None
        result = run([str(veilctl), "contracts", "samples"])
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["no output"])[0]
            report.fail(f"contracts: `{source}` failed ({first}); set VEIL_CONTRACT_SAMPLES_JSON until it exists")
            return None
        text = result.stdout
    fields = ("type", "topic", "part", "schema")
    try:
        samples = json.loads(text)
        assert isinstance(samples, list) and samples
        assert all(isinstance(s, dict) and all(isinstance(s.get(f), str) for f in fields) and "payload" in s
                   for s in samples)
    except (ValueError, AssertionError):
        report.fail(f"contracts: {source} is not a non-empty JSON array of {{type, topic, part, schema, payload}}")
        return None
    report.ok(f"contracts: {len(samples)} sample payloads from {source}")
    return samples


def check_contracts(report):
    """docs/asyncapi.yaml against the Swift contracts, and the code's sample payloads against its schemas."""
    try:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError
    except ImportError:
        report.fail("contracts: Python package jsonschema (4.0+) importable", "run Deploy/local/install-deps.sh")
        return
    try:
        doc = yaml.safe_load((ROOT / ASYNCAPI).read_text())
        assert isinstance(doc, dict), "not a YAML mapping"
    except (OSError, yaml.YAMLError, AssertionError) as error:
        report.fail(f"contracts: {ASYNCAPI} loads", str(error).splitlines()[0])
        return
    channels = doc.get("channels") or {}
    operations = doc.get("operations") or {}
    schemas = (doc.get("components") or {}).get("schemas") or {}
    problems = [] if doc.get("asyncapi") == "3.0.0" else [f"asyncapi is {doc.get('asyncapi')!r}, not 3.0.0"]
    for ref in sorted(set(all_refs(doc))):
        try:
            json_pointer(doc, ref)
        except (KeyError, IndexError, ValueError, TypeError):
            problems.append(f"$ref {ref} does not resolve")
    for name, schema in schemas.items():
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as error:
            problems.append(f"schema {name}: {error.message}")
    report.check(not problems, f"contracts: {ASYNCAPI} is AsyncAPI 3.0.0, its $refs resolve, its {len(schemas)} schemas "
                               f"are valid JSON Schema 2020-12", problems)

    # Channels: one per topic of Topic.swift's catalog, with its address and settings.
    catalog = read_topic_catalog()
    by_address = {c.get("address"): (cid, c) for cid, c in channels.items() if isinstance(c, dict)}
    problems = []
    for ident, topic in catalog.items():
        channel = channels.get(ident)
        if channel is None:
            cid, channel = by_address.get(topic["name"], (None, None))
            if channel is None:
                problems.append(f"no channel for {topic['name']} (Topic.{ident})")
                continue
            problems.append(f"channel for {topic['name']} is named {cid}, expected {ident} (Topic.{ident})")
        if channel.get("address") != topic["name"]:
            problems.append(f"channel {ident} has address {channel.get('address')}, expected {topic['name']}")
        for key, expected in (("x-veil-retention-ms", topic["retention"]), ("x-veil-compacted", topic["compacted"]),
                              ("x-veil-output", topic["output"])):
            if key not in channel or channel[key] != expected:
                problems.append(f"channel {ident} {key} is {channel.get(key, 'missing')}, expected {expected}")
        kafka = (channel.get("bindings") or {}).get("kafka") or {}
        config = kafka.get("topicConfiguration") or {}
        if kafka.get("topic") != topic["name"] or config.get("retention.ms") != topic["retention"] \
                or config.get("cleanup.policy") != ["compact" if topic["compacted"] else "delete"]:
            problems.append(f"channel {ident} Kafka binding (topic, retention.ms, cleanup.policy) differs from Topic.{ident}")
    addresses = {t["name"] for t in catalog.values()}
    for cid, channel in channels.items():
        address = channel.get("address", "")
        if address not in addresses and not address.endswith(".dlq"):
            problems.append(f"channel {cid} ({address}) is not in Topic.all")
    report.check(not problems, f"contracts: a channel for each of the {len(catalog)} topics of Topic.swift "
                               f"(address, retention, compaction, output)", problems)

    # Dead letters: `<topic>.dlq` for every topic Veil consumes, written by the stages.
    services, consumes, produces, topic_names = read_contracts()
    grants, directory = topic_names["keysGrants"], topic_names["keysDirectory"]
    dlq = next((c for c in channels.values() if str(c.get("address", "")).endswith(".dlq")), None)
    problems = []
    if dlq is None:
        problems.append("no channel with address {topic}.dlq")
    else:
        enum = ((dlq.get("parameters") or {}).get("topic") or {}).get("enum") or []
        expected = [t["name"] for t in catalog.values() if not t["output"]]
        if sorted(enum) != sorted(expected):
            problems.append(f"topic parameter lists {sorted(set(enum) ^ set(expected))} wrongly (expected the non-output topics)")
        if dlq.get("x-veil-retention-ms") != 14 * 86_400_000:
            problems.append(f"x-veil-retention-ms is {dlq.get('x-veil-retention-ms')}, expected {14 * 86_400_000}")
        writers = dlq.get("x-veil-dead-letter-producers") or {}
        for s in services:
            stage_topics = [t for t in consumes[s] if t not in (grants, directory)]
            if sorted(writers.get(s) or []) != sorted(stage_topics):
                problems.append(f"x-veil-dead-letter-producers {s} is {writers.get(s)}, expected {stage_topics}")
        headers = json_pointer(doc, "#/components/schemas/DeadLetterHeaders") if "DeadLetterHeaders" in schemas else {}
        stage_runner = (ROOT / "Shared/VeilService/StageRunner.swift").read_text()
        for header in sorted(set(re.findall(r'KafkaHeader\(name: "(veil_dlq_\w+)"', stage_runner))):
            if header not in (headers.get("required") or []):
                problems.append(f"DeadLetterHeaders does not require {header} (StageRunner.swift sets it)")
    report.check(not problems, "contracts: dead-letter channel {topic}.dlq (topics, writers, veil_dlq_* headers)", problems)

    # Operations: send / receive per service as ServiceName.swift says; messages as the allowlist says.
    def message_of(ref_holder):
        return json_pointer(doc, ref_holder["$ref"]) if "$ref" in ref_holder else ref_holder

    sends, receives = {}, {}
    for operation in operations.values():
        try:
            address = message_of(operation["channel"]).get("address")
        except (KeyError, TypeError, IndexError):
            continue  # reported as an unresolved $ref above
        table = sends if operation.get("action") == "send" else receives
        table.setdefault(operation.get("x-veil-party"), set()).add(address)
    problems = []
    for s in services:
        if sends.get(s, set()) != set(produces[s]):
            problems.append(f"{s} sends to {sorted(sends.get(s, set()))}, ServiceName.swift: {sorted(produces[s])}")
        expected = set(consumes[s]) | {directory}
        if receives.get(s, set()) != expected:
            problems.append(f"{s} receives {sorted(receives.get(s, set()))}, ServiceName.swift: {sorted(expected)}")
    report.check(not problems, f"contracts: send/receive operations of the {len(services)} services match ServiceName.swift",
                 problems)

    messages = {}  # envelope type -> (channel address, message)
    for channel in channels.values():
        for holder in (channel.get("messages") or {}).values():
            try:
                message = message_of(holder)
            except (KeyError, TypeError, IndexError):
                continue
            messages[message.get("name")] = (channel.get("address"), message)
    problems = []
    allowlist = read_allowlist()
    for topic, kind, producers in allowlist:
        address, message = messages.get(kind, (None, None))
        if message is None:
            problems.append(f"no message named {kind}")
            continue
        if address != topic:
            problems.append(f"{kind} is on channel {address}, allowlist: {topic}")
        senders = {party for party, addresses in sends.items() if topic in addresses}
        if senders != set(producers):
            problems.append(f"{topic} sent by {sorted(senders)}, allowlist: {producers}")
        sources = [s for part in (message.get("headers") or {}).get("allOf", [])
                   if (s := ((part.get("properties") or {}).get("ce_source") or {}).get("const"))]
        if not sources or not set(sources) <= set(producers):
            problems.append(f"{kind} headers ce_source {sources or 'unset'}, allowlist: {producers}")
    documented = {(t, k) for t, k, _ in allowlist}
    for kind, (address, message) in messages.items():
        if message.get("contentType") == "application/vnd.veil.envelope.v1" and (address, kind) not in documented \
                and not str(address).endswith(".dlq"):
            problems.append(f"envelope message {kind} on {address} is not in KeyDirectory.veilAllowlist")
    report.check(not problems, f"contracts: messages and producers match the {len(allowlist)} entries of KeyDirectory.veilAllowlist",
                 problems)

    # Samples from the code: documented, and valid against their schemas.
    samples = load_contract_samples(report)
    if samples is None:
        return
    root = {"$schema": "https://json-schema.org/draft/2020-12/schema", "components": {"schemas": schemas}}
    validators, problems, covered = {}, [], set()
    for i, sample in enumerate(samples):
        kind, topic, label, name = sample["type"], sample["topic"], sample["part"], sample["schema"]
        where = f"sample {i} ({kind} {label})"
        address, message = messages.get(kind, (None, None))
        if message is None:
            problems.append(f"{where}: no message named {kind}")
        else:
            if address != topic:
                problems.append(f"{where}: topic {topic}, but {kind} is documented on {address}")
            parts = {p.get("label"): p for p in message.get("x-veil-parts") or []}
            if label not in parts:
                problems.append(f"{where}: part {label} not in x-veil-parts of {kind} ({', '.join(parts) or 'none'})")
            elif parts[label].get("schema") != name:
                problems.append(f"{where}: schema {name}, documented: {parts[label].get('schema')}")
            covered.add((kind, label, name))
        if name not in schemas:
            problems.append(f"{where}: schema {name} not in components.schemas")
            continue
        validator = validators.get(name)
        if validator is None:
            validator = validators[name] = Draft202012Validator({**root, "$ref": f"#/components/schemas/{name}"})
        try:
            errors = sorted(validator.iter_errors(sample["payload"]), key=lambda e: list(map(str, e.absolute_path)))
        except Exception as error:  # e.g. an unresolvable $ref inside the schema (reported above too)
            report.fail(f"contracts: {where} is a valid {name}", f"{type(error).__name__}: {str(error).split(' within ')[0][:200]}")
            continue
        detail = [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:160]}" for e in errors]
        report.check(not errors, f"contracts: {where} is a valid {name}", detail[:5])
    report.check(not problems, "contracts: every sample's type, topic, part label and schema are documented", problems)

    missing = [f"{m.get('name')} part {p.get('label')} ({p.get('schema')})"
               for _, m in messages.values() for p in m.get("x-veil-parts") or []
               if (m.get("name"), p.get("label"), p.get("schema")) not in covered]
    report.check(not missing, "contracts: the samples cover every documented part", [f"no sample of {m}" for m in missing])


def main():
    services, consumes, produces, topic_names = read_contracts()
    table = acl_table(services, consumes, produces, topic_names)
    if "--print-acl-table" in sys.argv[1:]:
        print(table)
        return 0
    report = Report()
    report.check(len(services) == 7, f"contracts: {len(services)} services in ServiceName.swift: {', '.join(services)}")
    variables = load_variables(report)
    check_compose(report, services, variables)
    check_kubernetes(report, services, variables)
    check_image(report, services)
    check_monitoring(report, services)
    check_docs(report, table)
    check_contracts(report)
    print(f"{report.passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
