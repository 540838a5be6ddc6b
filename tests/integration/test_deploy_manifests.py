#!/usr/bin/env python3
"""Runs deploy/validate.sh: renders the kustomize base and overlays, validates
every document against the strict Kubernetes/CRD JSON schemas, checks the
project rules (KEDA replica bounds, probes, security context) and, when
promtool exists, checks and unit-tests the alert rules.

Skips (exit 0, printing SKIP) only when kubectl or the schema validator is
missing; any validation failure fails the test.
"""
import os
import shutil
import subprocess
import sys

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
    for worker in ("response", "bounce", "listsync"):
        for kind in ("Deployment", "ScaledObject", "PodDisruptionBudget",
                     "Service"):
            assert "%s/crmsync-%s" % (kind, worker) in combined, \
                "%s/crmsync-%s not validated" % (kind, worker)
    assert "TriggerAuthentication/crmsync-kafka" in combined
    # the daily list-sync schedule and its lists
    assert "CronJob/crmsync-listsync-schedule" in combined, \
        "CronJob/crmsync-listsync-schedule not validated"
    assert "Secret/crmsync-esp" in combined, "Secret/crmsync-esp not validated"
    assert "validate.sh: all checks passed" in combined
    print("PASS: deploy manifests valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
