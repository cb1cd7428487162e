"""The static half of deployment/k8s/check: every overlay renders, every object validates
against the Kubernetes OpenAPI schema (strict: no unknown fields) of a current release, offline,
from the schemas the kubernetes-validate package bundles, and the manifests keep the rules
below. Then it breaks a copy of the cluster overlay in each way a rule is about and fails
unless the rule notices: a check that cannot fail proves nothing.

Run through deployment/k8s/check (which picks the interpreter with the validator installed).
"""

import copy
import json
import os
import re
import subprocess
import sys

import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K8S = os.path.join(ROOT, "deployment", "k8s")
OVERLAYS = ("cluster", "nats", "dev", "all-in-one")
KUBERNETES_VERSION = "1.37"
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
# Where a workload's annotation says why its image needs a writable root filesystem.
WRITABLE_ROOT = "samvad/writable-root-filesystem"
# The services that must scale on their own, and those only nginx may reach.
AUTOSCALED = ("ws-gateway", "rest-gateway", "delivery")
BEHIND_NGINX = ("ws-gateway", "rest-gateway")
# The services whose pods need names that outlive them: a ws-gateway's SAMVAD_INSTANCE_ID (its
# pod's name) names its Kafka topic, gateway.<id>.v2, and its static group membership. So it is
# a StatefulSet (ws-gateway-0, -1, ...: the same names after a rollout, a restart or a
# reschedule), whose pods start and stop together as a Deployment's do, with nothing on disk,
# and a headless governing Service (each pod's DNS name).
STABLE_IDENTITY = ("ws-gateway",)
# Above SAMVAD_DRAIN_SECS + SAMVAD_CLOSE_SPREAD_SECS: a second for the close handshakes and up
# to 10 s for in-flight work and 1 s for blocking work (STOP_WORK, STOP_RUNTIME in
# libs/runtime/src/node.rs), and a few to spare.
GRACE_MARGIN = 15


