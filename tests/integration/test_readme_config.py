"""The README's configuration reference is generated from the config tables
(scripts/gen-config-doc.sh): fail when it has drifted from the binaries."""
import os
import subprocess
import sys

SRC = os.environ.get("CRMSYNC_SOURCE_DIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("CRMSYNC_BUILD_DIR") or os.path.join(SRC, "build",
                                                            "dev")


def main():
    readme = open(os.path.join(SRC, "README.md"), encoding="utf-8").read()
    begin = readme.index("<!-- config-reference:begin -->")
    end = readme.index("<!-- config-reference:end -->")
    section = readme[begin:end]
    failed = 0
    for w in sorted(os.listdir(os.path.join(BUILD, "workers"))):
        path = os.path.join(BUILD, "workers", w)
        if not (w.startswith("crmsync-") and os.access(path, os.X_OK)
                and os.path.isfile(path)):
            continue
        md = subprocess.run([path, "--help-markdown"], check=True,
                            stdout=subprocess.PIPE).stdout.decode()
        rows = [ln for ln in md.splitlines() if ln.startswith("| `")]
        missing = [r for r in rows if r not in section]
        if not rows or missing:
            failed += 1
            print("FAIL %s: %d config rows missing from README (run "
                  "scripts/gen-config-doc.sh %s), e.g. %s"
                  % (w, len(missing), path, missing[:1]))
        else:
            print("PASS %s: %d config rows documented" % (w, len(rows)))
    print("%d passed, %d failed" % (0 if failed else 1, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
