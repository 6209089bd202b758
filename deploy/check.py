"""The Python half of deploy/check.sh (run with deploy/.venv's python, which has PyYAML).

    check.py configmap-extract CONFIGMAP OUT   data["wsgate.yaml"] of the ConfigMap into OUT
    check.py kustomize-resources DIR           the files kustomization.yaml lists, one a line
    check.py dockerfile                        the Dockerfile's instructions, ignore list, stubs
    check.py consistency                       the timings and ports that must agree across files

Every failure is one line on stderr starting with the file it is about; exit status 1.
"""

import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
CONFIGMAP = "deploy/kubernetes/configmap.yaml"

errors = []


def fail(where, message):
    errors.append(f"{where}: {message}")


def finish():
    for e in errors:
        print(e, file=sys.stderr)
    sys.exit(1 if errors else 0)


def load_yaml(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return yaml.safe_load(f)


def configmap_text():
    cm = load_yaml(CONFIGMAP)
    if cm.get("kind") != "ConfigMap" or "wsgate.yaml" not in (cm.get("data") or {}):
        raise SystemExit(f"{CONFIGMAP}: not a ConfigMap with data[\"wsgate.yaml\"]")
    return cm["data"]["wsgate.yaml"]


def config_checksum():
    """What deployment.yaml's checksum/config annotation must say."""
    return hashlib.sha256(configmap_text().encode()).hexdigest()[:16]


# --- durations ---------------------------------------------------------------------------------

def wsgate_duration(value, where):
    """Seconds of a wsgate duration (`500ms`, `10s`, `2m`, `1h`, `0`)."""
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h)\s*", str(value))
    if str(value).strip() == "0":
        return 0.0
    if not m:
        raise SystemExit(f"{where}: cannot read duration {value!r}")
    n, unit = int(m.group(1)), m.group(2)
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def systemd_timespan(value, where):
    """Seconds of a systemd time span (`50s`, `1min 30s`, `90`)."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "ms": 0.001}
    total = 0.0
    parts = re.findall(r"(\d+)\s*([a-z]*)", value)
    if not parts or re.sub(r"[\d\sa-z]", "", value):
        raise SystemExit(f"{where}: cannot read time span {value!r}")
    for n, unit in parts:
        if unit not in units:
            raise SystemExit(f"{where}: unknown time unit {unit!r}")
        total += int(n) * units[unit]
    return total


def proxy_duration(value, where):
    """Seconds of an HAProxy or nginx time (`2s`, `1h`, `120s`, `500ms`, bare = ms / s)."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value)
    if not m:
        raise SystemExit(f"{where}: cannot read time {value!r}")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}[m.group(2)]


class WsgateConfig:
    """The few keys the consistency rules need, with the README's defaults."""

    def __init__(self, text, where):
        c = yaml.safe_load(text)
        self.where = where
        self.health_path = c.get("health_path", "/healthz")
        self.drain = wsgate_duration(c.get("drain_delay", "0s"), f"{where}: drain_delay")
        self.grace = wsgate_duration(c.get("shutdown_grace", "30s"), f"{where}: shutdown_grace")
        ws = c.get("websockets") or {}
        self.ping = wsgate_duration(ws.get("keep_alive_interval", "2m"),
                                    f"{where}: websockets.keep_alive_interval")
        self.spread = wsgate_duration(c.get("close_spread", "0s"), f"{where}: close_spread")
        close = wsgate_duration(ws.get("close_timeout", "5s"), f"{where}: close_timeout")
        self.ports = sorted({int(l["address"].rsplit(":", 1)[1]) for l in c["listen"]})
        admin = (c.get("admin") or {}).get("address")
        self.admin_port = int(admin.rsplit(":", 1)[1]) if admin else None
        self.max_connections = (c.get("limits") or {}).get("max_connections", 0)
        self.tls = any("tls" in l for l in c["listen"])
        if self.drain + self.spread + close >= self.grace:
            fail(where, f"drain_delay + close_spread + websockets.close_timeout "
                        f"({self.drain:g}s + {self.spread:g}s + {close:g}s) must be shorter than "
                        f"shutdown_grace ({self.grace:g}s), which counts them all")


# --- configmap-extract / kustomize-resources ---------------------------------------------------

def cmd_configmap_extract(configmap, out):
    global CONFIGMAP
    CONFIGMAP = os.path.relpath(os.path.abspath(configmap), ROOT)
    with open(out, "w") as f:
        f.write(configmap_text())


