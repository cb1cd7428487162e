"""The live half of deployment/k8s/check: the manifests tell the truth.

It renders the cluster overlay and runs what it declares on this machine, as a kubelet would
but with processes for containers: every Deployment's and StatefulSet's pods (one each, two
ws-gateways; a Deployment's pod named <name>-<random>, a StatefulSet's <name>-<ordinal>), each
container with the command, args, environment, volumes and ports the manifests give, from the
"image": the binaries the Dockerfile puts in it (target/<profile>/...) with the Dockerfile's ENV
and ENTRYPOINT, or, for the nginx image, this machine's sh and nginx. Each pod has an address of
its own on loopback (127.X.1.N) where 0.0.0.0 stands in the manifests, as a pod's network
namespace would give it; each Service has one (127.X.2.N) and a proxy there that forwards its
port to the targetPort of the selected pods that pass their readiness probe, as kube-proxy does;
a Service name in an address (nginx's upstreams) becomes that address, as cluster DNS would. A
headless Service (clusterIP None) has neither, as in a cluster: its StatefulSet's pods' DNS
names (<pod>.<service>) become their pods' addresses.

What differs from a real cluster, and only that: the backends' URLs (SAMVAD_KAFKA_BROKERS,
SAMVAD_MONGODB_URL, SAMVAD_REDIS_URL, the assets pods' SAMVAD_S3_*) point at the local test Kafka
(tansu), MongoDB (SecantusDB), Redis and S3 server (s3s-fs) that deployment/scripts/deps starts, SAMVAD_KAFKA_REPLICATION is 1 (one broker), the
login provider is `dev` (the test logs in as anyone), tansu's fetch wait is 10 ms (see
OPERATIONS.md), and the Secret samvad-secrets the operator would create is made up here. Each
of those settings must already be in the manifests (but the fetch wait): a renamed one fails.

Then, in order: every SAMVAD_ setting a container is given must be one its binary knows (its
--help), every declared probe answers on its declared port and path, and a chat goes through
nginx's Service: two users log in with the dev provider, one WebSocket each (through
auth_request), a 1:1 message each way, a group message, a REST message, the web page. A probe
path that answers 404, or a process listening on a port its container does not declare, fails
at once. Last, the drain: with receivers on both ws-gateway pods and the sender on one, SIGTERM
to the other while the sender streams messages to every receiver: its /readyz turns 503 at
once while its sockets still carry messages, new connections go to the other pod, its sockets
close with 1001 after SAMVAD_DRAIN_SECS, within SAMVAD_CLOSE_SPREAD_SECS, the clients reconnect
(to the other pod) and get every message acked to them, and the pod exits within
terminationGracePeriodSeconds. Then, as the StatefulSet controller would, the pod starts again
under the same name, passes its probes, and the broker holds one gateway topic per ws-gateway
pod name (gateway.ws-gateway-0.v2, gateway.ws-gateway-1.v2): the restart made none. The
timeline is printed.

Everything it starts is on loopback, bounded in time, and stopped at the end, failure or not
(SIGTERM to this script included); on failure the pods' logs are kept and their ends printed.
"""

import json
import os
import random
import re
import select
import shutil
import signal
import socket
import string
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import websockets.exceptions
import websockets.sync.client

import policy

ROOT = policy.ROOT
DEPS = os.path.join(ROOT, "deployment", "scripts", "deps")
DOCKERFILE = os.path.join(ROOT, "deployment", "docker", "Dockerfile")
PROFILE = os.environ.get("SAMVAD_K8S_PROFILE", "dev")
BIN = os.path.join(ROOT, "target", "debug" if PROFILE == "dev" else PROFILE)
# The image of the cluster overlay that stands for this machine's nginx.
NGINX_IMAGE = re.compile(r"^nginx:")
# How long the cluster may take to become ready (tansu forms consumer groups slowly).
READY_TIMEOUT = 180
# Pods per Deployment or StatefulSet: one, but two ws-gateways, for the drain.
PODS = {"ws-gateway": 2}
# The object store's settings deps gives: only the assets pods need them all.
ATTACHMENT_SETTINGS = ("SAMVAD_ASSETS_STORAGE", "SAMVAD_S3_ACCESS_KEY_ID", "SAMVAD_S3_SECRET_ACCESS_KEY")
WORKLOADS = ("Deployment", "StatefulSet")


class Failure(Exception):
    pass


def log(msg):
    print("     " + msg, flush=True)


# --- The image: what deployment/docker/Dockerfile puts in it ------------------------------------

def image_of_dockerfile():
    """The final stage's binaries (COPY ... /usr/local/bin/ from the build's cargo build -p
    list), ENV and ENTRYPOINT."""
    with open(DOCKERFILE) as f:
        text = f.read().replace("\\\n", " ")
    final = text[text.rindex("\nFROM "):]
    copied = re.search(r"cp ((?:[\w-]+\s+)+)/out/", text)
    if not copied or "COPY --from=build /out/ /usr/local/bin/" not in final:
        raise Failure("the Dockerfile no longer copies the binaries to /usr/local/bin as this test reads it")
    binaries = set(copied.group(1).split())
    env = {}
    for line in re.findall(r"^ENV (.*)$", final, re.M):
        for pair in line.split():
            k, v = pair.split("=", 1)
            env[k] = v
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", final, re.M).group(1))
    return binaries, env, entry


