#!/usr/bin/env python3
"""Runs deploy/validate.sh: renders the kustomize base and overlays, validates
every document against the strict Kubernetes/CRD JSON schemas, checks the
project rules (KEDA replica bounds, probes, security context) and, when
promtool exists, checks and unit-tests the alert rules.

Then runs validate.sh on copies of deploy/ with one defect each (a worker
without PDB, ScaledObject or monitored metrics Service, a grace period
below the shutdown timeout, more replicas than partitions, a firing alert
test that no longer matches) and requires each to fail naming the defect.

Skips (exit 0, printing SKIP) only when kubectl or the schema validator is
missing; any validation failure fails the test.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

SRC = os.environ.get(
    "CRMSYNC_SOURCE_DIR",
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SCRIPT = os.path.join(SRC, "deploy", "validate.sh")
VALIDATOR = os.environ.get(
    "K8S_SCHEMAS_VALIDATE",
    os.path.join(SRC, "..", "shared", "k8s-schemas", "validate"))


def main() -> int:
    if shutil.which("kubectl") is None:
        print("SKIP: kubectl not installed; deploy manifests not validated")
        return 0
    if not os.access(VALIDATOR, os.X_OK):
        print(f"SKIP: schema validator not found at {VALIDATOR} "
              "(set K8S_SCHEMAS_VALIDATE)")
        return 0
    env = dict(os.environ, K8S_SCHEMAS_VALIDATE=os.path.abspath(VALIDATOR))
    proc = subprocess.run(["bash", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    combined = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"deploy/validate.sh exited {proc.returncode}"
    # The script must really have validated documents of both targets.
    assert "validate: 0 ok" not in combined, "no document validated"
    for worker in ("response", "bounce", "listsync", "trigger"):
        for kind in ("Deployment", "ScaledObject", "PodDisruptionBudget",
                     "Service"):
            assert "%s/crmsync-%s" % (kind, worker) in combined, \
                "%s/crmsync-%s not validated" % (kind, worker)
    assert "TriggerAuthentication/crmsync-kafka" in combined
    # the daily list-sync schedule and its lists
    assert "CronJob/crmsync-listsync-schedule" in combined, \
        "CronJob/crmsync-listsync-schedule not validated"
    assert "Secret/crmsync-esp" in combined, "Secret/crmsync-esp not validated"
    assert "ServiceMonitor/crmsync-workers" in combined
    assert "PrometheusRule/crmsync-alerts" in combined
    assert "ConfigMap/crmsync-grafana-dashboard" in combined
    assert "validate.sh: all checks passed" in combined
    print("PASS: deploy manifests valid")
    mutants(env)
    return 0


def edit(root, rel, old, new, count=1):
    path = os.path.join(root, rel)
    text = open(path).read()
    assert old in text, "%s: %r not found" % (rel, old)
    open(path, "w").write(text.replace(old, new, count))


def drop_line(root, rel, pattern):
    path = os.path.join(root, rel)
    lines = open(path).read().split("\n")
    kept = [ln for ln in lines if not re.fullmatch(pattern, ln)]
    assert len(kept) == len(lines) - 1, "%s: %r" % (rel, pattern)
    open(path, "w").write("\n".join(kept))


MUTANTS = [
    ("trigger without PDB",
     lambda r: drop_line(r, "base/trigger/kustomization.yaml", r"  - pdb.yaml"),
     "Deployment/crmsync-trigger: no PodDisruptionBudget"),
    ("trigger without ScaledObject",
     lambda r: drop_line(r, "base/trigger/kustomization.yaml",
                         r"  - scaledobject.yaml"),
     "Deployment/crmsync-trigger: no ScaledObject"),
    ("bounce Service not selected by the ServiceMonitor",
     lambda r: edit(r, "base/bounce/service.yaml",
                    "    app.kubernetes.io/component: worker",
                    "    app.kubernetes.io/component: metrics"),
     "Deployment/crmsync-bounce: no ServiceMonitor/PodMonitor"),
    ("bounce grace period below its shutdown timeout",
     lambda r: edit(r, "base/bounce/config.yaml",
                    "shutdown_timeout_ms: 8000", "shutdown_timeout_ms: 30000"),
     "Deployment/crmsync-bounce: terminationGracePeriodSeconds 30 not above"),
    ("trigger: more replicas than partitions",
     lambda r: edit(r, "base/trigger/scaledobject.yaml",
                    "maxReplicaCount: 12", "maxReplicaCount: 13"),
     "exceeds the 12 partitions of crmsync.trigger.events"),
    ("stalled-consumer alert no longer fires as tested",
     lambda r: edit(r, "base/monitoring/prometheusrule.yaml",
                    "changes(crmsync_consumer_committed_offset[10m]) == 0",
                    "changes(crmsync_consumer_committed_offset[10m]) > 0"),
     "FAILED"),
]


def mutants(env):
    """Each defect must make validate.sh fail with its message."""
    src_deploy = os.path.join(SRC, "deploy")
    bad = 0
    for what, apply, expect in MUTANTS:
        with tempfile.TemporaryDirectory() as tmp:
            root = os.path.join(tmp, "deploy")
            shutil.copytree(src_deploy, root)
            apply(root)
            proc = subprocess.run(["bash", os.path.join(root, "validate.sh")],
                                  env=env, capture_output=True, text=True,
                                  timeout=300)
            out = proc.stdout + proc.stderr
            ok = proc.returncode == 1 and expect in out
            print("%s defect detected: %s" % ("PASS" if ok else "FAIL", what))
            if not ok:
                print(out[-2000:])
            bad += not ok
    assert bad == 0, "%d defect(s) not detected by validate.sh" % bad


if __name__ == "__main__":
    sys.exit(main())