def cmd_kustomize_resources(directory):
    k = yaml.safe_load(open(os.path.join(directory, "kustomization.yaml")))
    listed = k.get("resources") or []
    present = sorted(f for f in os.listdir(directory)
                     if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml")
    for f in listed:
        if f not in present:
            fail(f"{directory}/kustomization.yaml", f"lists {f}, which does not exist")
    for f in present:
        if f not in listed:
            fail(f"{directory}/kustomization.yaml", f"does not list {f}")
    if not errors:
        print("\n".join(os.path.join(directory, f) for f in listed))
    finish()


# --- dockerfile --------------------------------------------------------------------------------

KNOWN = {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY",
         "ENTRYPOINT", "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL",
         "HEALTHCHECK", "SHELL"}
RUNTIME_BASES = {"gcr.io/distroless/cc-debian12:nonroot", "debian:bookworm-slim"}
DOCKERFILE = "deploy/docker/Dockerfile"
IGNOREFILE = "deploy/docker/Dockerfile.dockerignore"


def parse_dockerfile(path):
    """[(line, INSTRUCTION, arguments)], continuation lines joined, comments dropped."""
    out, pending, start = [], None, 0
    for n, raw in enumerate(open(path), 1):
        line = raw.rstrip("\n")
        if line.strip().startswith("#") or (pending is None and not line.strip()):
            continue  # comments (also inside a continuation, as Docker allows) and blanks
        if pending is None:
            pending, start = "", n
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        word, _, args = pending.strip().partition(" ")
        out.append((start, word, args.strip()))
        pending = None
    if pending is not None:
        fail(f"{DOCKERFILE}:{start}", "the file ends inside a continued line")
    return out


def ignore_regex(pattern):
    rx = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            rx += ".*"
            i += 2
            continue
        rx += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.compile(rx + r"\Z")


def load_ignore(path):
    rules = []
    for raw in open(path):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = os.path.normpath(line[1:].strip() if negate else line).lstrip("/")
        rules.append((negate, ignore_regex(pat)))
    return rules


def ignored(rules, rel):
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = rel.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for negate, rx in rules:
        if any(rx.match(c) for c in candidates):
            result = not negate
    return result


def files_under(rel):
    full = os.path.join(ROOT, rel)
    if os.path.isfile(full):
        return [rel]
    found = []
    for d, _, files in os.walk(full):
        found += [os.path.relpath(os.path.join(d, f), ROOT) for f in files]
    return found


def copy_parts(args):
    """(flags, sources, destination) of a COPY, shell or JSON form."""
    if args.lstrip().startswith("["):
        words = json.loads(args)
    else:
        words = shlex.split(args)
    flags = [w for w in words if w.startswith("--")]
    rest = [w for w in words if not w.startswith("--")]
    return flags, rest[:-1], rest[-1]


SAFE_STUB_COMMANDS = {"mkdir", "echo", "printf", "touch", ":", "cp"}


def simulate_builder(stage, workdir):
    """Replays the builder's COPY lines (from the repository) and its stub-making RUN lines in
    a temporary directory, then asks cargo whether what is there builds wsgate's targets."""
    tmp = tempfile.mkdtemp(prefix="wsgate-docker-")
    try:
        stubs, dep_build_seen = [], False
        for n, word, args in stage:
            where = f"{DOCKERFILE}:{n}"
            if word == "COPY" and not any(f.startswith("--from") for f in copy_parts(args)[0]):
                _, sources, dest = copy_parts(args)
                if dest.startswith("/"):
                    if not (dest + "/").startswith(workdir.rstrip("/") + "/"):
                        continue  # outside the build directory: not part of the cargo tree
                    dest = os.path.relpath(dest, workdir)
                for s in sources:
                    src = os.path.join(ROOT, s)
                    target = os.path.join(tmp, dest)
                    if os.path.isdir(src):
                        # Docker copies a directory's contents into the destination.
                        shutil.copytree(src, target, dirs_exist_ok=True)
                        continue
                    if dest.endswith("/") or dest == "." or len(sources) > 1:
                        target = os.path.join(target, os.path.basename(s))
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    shutil.copy2(src, target)
            elif word == "RUN" and "cargo build" in args:
                if not dep_build_seen:
                    dep_build_seen = True
                    check_targets(tmp, where, "the dependency layer")
                else:
                    touched = set(re.findall(r"touch\s+([^&;|]+)", args))
                    touched = {t for group in touched for t in group.split()}
                    for s in stubs:
                        if s not in touched and os.path.exists(os.path.join(tmp, s)):
                            fail(where, f"stub {s} from the dependency layer is not touched before "
                                        f"this build: COPY keeps older mtimes, so cargo could "
                                        f"keep the stub binary")
            elif word == "RUN" and not dep_build_seen:
                before = set(walk(tmp))
                for cmd in re.split(r"&&|;", args):
                    first = cmd.split()[0] if cmd.split() else ""
                    if first not in SAFE_STUB_COMMANDS:
                        fail(where, f"cannot replay {first!r} before the dependency build; "
                                    f"check.sh only replays {sorted(SAFE_STUB_COMMANDS)}")
                        return
                subprocess.run(["sh", "-euc", args], cwd=tmp, check=True)
                stubs += sorted(set(walk(tmp)) - before)
        if not dep_build_seen:
            fail(DOCKERFILE, "the builder stage never runs cargo build")
            return
        check_targets(tmp, f"{DOCKERFILE} (builder stage)", "the final build")
        # include_str!/include_bytes! reach outside src/ (config/default.yaml): every such file
        # must have been copied too.
        for rel in walk(tmp):
            if not rel.endswith(".rs"):
                continue
            text = open(os.path.join(tmp, rel), errors="replace").read()
            for m in re.finditer(r'include_(?:str|bytes)!\(\s*"([^"]+)"\s*\)', text):
                target = os.path.normpath(os.path.join(os.path.dirname(rel), m.group(1)))
                if not os.path.exists(os.path.join(tmp, target)):
                    fail(DOCKERFILE, f"{rel} includes {target}, which the builder stage does "
                                     f"not COPY")
    finally:
        shutil.rmtree(tmp)


def walk(top):
    for d, _, files in os.walk(top):
        if os.path.relpath(d, top).split(os.sep)[0] == "target":
            continue
        for f in files:
            yield os.path.relpath(os.path.join(d, f), top)


@functools.cache
def host_triple():
    """The platform rustc builds for here (`host:` in `rustc -vV`), asked once."""
    out = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("host:"))