# --- Deployments and StatefulSets as pods ---------------------------------------------------------

class Pod:
    def __init__(self, workload, ordinal, ip, workdir):
        """The pod `ordinal` (from 0) of a Deployment or StatefulSet, named as Kubernetes names
        it: a Deployment's pod anew each time (a random suffix), a StatefulSet's by its ordinal,
        with the labels the StatefulSet controller adds."""
        self.workload = workload
        self.labels = dict(workload["spec"]["template"]["metadata"].get("labels") or {})
        self.spec = workload["spec"]["template"]["spec"]
        if workload["kind"] == "StatefulSet":
            self.name = "%s-%d" % (workload["metadata"]["name"], ordinal)
            self.labels.update({"statefulset.kubernetes.io/pod-name": self.name,
                                "apps.kubernetes.io/pod-index": str(ordinal)})
        else:
            suffix = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(5))
            self.name = "%s-%s" % (workload["metadata"]["name"], suffix)
        self.ip = ip
        self.dir = os.path.join(workdir, "pods", self.name)
        self.proc = None
        self.log = os.path.join(workdir, "logs", self.name + ".log")
        self.container = self.spec["containers"][0]
        self.ready = False

    def port(self, ref):
        """A named or numbered port of the pod's containers."""
        for p in self.container.get("ports") or []:
            if ref in (p.get("name"), p["containerPort"]):
                return p["containerPort"]
        raise Failure("%s: no container port %r" % (self.name, ref))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


