#!/usr/bin/env bash
# Offline checks of the Kubernetes manifests in deploy/:
#   1. render deploy/base and every deploy/overlays/* with `kubectl kustomize`;
#   2. validate every rendered document (and base/secret.example.yaml) against
#      the JSON schemas with shared/k8s-schemas/validate (strict schemas);
#   3. project rules the schemas cannot express (KEDA min/max replicas,
#      probes, security context, metrics port, grace period above the
#      worker's shutdown timeout, and per worker Deployment: a PDB, a metrics
#      Service, a ScaledObject and a ServiceMonitor/PodMonitor covering it);
#   4. when promtool exists: `promtool check rules` on the PrometheusRule
#      groups and `promtool test rules` with deploy/tests/alerts_test.yaml.
# Needs kubectl (kustomize built in), python3 with PyYAML, and the validator:
# $K8S_SCHEMAS_VALIDATE or <repo>/../shared/k8s-schemas/validate.
# Exit status: 0 all good, 1 a check failed, 2 a required tool is missing.
set -euo pipefail

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$DEPLOY")"
VALIDATE="${K8S_SCHEMAS_VALIDATE:-$REPO/../shared/k8s-schemas/validate}"
# Partitions of each worker's topic; KEDA maxReplicaCount must not exceed
# them (idle consumers).
RESPONSE_PARTITIONS="${CRMSYNC_RESPONSE_PARTITIONS:-12}"
BOUNCE_PARTITIONS="${CRMSYNC_BOUNCE_PARTITIONS:-6}"
LISTSYNC_PARTITIONS="${CRMSYNC_LISTSYNC_PARTITIONS:-6}"
TRIGGER_PARTITIONS="${CRMSYNC_TRIGGER_PARTITIONS:-12}"

command -v kubectl >/dev/null 2>&1 || { echo "validate.sh: kubectl not found" >&2; exit 2; }
[ -x "$VALIDATE" ] || { echo "validate.sh: validator not found at $VALIDATE (set K8S_SCHEMAS_VALIDATE)" >&2; exit 2; }
python3 -c 'import yaml' 2>/dev/null || { echo "validate.sh: python3-yaml missing" >&2; exit 2; }

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
fail=0