def check_targets(tmp, where, what):
    """`cargo metadata --locked`: the workspace loads from these files alone and Cargo.lock is
    up to date; then wsgate's lib and bin sources must exist for `cargo build --bin wsgate`."""
    # Offline, cargo has only what the build fetched: the crates of this platform. Without the
    # filter it wants every platform's (Windows-only ones too), which a fresh machine lacks.
    r = subprocess.run(["cargo", "metadata", "--locked", "--offline", "--format-version", "1",
                        "--filter-platform", host_triple()],
                       cwd=tmp, capture_output=True, text=True)
    if r.returncode != 0:
        lines = r.stderr.strip().splitlines() or ["(no output)"]
        first = next((l for l in lines if l.startswith("error")), lines[-1])
        fail(where, f"cargo cannot load the workspace for {what}: {first}")
        return
    meta = json.loads(r.stdout)
    pkg = [p for p in meta["packages"] if p["name"] == "wsgate" and p.get("source") is None]
    if not pkg:
        fail(where, f"no wsgate package in the workspace for {what}")
        return
    for t in pkg[0]["targets"]:
        needed = ("lib" in t["kind"]) or ("bin" in t["kind"] and t["name"] == "wsgate") \
            or ("custom-build" in t["kind"])
        if needed and not os.path.exists(t["src_path"]):
            fail(where, f"{what}: {os.path.relpath(t['src_path'], tmp)} (target {t['name']}) "
                        f"is missing")


