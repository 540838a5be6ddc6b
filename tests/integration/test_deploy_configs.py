#!/usr/bin/env python3
"""Every worker config shipped in deploy/ (the ConfigMaps' config.yaml)
passes that worker's own --check-config, with the secrets supplied through
the environment exactly as the Deployment does: manifests and config tables
cannot drift apart unnoticed. A bad key must be rejected naming the key."""
import glob
import os
import subprocess
import sys
import tempfile

SRC = os.environ.get("CRMSYNC_SOURCE_DIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("CRMSYNC_BUILD_DIR") or os.path.join(SRC, "build",
                                                            "dev")
SECRET_ENV = {"CRMSYNC_CRM_CLIENT_SECRET": "placeholder-secret",
              "CRMSYNC_REDIS_URL": "redis://:placeholder@redis:6379/0",
              # list-sync: Secret crmsync-esp (deploy/base/listsync)
              "CRMSYNC_ESP_PASSWORD": "placeholder-esp-password"}


def check(worker, path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CRMSYNC_")}
    env.update(SECRET_ENV)
    return subprocess.run(
        [os.path.join(BUILD, "workers", "crmsync-" + worker),
         "--check-config", "-c", path], env=env, capture_output=True,
        text=True, timeout=30)


def main():
    passed = failed = 0
    configs = sorted(glob.glob(os.path.join(SRC, "deploy", "base", "*",
                                            "config.yaml")))
    configs += sorted(glob.glob(os.path.join(SRC, "deploy", "overlays", "*",
                                             "*-config.yaml")))
    for path in configs:
        rel = os.path.relpath(path, SRC)
        name = os.path.basename(os.path.dirname(path))
        if name not in os.listdir(os.path.join(SRC, "workers")):
            name = os.path.basename(path).split("-config")[0]
        r = check(name, path)
        ok = r.returncode == 0 and "placeholder" not in r.stdout
        print("%s %s (%s)" % ("PASS" if ok else "FAIL", rel, name))
        if not ok:
            print(r.stdout[-1500:], r.stderr[-1500:])
        passed, failed = passed + ok, failed + (not ok)
    # The same check must fail, naming the key, on a typo: in each worker's
    # base config, checked by that worker.
    for path in configs:
        name = os.path.basename(os.path.dirname(path))
        if name not in os.listdir(os.path.join(SRC, "workers")):
            continue
        with tempfile.NamedTemporaryFile("w", suffix=".yaml",
                                         delete=False) as f:
            f.write(open(path).read().replace("batch_size:",
                                              "batch_sizee:", 1))
        r = check(name, f.name)
        os.unlink(f.name)
        ok = r.returncode != 0 and "batch_sizee" in r.stderr
        print("%s typo rejected naming the key (%s)"
              % ("PASS" if ok else "FAIL", name))
        passed, failed = passed + ok, failed + (not ok)
    if not configs:
        failed += 1
        print("FAIL no worker configs found under deploy/")
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