def expand(text, env):
    """Kubernetes' $(VAR) in command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


class Cluster:
    def __init__(self, objs, workdir, deps_env, secrets):
        self.objs = objs
        self.workdir = workdir
        self.deps_env = deps_env
        self.secrets = secrets
        self.net = random.randint(64, 250)
        self.pods = []
        self.services = {}  # name -> (ip, spec)
        self.headless = {}  # name -> spec: no address, no proxy
        self.proxies = []
        self.stopping = threading.Event()
        self.configmaps = {o["metadata"]["name"]: o.get("data") or {} for o in objs if o["kind"] == "ConfigMap"}
        self.binaries, self.image_env, self.entrypoint = image_of_dockerfile()
        self.known = {}  # binary -> the SAMVAD_ settings its --help names

    # Addresses: what a pod's network namespace and cluster DNS give.
    def rewrite(self, value, mounts, pod):
        value = value.replace("0.0.0.0:", pod.ip + ":")
        for name, (ip, _) in self.services.items():
            value = re.sub(r"(?<![\w.-])%s(?:\.samvad(?:\.svc(?:\.cluster\.local)?)?)?(?=:\d)" % re.escape(name), ip, value)
        for other in self.pods:
            governing = other.workload["spec"].get("serviceName")
            if other.workload["kind"] == "StatefulSet" and governing in self.headless:
                value = re.sub(r"(?<![\w.-])%s\.%s(?:\.samvad(?:\.svc(?:\.cluster\.local)?)?)?(?=:\d)" % (
                    re.escape(other.name), re.escape(governing)), other.ip, value)
        for path, local in sorted(mounts.items(), key=lambda m: -len(m[0])):
            value = re.sub(r"(?<![\w.-])%s(?=/|\s|$|\")" % re.escape(path), local, value)
        return value

    def make_pods(self):
        n = 0
        for w in self.objs:
            if w["kind"] not in WORKLOADS:
                continue
            for ordinal in range(PODS.get(w["metadata"]["name"], 1)):
                n += 1
                self.pods.append(Pod(w, ordinal, "127.%d.1.%d" % (self.net, n), self.workdir))
        for i, svc in enumerate(o for o in self.objs if o["kind"] == "Service"):
            if svc["spec"].get("clusterIP") == "None":
                self.headless[svc["metadata"]["name"]] = svc
            else:
                self.services[svc["metadata"]["name"]] = ("127.%d.2.%d" % (self.net, i + 1), svc)
        for pod in self.pods:
            governing = pod.workload["spec"].get("serviceName")
            if pod.workload["kind"] == "StatefulSet" and governing not in self.headless and governing not in self.services:
                raise Failure("%s: its StatefulSet's serviceName %s is not a Service in the manifests" % (pod.name, governing))

    def check_attachment_settings(self):
        """The assets pods are given every setting of the object store deps stands in for."""
        for pod in self.pods:
            if (pod.container.get("command") or [""])[0] != "assets":
                continue
            env = self.environment(pod, True)
            missing = [n for n in ATTACHMENT_SETTINGS if n not in self.deps_env or env.get(n) != self.deps_env[n]]
            if missing:
                raise Failure("%s: the manifests do not set %s" % (pod.name, ", ".join(missing)))
            return
        raise Failure("the manifests have no assets pod")

    def volumes(self, pod):
        """mountPath -> local directory, filled as the kubelet would."""
        mounts = {}
        volumes = {v["name"]: v for v in pod.spec.get("volumes") or []}
        for m in pod.container.get("volumeMounts") or []:
            v = volumes[m["name"]]
            local = os.path.join(pod.dir, "volumes", m["name"])
            os.makedirs(local, exist_ok=True)
            if "configMap" in v:
                data = self.configmaps.get(v["configMap"]["name"])
                if data is None:
                    raise Failure("%s: ConfigMap %s is not in the manifests" % (pod.name, v["configMap"]["name"]))
                for key, text in data.items():
                    with open(os.path.join(local, key), "w") as f:
                        f.write(text)
            elif "secret" in v:
                data = self.secrets.get(v["secret"]["secretName"])
                if data is None and not v["secret"].get("optional"):
                    raise Failure("%s: Secret %s is required and the operator would have to make it" % (
                        pod.name, v["secret"]["secretName"]))
                for key, text in (data or {}).items():
                    with open(os.path.join(local, key), "w") as f:
                        f.write(text)
            elif "emptyDir" not in v:
                raise Failure("%s: volume %s: only configMap, secret and emptyDir are expected" % (pod.name, m["name"]))
            mounts[m["mountPath"]] = local
        return mounts

    def environment(self, pod, samvad):
        c = pod.container
        env = dict(self.image_env) if samvad else {}
        for src in c.get("envFrom") or []:
            if "configMapRef" in src:
                name = src["configMapRef"]["name"]
                if name not in self.configmaps:
                    raise Failure("%s: envFrom ConfigMap %s is not in the manifests" % (pod.name, name))
                env.update(self.configmaps[name])
            elif "secretRef" in src:
                env.update(self.secrets[src["secretRef"]["name"]])
        for var in c.get("env") or []:
            if "value" in var:
                env[var["name"]] = expand(var["value"], env)
                continue
            ref = var.get("valueFrom") or {}
            if "fieldRef" in ref:
                field = ref["fieldRef"]["fieldPath"]
                env[var["name"]] = {"metadata.name": pod.name, "status.podIP": pod.ip}[field]
            elif "secretKeyRef" in ref:
                s = ref["secretKeyRef"]
                value = (self.secrets.get(s["name"]) or {}).get(s["key"])
                if value is None and not s.get("optional"):
                    raise Failure("%s: %s needs key %s of Secret %s, which docs/KUBERNETES.md does not make" % (
                        pod.name, var["name"], s["key"], s["name"]))
                if value is not None:
                    env[var["name"]] = value
            elif "configMapKeyRef" in ref:
                s = ref["configMapKeyRef"]
                env[var["name"]] = self.configmaps[s["name"]][s["key"]]
            else:
                raise Failure("%s: %s: an env source this test does not know" % (pod.name, var["name"]))
        if samvad:
            # The differences from a real cluster (the module's docstring), each a setting the
            # manifests must already give.
            overrides = dict(self.deps_env)
            overrides["SAMVAD_KAFKA_REPLICATION"] = "1"
            overrides["SAMVAD_AUTH_PROVIDER"] = "dev"
            for name, value in overrides.items():
                if name in ATTACHMENT_SETTINGS and name not in env:
                    continue  # the assets pods' own (check_attachment_settings)
                if name not in env:
                    raise Failure("%s: the manifests do not set %s" % (pod.name, name))
                env[name] = value
            env["SAMVAD_KAFKA_FETCH_WAIT_MS"] = "10"
        env["HOSTNAME"] = pod.name
        env["PATH"] = os.environ["PATH"]
        return env

    def argv(self, pod, env, mounts):
        c = pod.container
        image = c["image"]
        samvad = image.split(":")[0] == "samvad"
        command = c.get("command") or (self.entrypoint if samvad else None)
        if command is None:
            raise Failure("%s: no command, and this test knows only the samvad image's entry point" % pod.name)
        argv = [self.rewrite(expand(a, env), mounts, pod) for a in command + (c.get("args") or [])]
        if samvad:
            name = os.path.basename(argv[0])
            if name not in self.binaries:
                raise Failure("%s: %s is not in the image (the Dockerfile copies %s)" % (
                    pod.name, argv[0], ", ".join(sorted(self.binaries))))
            argv[0] = os.path.join(BIN, name)
        elif NGINX_IMAGE.match(image):
            if os.path.basename(argv[0]) not in ("sh", "nginx"):
                raise Failure("%s: the nginx image's %s stands for this machine's sh and nginx only" % (pod.name, argv[0]))
        else:
            raise Failure("%s: image %s: this test runs only samvad and nginx" % (pod.name, image))
        return argv, samvad

    def known_settings(self, binary, role_args):
        """The SAMVAD_ settings the binary reads, from its own --help."""
        key = (binary, tuple(role_args))
        if key not in self.known:
            out = subprocess.run([binary] + role_args + ["--help"], capture_output=True, text=True, timeout=30)
            names = set(re.findall(r"\[env: (SAMVAD_[A-Z0-9_]+)[=\]]", out.stdout))
            if len(names) < 20:
                raise Failure("%s --help names only %d settings: %s" % (binary, len(names), out.stderr.strip()))
            self.known[key] = names
        return self.known[key]

    def start(self, pod):
        os.makedirs(pod.dir, exist_ok=True)
        mounts = self.volumes(pod)
        image = pod.container["image"]
        env = self.environment(pod, image.split(":")[0] == "samvad")
        argv, samvad = self.argv(pod, env, mounts)
        env = {k: self.rewrite(v, mounts, pod) for k, v in env.items()}
        if samvad:
            known = self.known_settings(argv[0], [a for a in argv[1:] if not a.startswith("-")])
            unknown = sorted(k for k in env if k.startswith("SAMVAD_") and k not in known)
            if unknown:
                raise Failure("%s: %s: not settings %s reads (its --help)" % (
                    pod.name, ", ".join(unknown), os.path.basename(argv[0])))
        pod.argv, pod.env = argv, env
        self.launch(pod)

    def launch(self, pod):
        with open(pod.log, "ab") as out:
            pod.proc = subprocess.Popen(pod.argv, env=pod.env, cwd=pod.dir, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        pod.started = time.monotonic()

    # Probes, as the kubelet runs them.
    def probe(self, pod, kind, timeout=None):
        spec = pod.container.get(kind)
        if spec is None:
            raise Failure("%s: no %s" % (pod.name, kind))
        if "httpGet" in spec:
            http = spec["httpGet"]
            url = "http://%s:%d%s" % (pod.ip, pod.port(http["port"]), http.get("path", "/"))
            try:
                with urllib.request.urlopen(url, timeout=timeout or spec.get("timeoutSeconds", 1)) as res:
                    return 200 <= res.status < 400, "%d" % res.status
            except urllib.error.HTTPError as e:
                return False, ("%d %s" % (e.code, e.read().decode(errors="replace").strip()[:200])).strip()
            except OSError as e:
                return False, str(e)
        if "tcpSocket" in spec:
            try:
                socket.create_connection((pod.ip, pod.port(spec["tcpSocket"]["port"])), timeout=2).close()
                return True, "open"
            except OSError as e:
                return False, str(e)
        raise Failure("%s: %s: only httpGet and tcpSocket probes run here" % (pod.name, kind))

    def wait_started(self, pods, deadline, quiet=False):
        """Every pod's startup probe, then liveness and readiness, pass; a pod that exits is
        restarted (restartPolicy Always) up to three times, as a crash loop would be."""
        waiting = {p.name: p for p in pods}
        restarts = {p.name: 0 for p in pods}
        why = {}
        while waiting:
            for pod in list(waiting.values()):
                if not pod.alive():
                    code = pod.proc.returncode
                    if code == 2 or restarts[pod.name] >= 3:
                        raise Failure("%s exited (status %s, %d restarts); the end of its log:\n%s" % (
                            pod.name, code, restarts[pod.name], tail(pod.log)))
                    restarts[pod.name] += 1
                    self.launch(pod)
                    continue
                results = [(kind,) + self.probe(pod, kind) for kind in policy.PROBES]
                for k, ok, r in results:
                    if r.startswith(("404", "405")):
                        raise Failure("%s: its %s on %s answers %s: no such path" % (
                            pod.name, k, pod.container[k]["httpGet"]["path"], r))
                stray = listening(pod.ip) - {p["containerPort"] for p in pod.container.get("ports") or []}
                if stray:
                    raise Failure("%s listens on port %s, which the manifests do not declare (%s)" % (
                        pod.name, ", ".join(map(str, sorted(stray))), ", ".join(
                            "%s %d" % (p.get("name", "-"), p["containerPort"]) for p in pod.container.get("ports") or [])))
                if all(ok for _, ok, _ in results):
                    pod.ready = True
                    del waiting[pod.name]
                    if not quiet:
                        log("%-28s %-15s startup, liveness, readiness: %s" % (
                            pod.name, pod.ip, ", ".join("%s %s" % (
                                pod.container[k]["httpGet"]["path"] if "httpGet" in pod.container[k] else "tcp", r)
                                for k, _, r in results)))
                else:
                    why[pod.name] = "; ".join("%s: %s" % (k, r) for k, ok, r in results if not ok)
            if time.monotonic() > deadline:
                raise Failure("not every probe passed in time:\n" + "\n".join(
                    "  %s (%s): %s" % (n, p.ip, why.get(n, "?")) for n, p in waiting.items()))
            time.sleep(0.3)
        return sum(restarts.values())

    # Services, as kube-proxy: new connections to ready endpoints, in turn.
    def selected(self, svc):
        selector = svc["spec"].get("selector") or {}
        pods = [p for p in self.pods if all(p.labels.get(k) == v for k, v in selector.items())]
        if not pods:
            raise Failure("Service %s selects no pod" % svc["metadata"]["name"])
        return pods

    def serve_services(self):
        for svc in self.headless.values():
            for p in self.selected(svc):
                for port in svc["spec"].get("ports") or []:
                    p.port(port.get("targetPort", port["port"]))
        for name, (ip, svc) in self.services.items():
            pods = self.selected(svc)
            for port in svc["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                endpoints = [(p, p.port(target)) for p in pods]
                listener = socket.socket()
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((ip, port["port"]))
                listener.listen(256)
                self.proxies.append(listener)
                threading.Thread(target=self.accept, args=(listener, endpoints), daemon=True).start()
        threading.Thread(target=self.watch_readiness, daemon=True).start()

    def watch_readiness(self):
        while not self.stopping.is_set():
            for pod in self.pods:
                if pod.proc is not None and "readinessProbe" in pod.container:
                    pod.ready = pod.alive() and self.probe(pod, "readinessProbe")[0]
            time.sleep(0.3)

    def accept(self, listener, endpoints):
        turn = 0
        while not self.stopping.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            ready = [e for e in endpoints if e[0].ready]
            if not ready:
                client.close()
                continue
            pod, port = ready[turn % len(ready)]
            turn += 1
            try:
                upstream = socket.create_connection((pod.ip, port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()

    def stop(self):
        """SIGTERM to every pod, SIGKILL after its grace period; the proxies close."""
        self.stopping.set()
        for listener in self.proxies:
            listener.close()
        for pod in self.pods:
            if pod.alive():
                os.killpg(pod.proc.pid, signal.SIGTERM)
        for pod in self.pods:
            if pod.proc is None:
                continue
            try:
                pod.proc.wait(timeout=pod.spec.get("terminationGracePeriodSeconds", 30))
            except subprocess.TimeoutExpired:
                os.killpg(pod.proc.pid, signal.SIGKILL)
                pod.proc.wait()


def listening(ip):
    """The TCP ports something listens on at `ip` (a pod's own address)."""
    out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout
    return {int(m.group(1)) for m in re.finditer(r"\s%s:(\d+)\s" % re.escape(ip), out)}


def kafka_topics(brokers):
    """The topics the broker has: a Metadata request (v1, every topic), as a Kafka client asks."""
    host, port = brokers.split(",")[0].rsplit(":", 1)

    def string(b, at):
        n = int.from_bytes(b[at:at + 2], "big", signed=True)
        return (b[at + 2:at + 2 + n].decode() if n >= 0 else None), at + 2 + max(n, 0)

    client = b"samvad-k8s-check"
    request = (struct.pack(">hhih", 3, 1, 7, len(client)) + client + struct.pack(">i", -1))
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(struct.pack(">i", len(request)) + request)
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack(">i", data[:4])[0]:
            chunk = conn.recv(65536)
            if not chunk:
                raise Failure("the broker closed the connection during a Metadata request")
            data += chunk
    b, at = data[4:], 4  # after the correlation id
    count, = struct.unpack_from(">i", b, at)
    at += 4
    for _ in range(count):  # brokers: node id, host, port, rack
        at += 4
        _, at = string(b, at)
        at += 4
        _, at = string(b, at)
    at += 4  # the controller
    count, = struct.unpack_from(">i", b, at)
    at += 4
    topics = []
    for _ in range(count):  # error, name, internal, partitions
        at += 2
        name, at = string(b, at)
        at += 1
        topics.append(name)
        partitions, = struct.unpack_from(">i", b, at)
        at += 4
        for _ in range(partitions):  # error, index, leader, replicas, in-sync replicas
            at += 10
            for _ in range(2):
                n, = struct.unpack_from(">i", b, at)
                at += 4 + 4 * n
    return topics


def pipe(a, b):
    socks = [a, b]
    try:
        while True:
            readable, _, _ = select.select(socks, [], [], 60)
            for s in readable:
                data = s.recv(65536)
                if not data:
                    return
                (b if s is a else a).sendall(data)
    except OSError:
        pass
    finally:
        a.close()
        b.close()


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


# --- A client, through nginx --------------------------------------------------------------------

class Closed(Exception):
    def __init__(self, code):
        super().__init__("closed with %s" % code)
        self.code = code


class Http:
    def __init__(self, base):
        self.base = base

    def call(self, method, path, body=None, user=None, key=None):
        headers = {"Content-Type": "application/json"}
        if user:
            headers.update(user=user, accesskey=key)
        req = urllib.request.Request(self.base + path, None if body is None else json.dumps(body).encode(),
                                     headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as res:
                return res.status, res.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def login(self, user):
        status, body = self.call("POST", "/v1.0/login", {"username": user, "authToken": "dev"})
        if status != 200:
            raise Failure("login of %s through nginx: %d %s" % (user, status, body))
        return json.loads(body)["accesskey"]


class Ws:
    """A WebSocket through nginx (the websockets package's client; text frames, v2.1)."""

    def __init__(self, host, port, user, key):
        self.user, self.acked = user, set()
        try:
            self.conn = websockets.sync.client.connect(
                "ws://%s:%d/v1.0/wss/?ack=true&format=text" % (host, port),
                additional_headers={"user": user, "accesskey": key}, open_timeout=10)
        except websockets.exceptions.InvalidStatus as e:
            raise Failure("%s: the WebSocket through nginx was refused: %d" % (user, e.response.status_code))

    def send(self, frame):
        try:
            self.conn.send(json.dumps(frame))
        except websockets.exceptions.ConnectionClosed as e:
            raise Closed(e.rcvd.code if e.rcvd else None)

    def frame(self, until):
        """The next JSON frame, or None once `until` has passed; Closed on a close frame."""
        while True:
            try:
                payload = self.conn.recv(timeout=max(0.01, until - time.monotonic()))
            except TimeoutError:
                return None
            except websockets.exceptions.ConnectionClosed as e:
                raise Closed(e.rcvd.code if e.rcvd else None)
            if payload != "pong":
                frame = json.loads(payload)
                if kind(frame) == "SERVER_ACK":
                    self.acked.add(frame["id"])
                return frame

    def chat(self, mid, to, text, group=False):
        self.send({"_v": 2.1, "id": mid, "head": {"type": "group" if group else "chat", "to": to,
                   "from": self.user, "contentType": "MESSAGE"}, "body": {"text": text}})

    def ack(self, frame):
        self.send({"_v": 2.1, "id": frame["id"], "head": {"type": "chat", "to": "server",
                   "from": self.user, "contentType": "CLIENT_ACK"}})

    def close(self):
        self.conn.close()


def kind(frame):
    return frame.get("head", {}).get("contentType")


def await_messages(ws, ids, seconds, seen=None):
    """Reads until every id in `ids` has arrived (acking each message); the ids seen."""
    seen = set() if seen is None else seen
    until = time.monotonic() + seconds
    while not set(ids) <= seen:
        frame = ws.frame(until)
        if frame is None:
            raise Failure("%s: %d of %d messages did not arrive within %d s: %s" % (
                ws.user, len(set(ids) - seen), len(ids), seconds, sorted(set(ids) - seen)[:5]))
        if kind(frame) in ("MESSAGE", "NOTIFICATION"):
            took(ws, frame, seen)
    return seen


REPEATS = [0]  # messages that arrived again after this client had acked them


def took(ws, frame, seen):
    """Acks a message and notes it seen (and whether it came again)."""
    ws.ack(frame)
    REPEATS[0] += frame["id"] in seen
    seen.add(frame["id"])


def await_acks(ws, ids, seconds):
    """Reads until the server has acked every id in `ids` (at any time on this socket)."""
    until = time.monotonic() + seconds
    while not set(ids) <= ws.acked:
        frame = ws.frame(until)
        if frame is None:
            raise Failure("%s: no server ack within %d s for %s" % (ws.user, seconds, sorted(set(ids) - ws.acked)[:5]))
        if kind(frame) in ("MESSAGE", "NOTIFICATION"):
            ws.ack(frame)


def connections(pod):
    """Open WebSockets on a gateway pod, from its /metrics."""
    with urllib.request.urlopen("http://%s:%d/metrics" % (pod.ip, pod.port("http")), timeout=5) as res:
        for line in res.read().decode().splitlines():
            if line.startswith("samvad_ws_connections "):
                return int(float(line.split()[1]))
    return 0


def connect(cluster, ip, port, user, key):
    """A WebSocket through nginx, and the gateway pod it landed on (from their /metrics)."""
    gateways = [p for p in cluster.pods if p.workload["metadata"]["name"] == "ws-gateway" and p.alive()]
    before = {p.name: connections(p) for p in gateways}
    ws = Ws(ip, port, user, key)
    until = time.monotonic() + 5
    while time.monotonic() < until:
        grown = [p for p in gateways if connections(p) > before[p.name]]
        if len(grown) == 1:
            return ws, grown[0]
        time.sleep(0.05)
    raise Failure("%s: cannot tell which gateway pod holds its socket" % user)


def chat(cluster):
    ip, svc = cluster.services["nginx"]
    port = svc["spec"]["ports"][0]["port"]
    http = Http("http://%s:%d" % (ip, port))
    run = "%x" % int(time.time())
    alice, bob = "k8s-alice-" + run, "k8s-bob-" + run
    keys = {u: http.login(u) for u in (alice, bob)}
    (a, on_a), (b, on_b) = (connect(cluster, ip, port, u, keys[u]) for u in (alice, bob))
    a.chat("a-1", bob, "hello bob")
    await_messages(b, ["a-1"], 30)
    b.chat("b-1", alice, "hello alice")
    await_messages(a, ["b-1"], 30)
    log("1:1 both ways over WebSockets through nginx (%s on %s, %s on %s)" % (alice, on_a.name, bob, on_b.name))
    status, body = http.call("POST", "/v1.0/groups/", {"name": "k8s", "members": [bob]}, alice, keys[alice])
    if status != 200:
        raise Failure("creating a group through nginx: %d %s" % (status, body))
    gid = json.loads(body)["groupId"]
    a.chat("g-1", gid, "hello group", group=True)
    await_messages(b, ["g-1"], 30)
    log("group %s created over REST, a group message delivered" % gid)
    frame = json.dumps({"_v": 2.1, "id": "r-1", "head": {"type": "chat", "to": alice, "from": bob,
                        "contentType": "MESSAGE"}, "body": {"text": "over rest"}})
    status, body = http.call("POST", "/v1.0/messages?format=text&ack=true", [frame], bob, keys[bob])
    if status != 201:
        raise Failure("REST send through nginx: %d %s" % (status, body))
    await_messages(a, ["r-1"], 30)
    log("a message sent over REST arrived on the WebSocket")
    status, body = http.call("GET", "/")
    if status != 200 or "<html" not in body.lower():
        raise Failure("the web page through nginx: %d %s" % (status, body[:200]))
    log("the web page (www) is served at /")
    return http, keys, a, on_a, b, ip, port


def drain(cluster, http, keys, a, on_a, b, ip, port):
    """SIGTERM to the gateway pod that does not hold the sender; see the module's docstring."""
    gateways = [p for p in cluster.pods if p.workload["metadata"]["name"] == "ws-gateway"]
    bob = b.user
    other = on_a
    victim = next(p for p in gateways if p is not other)
    # More receivers, so that each pod holds several (the proxy alternates between them).
    receivers = [b]
    for u in ["%s-%d" % (bob, i) for i in range(1, 7)]:
        keys[u] = http.login(u)
        receivers.append(connect(cluster, ip, port, u, keys[u])[0])
    counts = {p.name: connections(p) for p in gateways}
    env = victim.env
    drain_secs, spread = int(env.get("SAMVAD_DRAIN_SECS", 5)), int(env.get("SAMVAD_CLOSE_SPREAD_SECS", 5))
    grace = victim.spec.get("terminationGracePeriodSeconds", 30)
    log("drain: %s holds %d sockets, %s %d; SAMVAD_DRAIN_SECS %d, SAMVAD_CLOSE_SPREAD_SECS %d, grace %d s" % (
        victim.name, counts[victim.name], other.name, counts[other.name], drain_secs, spread, grace))
    sent = {r.user: [] for r in receivers}
    seen = {r.user: set() for r in receivers}
    n = [0]

    def send_round():
        for r in receivers:
            n[0] += 1
            mid = "d-%04d" % n[0]
            a.chat(mid, r.user, "drain %d" % n[0])
            sent[r.user].append(mid)

    send_round()
    await_acks(a, [m for ids in sent.values() for m in ids], 30)
    t0 = time.monotonic()
    victim.proc.send_signal(signal.SIGTERM)
    flip = None
    while time.monotonic() - t0 < 2:
        ok, why = cluster.probe(victim, "readinessProbe")
        if not ok:
            flip = time.monotonic() - t0
            break
        time.sleep(0.05)
    if flip is None:
        raise Failure("%s: /readyz still ready 2 s after SIGTERM" % victim.name)
    log("t=%.2fs %s /readyz: %s" % (flip, victim.name, why))
    # Meanwhile the open sockets still work, and a new connection goes to the other pod.
    send_round()
    ids = [m for ids in sent.values() for m in ids]
    await_acks(a, ids[-len(receivers):], 10)
    for r in receivers:
        await_messages(r, sent[r.user], 10, seen[r.user])
    newcomer, landed = connect(cluster, ip, port, bob + "-new", http.login(bob + "-new"))
    if landed is not other:
        raise Failure("a connection opened while %s drained went to it, not to %s" % (victim.name, other.name))
    log("t=%.2fs the open sockets still carry messages; a new connection went to %s" % (
        time.monotonic() - t0, other.name))
    if time.monotonic() - t0 >= drain_secs:
        raise Failure("the checks during the drain took longer than SAMVAD_DRAIN_SECS: a slower machine?")
    # Then the closes, and the reconnects; alice keeps sending all along.
    closes, live = {}, list(receivers)
    deadline = t0 + drain_secs + spread + 10
    while live and time.monotonic() < deadline:
        send_round()
        for r in list(live):
            try:
                while (frame := r.frame(time.monotonic() + 0.05)) is not None:
                    if kind(frame) == "MESSAGE":
                        took(r, frame, seen[r.user])
            except (Closed, OSError) as e:
                closes[r.user] = (time.monotonic() - t0, getattr(e, "code", None))
                live.remove(r)
                r.close()
        if time.monotonic() - t0 > drain_secs + spread + 2:
            break  # the rest are on the other pod
        time.sleep(0.2)
    on_victim = sorted(closes)
    if len(on_victim) != counts[victim.name]:
        raise Failure("%d sockets closed, %s held %d" % (len(on_victim), victim.name, counts[victim.name]))
    codes = {code for _, code in closes.values()}
    times = sorted(t for t, _ in closes.values())
    if codes != {1001}:
        raise Failure("sockets closed with %s, not 1001" % codes)
    if times[0] < drain_secs - 0.5 or times[-1] > drain_secs + spread + 3:
        raise Failure("closes at %s s: not within the drain (%d s) plus the spread (%d s)" % (
            ["%.2f" % t for t in times], drain_secs, spread))
    if len(times) >= 3 and spread > 0 and times[-1] - times[0] < 0.2:
        raise Failure("the sockets closed at once (%s), not spread over %d s" % (times, spread))
    log("t=%.2fs..%.2fs %d sockets closed with 1001 (%s)" % (
        times[0], times[-1], len(times), ", ".join("%.2f" % t for t in times)))
    try:
        victim.proc.wait(timeout=max(0.1, t0 + grace - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise Failure("%s did not exit within terminationGracePeriodSeconds (%d s)" % (victim.name, grace))
    exited = time.monotonic() - t0
    log("t=%.2fs %s exited (status %d), within the %d s grace period" % (
        exited, victim.name, victim.proc.returncode, grace))
    # The closed ones reconnect through nginx and get every message acked to them.
    send_round()
    await_acks(a, [m for ids in sent.values() for m in ids], 30)
    reconnected = []
    for user in on_victim:
        ws, landed = connect(cluster, ip, port, user, keys[user])
        if landed is not other:
            raise Failure("%s reconnected to %s, not %s" % (user, landed.name, other.name))
        reconnected.append(ws)
        await_messages(ws, sent[user], 60, seen[user])
    for r in receivers:
        if r.user not in closes:
            await_messages(r, sent[r.user], 60, seen[r.user])
    lost = sum(len(set(ids) - seen[u]) for u, ids in sent.items())
    log("t=%.2fs %d clients reconnected to %s (%d sockets now); %d messages sent, lost: %d, "
        "delivered again after the client acked them: %d" % (
            time.monotonic() - t0, len(reconnected), other.name, connections(other), n[0], lost, REPEATS[0]))
    for ws in reconnected + [newcomer] + receivers:
        ws.close()
    if lost:
        raise Failure("%d messages lost" % lost)
    # The StatefulSet controller makes the pod again under its name (a Deployment would name
    # it anew, and its gateway would make a new topic): it takes up its topic and group again.
    cluster.launch(victim)
    cluster.wait_started([victim], time.monotonic() + READY_TIMEOUT, quiet=True)
    log("t=%.2fs %s started again under its name (%.1f s after it exited), every probe answers" % (
        time.monotonic() - t0, victim.name, time.monotonic() - t0 - exited))
    for i in range(4):
        user = "%s-back-%d" % (bob, i)
        ws, landed = connect(cluster, ip, port, user, http.login(user))
        if landed is victim:
            break
        ws.close()
    else:
        raise Failure("no new connection went to %s once it was ready again" % victim.name)
    a.chat("back-1", user, "to the restarted gateway")
    await_messages(ws, ["back-1"], 30)
    ws.close()
    topics = kafka_topics(cluster.deps_env["SAMVAD_KAFKA_BROKERS"])
    ids = sorted(m.group(1) for m in (re.search(r"(?:^|\.)gateway\.(.+)\.v2$", t) for t in topics) if m)
    if ids != sorted(p.name for p in gateways):
        raise Failure("the gateway topics are for %s, not one for each pod name (%s)" % (
            ids, ", ".join(p.name for p in gateways)))
    log("t=%.2fs a message reached a client on %s; gateway topics: %s (one per pod name: the restart made none)" % (
        time.monotonic() - t0, victim.name, ", ".join(t for t in topics if re.search(r"gateway\..+\.v2$", t))))


def build():
    packages = ["samvad", "ws-gateway", "rest-gateway", "profile", "group@0.1.0", "message-router",
                "group-router", "delivery", "push"]
    cmd = ["cargo", "build", "--locked", "-q", "--profile", PROFILE]
    for p in packages:
        cmd += ["-p", p]
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        raise Failure("cargo build failed")


def main():
    started = time.monotonic()
    # A SIGTERM (a test runner's timeout) unwinds through the clean-up below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if os.environ.get("SAMVAD_K8S_NO_BUILD") != "1":
        build()
    objs = policy.render(os.path.join(policy.K8S, "overlays", "cluster"))
    workdir = tempfile.mkdtemp(prefix="samvad-k8s-")
    os.chmod(workdir, 0o755)  # nginx's workers (nobody, when run as root) read below it
    os.makedirs(os.path.join(workdir, "logs"))
    base = 30000 + (os.getpid() % 100) * 20
    # The cluster overlay's bus is Kafka.
    deps_env = dict(os.environ, SAMVAD_CLUSTER_DIR=os.path.join(workdir, "deps"), SAMVAD_CLUSTER_PORT=str(base),
                    SAMVAD_CLUSTER_BUS="kafka")
    cluster = None
    ok = False
    try:
        up = subprocess.run([DEPS, "up"], env=deps_env, capture_output=True, text=True, timeout=300)
        if up.returncode != 0:
            raise Failure("deployment/scripts/deps up failed:\n" + up.stderr)
        lines = subprocess.run([DEPS, "env"], env=deps_env, capture_output=True, text=True, check=True).stdout
        backends = dict(line.split("=", 1) for line in lines.split())
        secret = "k8s:" + os.urandom(24).hex()
        cluster = Cluster(objs, workdir, backends, {"samvad-secrets": {
            "access-key-secrets": secret, "s3-access-key-id": "made-up", "s3-secret-access-key": "made-up"}})
        cluster.make_pods()
        cluster.check_attachment_settings()
        log("pods on 127.%d.1.0/24, Services on 127.%d.2.0/24; Kafka, MongoDB, Redis, S3 from deployment/scripts/deps" % (
            cluster.net, cluster.net))
        samvad = [p for p in cluster.pods if p.container["image"].startswith("samvad:")]
        for pod in samvad:
            cluster.start(pod)
        restarts = cluster.wait_started(samvad, time.monotonic() + READY_TIMEOUT)
        cluster.serve_services()
        nginx = [p for p in cluster.pods if p not in samvad]
        for pod in nginx:
            cluster.start(pod)
        restarts += cluster.wait_started(nginx, time.monotonic() + 30)
        log("%d pods started, every probe answers (%d restarts)" % (len(cluster.pods), restarts))
        drain(cluster, *chat(cluster))
        ok = True
    except Failure as e:
        print("FAIL the manifests do not tell the truth: %s" % e)
        if cluster:
            for pod in cluster.pods:
                if pod.proc is not None:
                    print("==== %s (%s), the end of its log" % (pod.name, " ".join(pod.argv)))
                    print(tail(pod.log, 15))
    finally:
        if cluster:
            cluster.stop()
        subprocess.run([DEPS, "down"], env=deps_env, capture_output=True, timeout=120)
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print("     logs kept in %s" % workdir)
    if ok:
        print("ok   the cluster overlay runs as declared: probes, a chat through nginx, a drain (%.0f s)" % (
            time.monotonic() - started))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