def render(path):
    """`kubectl kustomize PATH` as a list of objects."""
    out = subprocess.run(["kubectl", "kustomize", path], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit("kubectl kustomize %s failed:\n%s" % (path, out.stderr.strip()))
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def known_settings():
    """Every setting .env.tmpl documents (the binaries' --help is the live test's list)."""
    with open(os.path.join(ROOT, ".env.tmpl")) as f:
        names = set(re.findall(r"^# ((?:SAMVAD_[A-Z0-9_]+)|RUST_LOG)=", f.read(), re.M))
    if len(names) < 20:
        raise SystemExit(".env.tmpl lists only %d settings: has its format changed?" % len(names))
    return names


def name_of(obj):
    return "%s/%s" % (obj["kind"], obj["metadata"]["name"])


_valid = set()  # objects (as JSON) already found valid: the self-test checks many copies


def schema_problems(objs):
    problems = []
    for obj in objs:
        key = json.dumps(obj, sort_keys=True)
        if key in _valid:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            _valid.add(key)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            problems.append("%s: schema: %s: %s" % (name_of(obj), where, e.message))
        except kubernetes_validate.SchemaNotFoundError:
            problems.append("%s: no schema for %s in Kubernetes %s" % (
                name_of(obj), obj.get("apiVersion"), KUBERNETES_VERSION))
    return problems


def matches(selector, labels):
    """Whether a label selector (matchLabels and matchExpressions) selects `labels`."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def pod_labels(workload):
    return workload["spec"]["template"]["metadata"].get("labels") or {}


def replicas_of(workload, objs):
    """The most pods a workload runs when nothing fails: its replicas or its HPA's minimum."""
    n = workload["spec"].get("replicas", 1)
    for hpa in objs:
        ref = hpa.get("spec", {}).get("scaleTargetRef", {}) if hpa["kind"] == "HorizontalPodAutoscaler" else {}
        if ref.get("kind") == workload["kind"] and ref.get("name") == workload["metadata"]["name"]:
            n = max(n, hpa["spec"].get("minReplicas", 1))
    return n


def container_env(container, configmaps):
    """The container's environment as far as the manifests give it: name -> value (None for a
    value from a Secret or the downward API)."""
    env = {}
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef")
        if ref and ref["name"] in configmaps:
            env.update(configmaps[ref["name"]])
    for var in container.get("env") or []:
        env[var["name"]] = var.get("value")
    return env


def ports_of(container):
    return {p.get("name") for p in container.get("ports") or []} | {
        p["containerPort"] for p in container.get("ports") or []}


def workload_problems(w, objs, configmaps, known):
    problems = []
    name = name_of(w)
    spec = w["spec"]["template"]["spec"]
    pod_sc = spec.get("securityContext") or {}
    if spec.get("automountServiceAccountToken") is not False:
        problems.append("%s: automountServiceAccountToken must be false" % name)
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    for c in containers:
        where = "%s container %s" % (name, c["name"])
        for probe in PROBES:
            if probe not in c and c in spec.get("containers", []):
                problems.append("%s: no %s" % (where, probe))
            http = (c.get(probe) or {}).get("httpGet")
            if http and http.get("port") not in ports_of(c):
                problems.append("%s: %s port %r is not one of its ports" % (where, probe, http.get("port")))
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for what in ("cpu", "memory"):
                if what not in (res.get(kind) or {}):
                    problems.append("%s: no resources.%s.%s" % (where, kind, what))
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append("%s: securityContext.allowPrivilegeEscalation must be false" % where)
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.append("%s: securityContext.capabilities must drop ALL" % where)
        if sc.get("readOnlyRootFilesystem") is not True and not (
                w["metadata"].get("annotations") or {}).get(WRITABLE_ROOT):
            problems.append("%s: securityContext.readOnlyRootFilesystem must be true (or the "
                            "workload's annotation %s must say why not)" % (where, WRITABLE_ROOT))
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            problems.append("%s: runAsNonRoot must be true" % where)
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            problems.append("%s: seccompProfile must be RuntimeDefault" % where)
        image = c.get("image", "")
        if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
            problems.append("%s: image %r has no fixed tag" % (where, image))
        env = container_env(c, configmaps)
        for var in env:
            if (var.startswith("SAMVAD_") or var == "RUST_LOG") and var not in known:
                problems.append("%s: %s is not a setting (.env.tmpl)" % (where, var))
        if any(v.startswith("SAMVAD_") for v in env):
            # The last one wins, as in Kubernetes; an id from the ConfigMap would be shared.
            ids = [var for var in c.get("env") or [] if var["name"] == "SAMVAD_INSTANCE_ID"]
            field = ((ids[-1].get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") if ids else None
            if field != "metadata.name":
                problems.append("%s: SAMVAD_INSTANCE_ID must be the pod's name (valueFrom.fieldRef "
                                "metadata.name): unique among live pods, and the same again for a "
                                "StatefulSet's replaced pod" % where)
        if "SAMVAD_DRAIN_SECS" in known and any(v.startswith("SAMVAD_") for v in env):
            drain = int(env.get("SAMVAD_DRAIN_SECS") or 5)
            spread = int(env.get("SAMVAD_CLOSE_SPREAD_SECS") or 5)
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if grace < drain + spread + GRACE_MARGIN:
                problems.append("%s: terminationGracePeriodSeconds %d is below SAMVAD_DRAIN_SECS %d"
                                " + SAMVAD_CLOSE_SPREAD_SECS %d + %d" % (name, grace, drain, spread, GRACE_MARGIN))
    if w["kind"] == "StatefulSet":
        governing = [s for s in objs if s["kind"] == "Service" and s["metadata"]["name"] == w["spec"].get("serviceName")]
        if not governing or not matches({"matchLabels": governing[0]["spec"].get("selector")}, pod_labels(w)):
            problems.append("%s: serviceName %r is not a Service selecting its pods" % (name, w["spec"].get("serviceName")))
    replicas = replicas_of(w, objs)
    if replicas > 1:
        if not spec.get("topologySpreadConstraints"):
            problems.append("%s: %d replicas and no topologySpreadConstraints" % (name, replicas))
        if not any(p["kind"] == "PodDisruptionBudget" and matches(p["spec"].get("selector"), pod_labels(w))
                   for p in objs):
            problems.append("%s: %d replicas and no PodDisruptionBudget selecting its pods" % (name, replicas))
    return problems


def identity_problems(objs, workloads):
    """The STABLE_IDENTITY services keep their pods' names (above)."""
    problems = []
    for w in workloads:
        if w["metadata"]["name"] not in STABLE_IDENTITY:
            continue
        name = name_of(w)
        if w["kind"] != "StatefulSet":
            problems.append("%s: must be a StatefulSet: its pods' names (its SAMVAD_INSTANCE_ID) name its "
                            "Kafka topic gateway.<id>.v2 and its static memberships, which new pod names "
                            "at every rollout would leave behind" % name)
            continue
        spec = w["spec"]
        if spec.get("podManagementPolicy") != "Parallel":
            problems.append("%s: podManagementPolicy must be Parallel (pods added and removed together, as "
                            "a Deployment's, not each waiting for the one before)" % name)
        if spec.get("volumeClaimTemplates"):
            problems.append("%s: no volumeClaimTemplates: it keeps nothing on disk, and a claim would tie "
                            "each pod to its volume's zone and outlive a scale-down" % name)
        governing = [s for s in objs if s["kind"] == "Service" and s["metadata"]["name"] == spec.get("serviceName")]
        if governing and governing[0]["spec"].get("clusterIP") != "None":
            problems.append("%s: serviceName %s must be a headless Service (clusterIP: None): the pods' DNS "
                            "names, apart from the Service that balances connections" % (name, spec["serviceName"]))
    return problems


def network_problems(objs, workloads):
    problems = []
    nginx = [w for w in workloads if pod_labels(w).get("app.kubernetes.io/name") == "nginx"]
    for w in workloads:
        if w["metadata"]["name"] not in BEHIND_NGINX:
            continue
        policies = [p for p in objs if p["kind"] == "NetworkPolicy"
                    and "Ingress" in p["spec"].get("policyTypes", [])
                    and matches(p["spec"].get("podSelector"), pod_labels(w))]
        if not policies:
            problems.append("%s: no NetworkPolicy restricts who reaches it" % name_of(w))
        for p in policies:
            for rule in p["spec"].get("ingress") or []:
                sources = rule.get("from")
                only_nginx = bool(sources) and all(
                    set(s) == {"podSelector"} and nginx and all(matches(s["podSelector"], pod_labels(n)) for n in nginx)
                    and not any(matches(s["podSelector"], pod_labels(o)) for o in workloads if o not in nginx)
                    for s in sources)
                if not only_nginx:
                    problems.append("%s: %s lets more than nginx's pods reach it" % (name_of(w), name_of(p)))
    return problems


def reference_problems(objs, workloads, configmaps):
    """Services reach declared ports of pods they select; ConfigMaps referenced exist; no
    Secret is committed, and every Secret referenced is one docs/KUBERNETES.md tells the
    operator to create."""
    problems = []
    for svc in (o for o in objs if o["kind"] == "Service"):
        selected = [w for w in workloads if matches({"matchLabels": svc["spec"].get("selector")}, pod_labels(w))]
        if not selected:
            problems.append("%s: selects no pods" % name_of(svc))
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            for w in selected:
                if not any(target in ports_of(c) for c in w["spec"]["template"]["spec"]["containers"]):
                    problems.append("%s: targetPort %r is not a port of %s" % (name_of(svc), target, name_of(w)))
    with open(os.path.join(ROOT, "docs", "KUBERNETES.md")) as f:
        doc = f.read()
    for obj in objs:
        if obj["kind"] == "Secret":
            problems.append("%s: secrets are the operator's, never in the manifests" % name_of(obj))
    for w in workloads:
        spec = w["spec"]["template"]["spec"]
        secrets, maps = set(), set()
        for v in spec.get("volumes") or []:
            if "secret" in v:
                secrets.add(v["secret"]["secretName"])
            if "configMap" in v and not v["configMap"].get("optional"):
                maps.add(v["configMap"]["name"])
        for c in spec.get("containers", []):
            for var in c.get("env") or []:
                ref = var.get("valueFrom") or {}
                if "secretKeyRef" in ref:
                    secrets.add(ref["secretKeyRef"]["name"])
                if "configMapKeyRef" in ref and not ref["configMapKeyRef"].get("optional"):
                    maps.add(ref["configMapKeyRef"]["name"])
            for src in c.get("envFrom") or []:
                if "secretRef" in src:
                    secrets.add(src["secretRef"]["name"])
                if "configMapRef" in src and not src["configMapRef"].get("optional"):
                    maps.add(src["configMapRef"]["name"])
        for s in secrets:
            if not re.search(r"create secret generic %s\b" % re.escape(s), doc):
                problems.append("%s: Secret %s is not among those docs/KUBERNETES.md creates" % (name_of(w), s))
        for m in maps - set(configmaps):
            problems.append("%s: ConfigMap %s is not in the manifests" % (name_of(w), m))
    hpas = [o for o in objs if o["kind"] == "HorizontalPodAutoscaler"]
    for hpa in hpas:
        ref = hpa["spec"]["scaleTargetRef"]
        if not any(w["kind"] == ref["kind"] and w["metadata"]["name"] == ref["name"] for w in workloads):
            problems.append("%s: scales %s/%s, which is not in the manifests" % (name_of(hpa), ref["kind"], ref["name"]))
    for w in workloads:
        if w["metadata"]["name"] in AUTOSCALED and not any(
                h["spec"]["scaleTargetRef"]["kind"] == w["kind"]
                and h["spec"]["scaleTargetRef"]["name"] == w["metadata"]["name"] for h in hpas):
            problems.append("%s: no HorizontalPodAutoscaler" % name_of(w))
    return problems


def problems_of(objs, known):
    configmaps = {o["metadata"]["name"]: o.get("data") or {} for o in objs if o["kind"] == "ConfigMap"}
    workloads = [o for o in objs if o["kind"] in WORKLOADS]
    problems = []
    for w in workloads:
        problems += workload_problems(w, objs, configmaps, known)
    problems += identity_problems(objs, workloads)
    problems += network_problems(objs, workloads)
    problems += reference_problems(objs, workloads, configmaps)
    return problems


def checked(objs, known):
    """The schema's problems; only with none, the policy's (which reads the objects as the
    schema describes them)."""
    return schema_problems(objs) or problems_of(objs, known)


def find(objs, kind, name):
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    raise SystemExit("self-test: the cluster overlay has no %s/%s" % (kind, name))


def workload(objs, name):
    """The workload of that name, whatever its kind."""
    for o in objs:
        if o["kind"] in WORKLOADS and o["metadata"]["name"] == name:
            return o
    raise SystemExit("self-test: the cluster overlay has no workload %s" % name)


def container(objs, name):
    return workload(objs, name)["spec"]["template"]["spec"]["containers"][0]


def instance_id(objs, name):
    return next(v for v in container(objs, name)["env"] if v["name"] == "SAMVAD_INSTANCE_ID")


def to_deployment(objs, name):
    """The StatefulSet `name` as the Deployment it was (its HPA following), schema-valid."""
    w = workload(objs, name)
    w["kind"] = "Deployment"
    for field in ("serviceName", "podManagementPolicy", "updateStrategy", "volumeClaimTemplates",
                  "persistentVolumeClaimRetentionPolicy", "ordinals"):
        w["spec"].pop(field, None)
    for o in objs:
        if o["kind"] == "HorizontalPodAutoscaler" and o["spec"]["scaleTargetRef"]["name"] == name:
            o["spec"]["scaleTargetRef"]["kind"] = "Deployment"


def settings(objs):
    return next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("samvad-settings"))


def rename_setting(objs, old, new):
    data = settings(objs)["data"]
    data[new] = data.pop(old)


# Each way of breaking the cluster overlay, and what the check must then say.
BREAKAGES = [
    ("ws-gateway without a liveness probe", "no livenessProbe",
     lambda o: container(o, "ws-gateway").pop("livenessProbe")),
    ("delivery without a readiness probe", "no readinessProbe",
     lambda o: container(o, "delivery").pop("readinessProbe")),
    ("a probe on a port the container does not have", "is not one of its ports",
     lambda o: container(o, "profile")["startupProbe"]["httpGet"].update(port="web")),
    ("delivery without limits", "no resources.limits.memory",
     lambda o: container(o, "delivery")["resources"].pop("limits")),
    ("profile with a writable root filesystem", "readOnlyRootFilesystem",
     lambda o: container(o, "profile")["securityContext"].update(readOnlyRootFilesystem=False)),
    ("push keeping its capabilities", "must drop ALL",
     lambda o: container(o, "push")["securityContext"].pop("capabilities")),
    ("nginx allowed to escalate", "allowPrivilegeEscalation",
     lambda o: container(o, "nginx")["securityContext"].pop("allowPrivilegeEscalation")),
    ("group without runAsNonRoot", "runAsNonRoot",
     lambda o: find(o, "Deployment", "group")["spec"]["template"]["spec"]["securityContext"].pop("runAsNonRoot")),
    ("www without seccomp", "seccompProfile",
     lambda o: find(o, "Deployment", "www")["spec"]["template"]["spec"]["securityContext"].pop("seccompProfile")),
    ("a service-account token mounted", "automountServiceAccountToken",
     lambda o: find(o, "Deployment", "push")["spec"]["template"]["spec"].pop("automountServiceAccountToken")),
    ("delivery's PodDisruptionBudget gone", "no PodDisruptionBudget",
     lambda o: o.remove(find(o, "PodDisruptionBudget", "delivery"))),
    ("no topology spread", "no topologySpreadConstraints",
     lambda o: workload(o, "ws-gateway")["spec"]["template"]["spec"].pop("topologySpreadConstraints")),
    ("a renamed setting", "SAMVAD_DRAIN_SECONDS is not a setting",
     lambda o: rename_setting(o, "SAMVAD_DRAIN_SECS", "SAMVAD_DRAIN_SECONDS")),
    ("a grace period shorter than the drain", "terminationGracePeriodSeconds",
     lambda o: workload(o, "ws-gateway")["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=12)),
    ("a longer drain than the grace period allows", "terminationGracePeriodSeconds",
     lambda o: settings(o)["data"].update(SAMVAD_DRAIN_SECS="20")),
    ("the gateways open to any namespace", "lets more than nginx",
     lambda o: find(o, "NetworkPolicy", "edge-from-nginx-only")["spec"]["ingress"][0]["from"].append({"namespaceSelector": {}})),
    ("no NetworkPolicy", "no NetworkPolicy",
     lambda o: o.remove(find(o, "NetworkPolicy", "edge-from-nginx-only"))),
    ("a Service pointing at a port no pod has", "targetPort",
     lambda o: find(o, "Service", "ws-gateway")["spec"]["ports"][0].update(targetPort="websocket")),
    ("no HPA for delivery", "no HorizontalPodAutoscaler",
     lambda o: o.remove(find(o, "HorizontalPodAutoscaler", "delivery"))),
    ("an HPA scaling a Deployment/ws-gateway there is not", "scales Deployment/ws-gateway, which is not",
     lambda o: find(o, "HorizontalPodAutoscaler", "ws-gateway")["spec"]["scaleTargetRef"].update(kind="Deployment")),
    ("ws-gateway a Deployment again (new pod names, new topics, at every rollout)", "must be a StatefulSet",
     lambda o: to_deployment(o, "ws-gateway")),
    ("ws-gateway's SAMVAD_INSTANCE_ID its pod's uid (unique, but new for a replaced pod)", "SAMVAD_INSTANCE_ID must be",
     lambda o: instance_id(o, "ws-gateway")["valueFrom"]["fieldRef"].update(fieldPath="metadata.uid")),
    ("one SAMVAD_INSTANCE_ID for every delivery pod", "SAMVAD_INSTANCE_ID must be",
     lambda o: container(o, "delivery")["env"].append({"name": "SAMVAD_INSTANCE_ID", "value": "delivery"})),
    ("ws-gateway's pods started one after another", "podManagementPolicy must be Parallel",
     lambda o: find(o, "StatefulSet", "ws-gateway")["spec"].update(podManagementPolicy="OrderedReady")),
    ("ws-gateway with a volume claim", "no volumeClaimTemplates",
     lambda o: find(o, "StatefulSet", "ws-gateway")["spec"].update(volumeClaimTemplates=[
         {"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"],
                                                 "resources": {"requests": {"storage": "1Gi"}}}}])),
    ("ws-gateway's governing Service gone", "is not a Service selecting its pods",
     lambda o: o.remove(find(o, "Service", "ws-gateway-pods"))),
    ("ws-gateway governed by the load-balanced Service", "must be a headless Service",
     lambda o: find(o, "StatefulSet", "ws-gateway")["spec"].update(serviceName="ws-gateway")),
    ("a committed Secret", "never in the manifests",
     lambda o: o.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "samvad-secrets"},
                         "stringData": {"access-key-secrets": "k:x"}})),
    ("an image without a tag", "no fixed tag",
     lambda o: container(o, "group").update(image="samvad")),
    ("a field the schema does not have", "schema",
     lambda o: container(o, "delivery").update(livenesProbe={"httpGet": {"path": "/healthz", "port": "http"}})),
    ("a wrong type", "schema",
     lambda o: find(o, "Deployment", "profile")["spec"].update(replicas="two")),
]


