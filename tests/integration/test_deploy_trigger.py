#!/usr/bin/env python3
"""The trigger worker's Kubernetes manifests (deploy/base/trigger):

- the journeys shipped in its ConfigMap (journeys.yaml) load in the real
  worker: crmsync-trigger validates journeys first at start, so with a
  valid file it gets past that step (and stops later at the missing
  schemas/Redis of this test); a copy with a typo must stop it naming
  file:line:column and the key;
- terminationGracePeriodSeconds covers the stop time its config implies:
  the consumer's shutdown_timeout_ms, and the firing round in flight
  (CRM $batch + e-mail look-up, each up to crm.timeout_ms, one
  esp.timeout_ms, the producer flush of 10 s and a Redis round trip);
  trigger.lease_ms re-fires a killed round's timers, so it must exceed
  that round too.
"""
import os
import subprocess
import sys
import tempfile

import yaml

SRC = os.environ.get("CRMSYNC_SOURCE_DIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("CRMSYNC_BUILD_DIR") or os.path.join(SRC, "build",
                                                            "dev")
BASE = os.path.join(SRC, "deploy", "base", "trigger")
WORKER = os.path.join(BUILD, "workers", "crmsync-trigger")
PRODUCER_FLUSH_S = 10  # FLUSH_MS in workers/trigger/actions.c


def start(journeys):
    """Runs the worker with the shipped config and the given journeys file
    until it stops (it cannot get further than opening its runtime here)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "CRMSYNC_CRM_CLIENT_SECRET": "placeholder",
           "CRMSYNC_ESP_PASSWORD": "placeholder",
           # nothing listens on port 1: the runtime fails fast
           "CRMSYNC_REDIS_URL": "redis://127.0.0.1:1/0",
           "CRMSYNC_SCHEMAS_DIR": os.path.join(SRC, "schemas"),
           "CRMSYNC_METRICS_PORT": "0",
           "CRMSYNC_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
           "CRMSYNC_TRIGGER_JOURNEYS": journeys}
    return subprocess.run([WORKER, "-c", os.path.join(BASE, "config.yaml")],
                           env=env, capture_output=True, text=True,
                           timeout=60)


def main():
    failed = 0
    if not os.access(WORKER, os.X_OK):
        print("FAIL %s not built" % WORKER)
        return 1
    journeys = os.path.join(BASE, "journeys.yaml")
    r = start(journeys)
    out = r.stdout + r.stderr
    ok = "startup failed" not in out or "journeys.yaml:" not in out
    ok = ok and "startup failed: " in out  # it did stop later, not hang
    print("%s shipped journeys load in crmsync-trigger" % ("PASS" if ok
                                                          else "FAIL"))
    if not ok:
        print(out[-1500:])
    failed += not ok

    text = open(journeys).read()
    assert "every: 24h" in text, "journeys.yaml changed: adapt the typo"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text.replace("every: 24h", "evry: 24h", 1))
    r = start(f.name)
    os.unlink(f.name)
    out = r.stdout + r.stderr
    ok = r.returncode != 0 and os.path.basename(f.name) + ":" in out and \
        "unknown key 'evry'" in out
    print("%s a journeys typo stops the worker naming file:line and key"
          % ("PASS" if ok else "FAIL"))
    if not ok:
        print(out[-1500:])
    failed += not ok

    cfg = yaml.safe_load(open(os.path.join(BASE, "config.yaml")))
    dep = yaml.safe_load(open(os.path.join(BASE, "deployment.yaml")))
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    crm_s = cfg["crm"]["timeout_ms"] / 1000
    esp_s = cfg["esp"]["timeout_ms"] / 1000
    redis_s = cfg["redis"]["timeout_ms"] / 1000
    round_s = 2 * crm_s + esp_s + PRODUCER_FLUSH_S + redis_s
    stop_s = max(cfg["consumer"]["shutdown_timeout_ms"] / 1000, round_s)
    ok = grace > stop_s
    print("%s terminationGracePeriodSeconds %d > stop time %.0f s"
          % ("PASS" if ok else "FAIL", grace, stop_s))
    failed += not ok
    ok = cfg["trigger"]["lease_ms"] / 1000 > round_s
    print("%s trigger.lease_ms %d > one firing round %.0f s"
          % ("PASS" if ok else "FAIL", cfg["trigger"]["lease_ms"], round_s))
    failed += not ok
    ok = cfg["trigger"]["journeys"] == "/etc/crmsync/journeys.yaml" and any(
        m["mountPath"] == "/etc/crmsync"
        for c in dep["spec"]["template"]["spec"]["containers"]
        for m in c["volumeMounts"])
    print("%s trigger.journeys points into the mounted ConfigMap"
          % ("PASS" if ok else "FAIL"))
    failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