def cmd_dockerfile():
    instructions = parse_dockerfile(os.path.join(ROOT, DOCKERFILE))
    args_defaults = {}
    stages, current = [], None
    for n, word, args in instructions:
        where = f"{DOCKERFILE}:{n}"
        if word.upper() not in KNOWN:
            fail(where, f"unknown instruction {word!r}")
            continue
        if word != word.upper():
            fail(where, f"write instructions in upper case ({word.upper()})")
        word = word.upper()
        if word == "ARG" and current is None:
            name, _, default = args.partition("=")
            args_defaults[name.strip()] = default.strip()
        if word == "FROM":
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)",
                           lambda m: args_defaults.get(m.group(1) or m.group(2), ""),
                           args.split()[0])
            m = re.search(r"\s[Aa][Ss]\s+(\S+)\s*$", args)
            current = {"line": n, "image": image, "name": m.group(1) if m else None, "body": []}
            stages.append(current)
        elif current is None and word != "ARG":
            fail(where, f"{word} before the first FROM")
        elif current is not None:
            current["body"].append((n, word, args))
    if len(stages) < 2:
        fail(DOCKERFILE, "expected a multi-stage build (a builder and a runtime stage)")
        return finish()
    builder, final = stages[0], stages[-1]
    if not re.fullmatch(r"rust:[\w.]*-?bookworm", builder["image"]):
        fail(f"{DOCKERFILE}:{builder['line']}", f"builder should be rust:*-bookworm, not "
                                                 f"{builder['image']}")
    if final["image"] not in RUNTIME_BASES:
        fail(f"{DOCKERFILE}:{final['line']}", f"runtime base {final['image']} is not one of "
                                               f"{sorted(RUNTIME_BASES)}")
    names = set()
    rules = load_ignore(os.path.join(ROOT, IGNOREFILE))
    for stage in stages:
        for n, word, args in stage["body"]:
            where = f"{DOCKERFILE}:{n}"
            if word == "ADD":
                fail(where, "use COPY (ADD fetches URLs and unpacks archives)")
            if word != "COPY":
                continue
            flags, sources, _ = copy_parts(args)
            frm = [f.split("=", 1)[1] for f in flags if f.startswith("--from=")]
            if frm:
                if frm[0] not in names:
                    fail(where, f"COPY --from={frm[0]}: no earlier stage of that name")
                continue
            for s in sources:
                if not os.path.exists(os.path.join(ROOT, s)):
                    fail(where, f"COPY source {s} does not exist in the repository")
                    continue
                for f in files_under(s):
                    if ignored(rules, f):
                        fail(where, f"COPY source {f} is excluded by {IGNOREFILE}")
                        break
        if stage["name"]:
            names.add(stage["name"])
    body = final["body"]
    words = [w for _, w, _ in body]
    users = [a for _, w, a in body if w == "USER"]
    if not users:
        fail(DOCKERFILE, "the runtime stage has no USER: it would run as root")
    elif users[-1].split(":")[0] in ("root", "0"):
        fail(DOCKERFILE, f"the runtime stage runs as {users[-1]}")
    elif not users[-1].split(":")[0].isdigit():
        fail(DOCKERFILE, f"USER {users[-1]}: use a numeric uid so Kubernetes' runAsNonRoot can "
                         f"verify it")
    for required in ("EXPOSE", "STOPSIGNAL", "ENTRYPOINT"):
        if required not in words:
            fail(DOCKERFILE, f"the runtime stage has no {required}")
    for n, word, args in body:
        where = f"{DOCKERFILE}:{n}"
        if word == "STOPSIGNAL" and args != "SIGTERM":
            fail(where, "STOPSIGNAL must be SIGTERM (it starts wsgate's graceful drain)")
        if word == "RUN" and "distroless" in final["image"]:
            fail(where, "RUN in a distroless stage: there is no shell")
        if word == "ENTRYPOINT":
            try:
                argv = json.loads(args)
            except ValueError:
                argv = None
            if not isinstance(argv, list):
                fail(where, "ENTRYPOINT must be the exec (JSON) form, so wsgate is PID 1 and "
                            "gets SIGTERM itself")
            elif "--config" not in argv or argv[argv.index("--config") + 1:][:1] != \
                    ["/etc/wsgate/wsgate.yaml"]:
                fail(where, "ENTRYPOINT must pass --config /etc/wsgate/wsgate.yaml")
    workdirs = [a for _, w, a in builder["body"] if w == "WORKDIR"]
    simulate_builder(builder["body"], workdirs[0] if workdirs else "/")
    finish()


# --- consistency -------------------------------------------------------------------------------

def unit_value(text, key):
    values = re.findall(rf"^{key}=(.*)$", text, re.M)
    return values[-1].strip() if values else None