def self_test(cluster, known):
    """Every breakage must be noticed; returns the breakages that were not."""
    missed = []
    for what, expected, breakage in BREAKAGES:
        objs = copy.deepcopy(cluster)
        breakage(objs)
        found = checked(objs, known)
        if not any(expected in p for p in found):
            missed.append("%s: expected a problem with %r, got %s" % (what, expected, found or "none"))
    return missed


def main():
    known = known_settings()
    failed = False
    rendered = {}
    for overlay in OVERLAYS:
        objs = rendered[overlay] = render(os.path.join(K8S, "overlays", overlay))
        problems = checked(objs, known)
        kinds = {}
        for o in objs:
            kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1
        summary = ", ".join("%d %s" % (n, k) for k, n in sorted(kinds.items()))
        if problems:
            failed = True
            print("FAIL %s (%s):" % (overlay, summary))
            for p in problems:
                print("  - " + p)
        else:
            print("ok   %s: %d objects valid against Kubernetes %s, policy kept (%s)" % (
                overlay, len(objs), KUBERNETES_VERSION, summary))
    missed = self_test(rendered["cluster"], known)
    if missed:
        failed = True
        print("FAIL the check let these breakages through:")
        for m in missed:
            print("  - " + m)
    else:
        print("ok   the check catches each of %d breakages of the cluster overlay" % len(BREAKAGES))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