targets=("$DEPLOY/base")
for o in "$DEPLOY"/overlays/*/; do
    [ -f "$o/kustomization.yaml" ] && targets+=("${o%/}")
done

for t in "${targets[@]}"; do
    name="${t#"$DEPLOY"/}"
    out="$TMP/$(echo "$name" | tr '/' '_').yaml"
    echo "== render $name"
    if ! kubectl kustomize "$t" >"$out"; then
        echo "FAIL render $name"
        fail=1
        continue
    fi
    echo "== schema-validate $name"
    "$VALIDATE" "$out" || fail=1
    echo "== project rules $name"
    python3 - "$out" "$RESPONSE_PARTITIONS" "$BOUNCE_PARTITIONS" "$LISTSYNC_PARTITIONS" "$TRIGGER_PARTITIONS" <<'PY' || fail=1
import sys, yaml
path = sys.argv[1]
partitions = {"crmsync.response.events": int(sys.argv[2]),
              "crmsync.bounce.events": int(sys.argv[3]),
              "crmsync.listsync.requests": int(sys.argv[4]),
              "crmsync.trigger.events": int(sys.argv[5])}
docs = [d for d in yaml.safe_load_all(open(path)) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
errors = []
def err(msg):
    errors.append(msg)

def selects(selector, labels):
    """matchLabels-only selector (all this project uses) matches labels."""
    ml = (selector or {}).get("matchLabels", {})
    return bool(ml) and all(labels.get(k) == v for k, v in ml.items())

def worker_config(pod):
    """The worker's config.yaml from the ConfigMap mounted on /etc/crmsync."""
    for v in pod.get("volumes", []):
        cm = by_kind.get("ConfigMap", {}).get(v.get("configMap", {}).get("name"))
        if cm and "config.yaml" in cm.get("data", {}):
            return yaml.safe_load(cm["data"]["config.yaml"]) or {}
    return None

for name, dep in by_kind.get("Deployment", {}).items():
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"].get("labels", {})
    # The worker must have drained and committed before the kubelet's
    # SIGKILL: grace period > consumer.shutdown_timeout_ms (default 8 s)
    # plus 5 s for closing the consumer and producer.
    cfg = worker_config(pod)
    if cfg is not None:
        shut_ms = int((cfg.get("consumer") or {}).get("shutdown_timeout_ms", 8000))
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace < shut_ms / 1000 + 5:
            err(f"Deployment/{name}: terminationGracePeriodSeconds {grace} not above "
                f"consumer.shutdown_timeout_ms {shut_ms} ms + 5 s")
    if labels.get("app.kubernetes.io/component") == "worker":
        if not any(selects(p["spec"].get("selector"), labels)
                   for p in by_kind.get("PodDisruptionBudget", {}).values()):
            err(f"Deployment/{name}: no PodDisruptionBudget selects its pods")
        svcs = [s for s in by_kind.get("Service", {}).values()
                if s["spec"].get("selector") and
                all(labels.get(k) == v for k, v in s["spec"]["selector"].items()) and
                any(p.get("name") == "metrics" for p in s["spec"].get("ports", []))]
        if not svcs:
            err(f"Deployment/{name}: no Service with a metrics port selects its pods")
        # Monitoring CRs and ScaledObjects only where the render has the
        # kinds at all (overlays/local deletes them: no KEDA/Operator there).
        monitors = list(by_kind.get("ServiceMonitor", {}).values()) + \
            list(by_kind.get("PodMonitor", {}).values())
        if monitors and not any(
                (m["kind"] == "PodMonitor" and selects(m["spec"].get("selector"), labels)) or
                (m["kind"] == "ServiceMonitor" and
                 any(selects(m["spec"].get("selector"), s["metadata"].get("labels", {}))
                     for s in svcs))
                for m in monitors):
            err(f"Deployment/{name}: no ServiceMonitor/PodMonitor scrapes it")
        if by_kind.get("ScaledObject") and not any(
                so["spec"]["scaleTargetRef"]["name"] == name
                for so in by_kind["ScaledObject"].values()):
            err(f"Deployment/{name}: no ScaledObject scales it")
    if pod.get("terminationGracePeriodSeconds", 30) < 15:
        err(f"Deployment/{name}: terminationGracePeriodSeconds < 15 "
            "(worker needs up to 10 s to drain)")
    if not pod.get("securityContext", {}).get("runAsNonRoot"):
        err(f"Deployment/{name}: pod securityContext.runAsNonRoot not set")
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        if not sc.get("readOnlyRootFilesystem"):
            err(f"Deployment/{name}/{c['name']}: readOnlyRootFilesystem not true")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            err(f"Deployment/{name}/{c['name']}: capabilities.drop lacks ALL")
        if sc.get("allowPrivilegeEscalation", True):
            err(f"Deployment/{name}/{c['name']}: allowPrivilegeEscalation not false")
        if not any(p.get("name") == "metrics" for p in c.get("ports", [])):
            err(f"Deployment/{name}/{c['name']}: no container port named metrics")
        if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
            err(f"Deployment/{name}/{c['name']}: livenessProbe is not GET /healthz")
        if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
            err(f"Deployment/{name}/{c['name']}: readinessProbe is not GET /readyz")
        if "requests" not in c.get("resources", {}) or "limits" not in c.get("resources", {}):
            err(f"Deployment/{name}/{c['name']}: resources requests/limits missing")
    for v in pod.get("volumes", []):
        cm = v.get("configMap", {}).get("name")
        if cm and cm not in by_kind.get("ConfigMap", {}):
            err(f"Deployment/{name}: volume {v['name']} references missing ConfigMap {cm}")

# CronJobs (the list-sync schedule): same hardening, a concurrency policy,
# and every ConfigMap they reference rendered.
for name, cj in by_kind.get("CronJob", {}).items():
    spec = cj["spec"]
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    if spec.get("concurrencyPolicy") != "Forbid":
        err(f"CronJob/{name}: concurrencyPolicy must be Forbid")
    if not pod.get("securityContext", {}).get("runAsNonRoot"):
        err(f"CronJob/{name}: pod securityContext.runAsNonRoot not set")
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        if not sc.get("readOnlyRootFilesystem") or \
                sc.get("allowPrivilegeEscalation", True) or \
                "ALL" not in sc.get("capabilities", {}).get("drop", []):
            err(f"CronJob/{name}/{c['name']}: container not hardened")
        if "requests" not in c.get("resources", {}) or "limits" not in c.get("resources", {}):
            err(f"CronJob/{name}/{c['name']}: resources requests/limits missing")
        for e in c.get("env", []):
            cm = e.get("valueFrom", {}).get("configMapKeyRef", {}).get("name")
            if cm and cm not in by_kind.get("ConfigMap", {}):
                err(f"CronJob/{name}: env {e['name']} references missing ConfigMap {cm}")
    for v in pod.get("volumes", []):
        cm = v.get("configMap", {}).get("name")
        if cm and cm not in by_kind.get("ConfigMap", {}):
            err(f"CronJob/{name}: volume {v['name']} references missing ConfigMap {cm}")

for name, so in by_kind.get("ScaledObject", {}).items():
    spec = so["spec"]
    target = spec["scaleTargetRef"]["name"]
    if target not in by_kind.get("Deployment", {}):
        err(f"ScaledObject/{name}: target Deployment {target} not rendered")
    if spec.get("minReplicaCount", 0) < 1:
        err(f"ScaledObject/{name}: minReplicaCount must be >= 1 (a group that never "
            "committed can be scaled to zero and never come back)")
    for trig in spec["triggers"]:
        if trig["type"] != "kafka":
            continue
        md = trig["metadata"]
        for key in ("bootstrapServers", "consumerGroup", "topic", "lagThreshold"):
            if not md.get(key):
                err(f"ScaledObject/{name}: kafka trigger lacks {key}")
        if md.get("topic") in partitions and \
                spec.get("maxReplicaCount", 100) > partitions[md["topic"]]:
            err(f"ScaledObject/{name}: maxReplicaCount {spec.get('maxReplicaCount', 100)}"
                f" exceeds the {partitions[md['topic']]} partitions of {md['topic']}")
        ref = trig.get("authenticationRef", {}).get("name")
        if ref and ref not in by_kind.get("TriggerAuthentication", {}):
            err(f"ScaledObject/{name}: TriggerAuthentication {ref} not rendered")

for e in errors:
    print("FAIL", e)
print(f"project rules: {len(errors)} problem(s) in {len(docs)} documents")
sys.exit(1 if errors else 0)
PY
done

echo "== schema-validate base/secret.example.yaml"
"$VALIDATE" "$DEPLOY/base/secret.example.yaml" || fail=1

if command -v promtool >/dev/null 2>&1; then
    echo "== promtool check rules"
    rules="$TMP/crmsync-rules.yaml"
    python3 - "$TMP/base.yaml" "$rules" <<'PY' || fail=1
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
groups = [g for d in docs if d["kind"] == "PrometheusRule" for g in d["spec"]["groups"]]
if not groups:
    sys.exit("no PrometheusRule groups rendered")
yaml.safe_dump({"groups": groups}, open(sys.argv[2], "w"), sort_keys=False)
PY
    if [ -s "$rules" ]; then
        promtool check rules "$rules" || fail=1
        if [ -f "$DEPLOY/tests/alerts_test.yaml" ]; then
            echo "== promtool test rules"
            cp "$DEPLOY/tests/alerts_test.yaml" "$TMP/"
            (cd "$TMP" && promtool test rules alerts_test.yaml) || fail=1
        fi
    fi
else
    echo "== promtool not installed: PrometheusRule expressions not checked (SKIP)"
fi

if [ "$fail" -ne 0 ]; then
    echo "validate.sh: FAILED"
    exit 1
fi
echo "validate.sh: all checks passed"