def cmd_consistency():
    sd = WsgateConfig(open(os.path.join(ROOT, "deploy/systemd/wsgate.yaml")).read(),
                      "deploy/systemd/wsgate.yaml")
    k8s = WsgateConfig(configmap_text(), CONFIGMAP)
    img = WsgateConfig(open(os.path.join(ROOT, "deploy/docker/wsgate.yaml")).read(),
                       "deploy/docker/wsgate.yaml")
    for c in (sd, k8s, img):
        if c.tls:
            fail(c.where, "the examples stay plain HTTP behind the load balancer (TLS there); "
                          "see deploy/README.md to add TLS")

    # systemd
    unit = open(os.path.join(ROOT, "deploy/systemd/wsgate.service")).read()
    where = "deploy/systemd/wsgate.service"
    stop = unit_value(unit, "TimeoutStopSec")
    if stop is None:
        fail(where, "no TimeoutStopSec")
    elif systemd_timespan(stop, where) <= sd.grace:
        fail(where, f"TimeoutStopSec={stop} must be longer than shutdown_grace "
                    f"({sd.grace:g}s) in {sd.where}")
    nofile = unit_value(unit, "LimitNOFILE")
    if sd.max_connections and nofile and 2 * sd.max_connections >= int(nofile):
        fail(sd.where, f"limits.max_connections ({sd.max_connections}) x 2 descriptors per "
                       f"relayed session must stay under LimitNOFILE={nofile}")
    for key, want in (("Type", "notify"), ("KillSignal", "SIGTERM"),
                      ("ExecStart", "/usr/local/bin/wsgate --config /etc/wsgate/wsgate.yaml"),
                      ("Restart", "on-failure"), ("LimitNOFILE", "65536")):
        if unit_value(unit, key) != want:
            fail(where, f"{key} should be {want}")

    # Kubernetes
    dep = load_yaml("deploy/kubernetes/deployment.yaml")
    where = "deploy/kubernetes/deployment.yaml"
    pod = dep["spec"]["template"]["spec"]
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    if tgps < k8s.grace + 5:
        fail(where, f"terminationGracePeriodSeconds ({tgps}) must be at least shutdown_grace "
                    f"({k8s.grace:g}s) + 5s")
    if dep["spec"]["strategy"]["rollingUpdate"].get("maxUnavailable") != 0:
        fail(where, "rollingUpdate.maxUnavailable must be 0")
    annotation = dep["spec"]["template"]["metadata"].get("annotations", {}).get("checksum/config")
    # Optional (without it, config edits reach running pods by hot reload), but never stale.
    if annotation is not None and annotation != config_checksum():
        fail(where, f"checksum/config is {annotation!r} but the ConfigMap's wsgate.yaml hashes "
                    f"to {config_checksum()!r}: update the annotation (it is what makes "
                    f"`kubectl apply` roll the pods on a config change)")
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    want = sorted(k8s.ports + ([k8s.admin_port] if k8s.admin_port else []))
    if sorted(ports.values()) != want:
        fail(where, f"containerPorts {sorted(ports.values())} are not the ConfigMap's listen "
                    f"and admin ports {want}")
    for probe in ("readinessProbe", "livenessProbe"):
        p = container.get(probe)
        if not p:
            fail(where, f"no {probe}")
            continue
        if p["httpGet"]["path"] != k8s.health_path:
            fail(where, f"{probe} path {p['httpGet']['path']} is not health_path "
                        f"{k8s.health_path}")
        if ports.get(p["httpGet"]["port"], p["httpGet"]["port"]) not in k8s.ports:
            fail(where, f"{probe} port is not a wsgate listener")
    live = container["livenessProbe"]
    if live.get("failureThreshold", 3) * live.get("periodSeconds", 10) <= k8s.drain:
        fail(where, "livenessProbe would fail during the drain (503 for drain_delay) and "
                    "restart the container: failureThreshold x periodSeconds must exceed it")
    cm_name = load_yaml(CONFIGMAP)["metadata"]["name"]
    if not any((v.get("configMap") or {}).get("name") == cm_name for v in pod["volumes"]):
        fail(where, f"no volume from ConfigMap {cm_name}")
    if not any(m["mountPath"] == "/etc/wsgate" for m in container["volumeMounts"]):
        fail(where, "the config is not mounted at /etc/wsgate (the image's --config directory)")
    svc = load_yaml("deploy/kubernetes/service.yaml")
    for p in svc["spec"]["ports"]:
        if ports.get(p["targetPort"], p["targetPort"]) not in k8s.ports:
            fail("deploy/kubernetes/service.yaml", f"targetPort {p['targetPort']} is not a "
                                                   f"wsgate listener")

    # Docker: `docker stop` waits 10s before SIGKILL unless told otherwise.
    if img.grace >= 10:
        fail(img.where, f"shutdown_grace ({img.grace:g}s) must fit docker stop's default 10s")
    exposed = re.findall(r"^EXPOSE\s+(\d+)", open(os.path.join(ROOT, DOCKERFILE)).read(), re.M)
    if sorted(int(p) for p in exposed) != img.ports:
        fail(DOCKERFILE, f"EXPOSE {exposed} does not match the image config's ports {img.ports}")

    # AWS (CloudFormation): tags such as !Ref are read as plain values.
    class Loader(yaml.SafeLoader):
        pass
    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    for rel in ("deploy/lb/aws-alb.yaml", "deploy/lb/aws-nlb.yaml"):
        t = yaml.load(open(os.path.join(ROOT, rel)), Loader=Loader)
        for name, res in t["Resources"].items():
            p = res.get("Properties", {})
            attrs = {a["Key"]: a["Value"] for a in p.get("TargetGroupAttributes", [])
                     + p.get("LoadBalancerAttributes", [])}
            if res["Type"].endswith("::TargetGroup"):
                detect = p["HealthCheckIntervalSeconds"] * p["UnhealthyThresholdCount"]
                if detect >= sd.drain:
                    fail(rel, f"{name}: {detect}s to mark a draining host down is not within "
                              f"drain_delay ({sd.drain:g}s)")
                if p.get("HealthCheckPath") != sd.health_path:
                    fail(rel, f"{name}: HealthCheckPath is not {sd.health_path}")
                if p["Port"] not in sd.ports:
                    fail(rel, f"{name}: port {p['Port']} is not a wsgate listener {sd.ports}")
                dereg = int(attrs.get("deregistration_delay.timeout_seconds", 300))
                if dereg < sd.grace:
                    fail(rel, f"{name}: deregistration_delay ({dereg}s) is shorter than "
                              f"shutdown_grace ({sd.grace:g}s): the LB would cut WebSockets "
                              f"before wsgate closes them with 1001")
            if "idle_timeout.timeout_seconds" in attrs:
                if int(attrs["idle_timeout.timeout_seconds"]) <= sd.ping:
                    fail(rel, f"{name}: idle timeout must exceed keep_alive_interval "
                              f"({sd.ping:g}s)")

    # HAProxy
    rel = "deploy/lb/haproxy.cfg"
    cfg = open(os.path.join(ROOT, rel)).read()
    m = re.search(r"^\s*default-server\b.*\binter\s+(\S+).*\bfall\s+(\d+)", cfg, re.M)
    if not m or proxy_duration(m.group(1), rel) * int(m.group(2)) >= sd.drain:
        fail(rel, f"default-server inter x fall must be within drain_delay ({sd.drain:g}s)")
    m = re.search(r"^\s*timeout\s+tunnel\s+(\S+)", cfg, re.M)
    if not m or proxy_duration(m.group(1), rel) <= sd.ping:
        fail(rel, f"timeout tunnel must exceed keep_alive_interval ({sd.ping:g}s)")
    if not re.search(rf"^\s*option\s+httpchk\s+GET\s+{re.escape(sd.health_path)}\s*$", cfg, re.M):
        fail(rel, f"no `option httpchk GET {sd.health_path}`")
    for port in re.findall(r"^\s*server\s+\S+\s+\S+:(\d+)", cfg, re.M):
        if int(port) not in sd.ports:
            fail(rel, f"server port {port} is not a wsgate listener {sd.ports}")

    # nginx
    rel = "deploy/lb/nginx.conf"
    cfg = open(os.path.join(ROOT, rel)).read()
    m = re.search(r"^\s*proxy_read_timeout\s+(\S+);", cfg, re.M)
    if not m or proxy_duration(m.group(1), rel) <= sd.ping:
        fail(rel, f"proxy_read_timeout must exceed keep_alive_interval ({sd.ping:g}s)")
    for port in re.findall(r"^\s*server\s+[^\s:;]+:(\d+)", cfg, re.M):
        if int(port) not in sd.ports:
            fail(rel, f"server port {port} is not a wsgate listener {sd.ports}")
    finish()


def main(argv):
    cmds = {
        "configmap-extract": (cmd_configmap_extract, 2),
        "kustomize-resources": (cmd_kustomize_resources, 1),
        "dockerfile": (cmd_dockerfile, 0),
        "consistency": (cmd_consistency, 0),
        "config-checksum": (lambda: print(config_checksum()), 0),
    }
    if not argv or argv[0] not in cmds or len(argv) - 1 != cmds[argv[0]][1]:
        raise SystemExit(__doc__)
    fn, _ = cmds[argv[0]]
    fn(*argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
