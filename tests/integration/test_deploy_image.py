#!/usr/bin/env python3
"""deploy/Dockerfile is correct by construction although no container engine
is available here:

- base images are debian:12 (build) and debian:12-slim (runtime);
- every binary the runtime stage copies from the build stage is a target of
  the build stage's cmake command and exists in this build
  (CRMSYNC_BUILD_DIR, same relative path as build/release/ in the image);
- every file copied from the build context exists and is not excluded by
  deploy/Dockerfile.dockerignore;
- every package either stage installs exists in Debian 12 (apt-cache show);
- the runtime packages plus debian:12-slim (the Priority: required
  packages) and their dependencies provide every shared library `ldd`
  reports for the copied binaries (mapped with dpkg -S), and every library
  a binary links directly (NEEDED) belongs to a package named in the
  Dockerfile or already in the slim image;
- numeric non-root USER, STOPSIGNAL SIGTERM, a HEALTHCHECK whose command is
  in the image, an exec-form ENTRYPOINT in the image;
- the entrypoint and healthcheck scripts work (run here against the built
  binaries and a local HTTP server).

Every check also runs once on a deliberately broken copy of the Dockerfile
and must report the breakage: the test can fail.
"""
import http.server
import os
import re
import shlex
import subprocess
import sys
import threading

SANITIZER_LIB = re.compile(r"lib(asan|ubsan|lsan|tsan)\.so")
SRC = os.environ.get("CRMSYNC_SOURCE_DIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("CRMSYNC_BUILD_DIR") or os.path.join(SRC, "build",
                                                            "dev")
DOCKERFILE = os.path.join(SRC, "deploy", "Dockerfile")
DOCKERIGNORE = os.path.join(SRC, "deploy", "Dockerfile.dockerignore")
BUILD_PREFIX = "/src/build/release/"  # WORKDIR /src + the release preset

_cache = {}


def sh(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=120,
                          **kw)


# ------------------------------------------------------------ Dockerfile
def parse(text):
    """Instructions as (KEYWORD, argument text, stage index); line
    continuations joined, comments dropped."""
    out, cur, stage = [], "", -1
    for line in text.splitlines():
        s = line.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if cur and s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        kw, _, arg = cur.partition(" ")
        kw = kw.upper()
        if kw == "FROM":
            stage += 1
        out.append((kw, arg.strip(), stage))
        cur = ""
    return out


def apt_packages(arg):
    """Package names of every `apt-get install` in a RUN argument."""
    pkgs = []
    for cmd in re.split(r"&&|;|\|\|", arg):
        words = shlex.split(cmd)
        if "apt-get" in words and "install" in words:
            rest = words[words.index("install") + 1:]
            pkgs += [w for w in rest if not w.startswith("-") and "=" not in w]
    return pkgs


def exec_form(arg):
    import json
    v = json.loads(arg)
    assert isinstance(v, list) and all(isinstance(x, str) for x in v)
    return v


# ----------------------------------------------------------- Debian side
def apt_exists(pkg):
    if ("show", pkg) not in _cache:
        r = sh(["apt-cache", "show", "--no-all-versions", pkg])
        _cache[("show", pkg)] = r.returncode == 0 and \
            re.search(r"^Package: %s$" % re.escape(pkg), r.stdout, re.M)
    return bool(_cache[("show", pkg)])


def closure(pkgs):
    """pkgs and everything they depend on (Depends/Pre-Depends)."""
    key = ("closure", tuple(sorted(pkgs)))
    if key not in _cache:
        r = sh(["apt-cache", "depends", "--recurse", "--no-recommends",
                "--no-suggests", "--no-conflicts", "--no-breaks",
                "--no-replaces", "--no-enhances"] + sorted(pkgs))
        names = set()
        for line in r.stdout.splitlines():
            if line and not line.startswith(" ") and not line.startswith("<"):
                names.add(line.split(":")[0].strip())
        _cache[key] = names
    return _cache[key]


def slim_base():
    """What debian:12-slim holds: the Priority: required packages (with
    their dependencies)."""
    if "slim" not in _cache:
        r = sh(["dpkg-query", "-W", "-f=${Package} ${Priority}\\n"])
        req = [ln.split()[0] for ln in r.stdout.splitlines()
               if ln.endswith(" required")]
        _cache["slim"] = closure(req) | set(req)
    return _cache["slim"]


def _candidates(path):
    cands = [path, os.path.realpath(path)]
    for c in list(cands):
        if c.startswith("/usr/lib/"):
            cands.append(c[4:])
        elif c.startswith("/lib/"):
            cands.append("/usr" + c)
    return cands


def lib_package(path):
    """Debian package owning a shared library path (dpkg -S; tries the path,
    its realpath and the /usr-merged variants). Cached: one dpkg -S call
    for all paths not seen yet (see prefetch_owners)."""
    if ("owner", path) not in _cache:
        prefetch_owners([path])
    return _cache[("owner", path)]


def prefetch_owners(paths):
    todo = [p for p in paths if ("owner", p) not in _cache]
    if not todo:
        return
    cands = sorted({c for p in todo for c in _candidates(p)})
    r = sh(["dpkg", "-S"] + cands)
    owner = {}
    for line in r.stdout.splitlines():
        pkgs, _, f = line.partition(": ")
        owner.setdefault(f.strip(), pkgs.split(",")[0].split(":")[0].strip())
    for p in todo:
        _cache[("owner", p)] = next(
            (owner[c] for c in _candidates(p) if c in owner), None)


def ldd_libs(binary):
    """(direct NEEDED sonames, {soname: resolved path}) of a binary."""
    if ("ldd", binary) in _cache:
        return _cache[("ldd", binary)]
    r = sh(["ldd", binary])
    assert r.returncode == 0, "ldd %s: %s" % (binary, r.stderr)
    libs = {}
    for line in r.stdout.splitlines():
        m = re.match(r"\s*(\S+) => (/\S+)", line)
        if m:
            libs[m.group(1)] = m.group(2)
        elif "not found" in line:
            libs[line.split()[0]] = None
    r = sh(["readelf", "-d", binary])
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", r.stdout)
    prefetch_owners([p for p in libs.values() if p])
    _cache[("ldd", binary)] = (needed, libs)
    return needed, libs


def ignored(relpath):
    """Is relpath excluded by deploy/Dockerfile.dockerignore? (first
    matching rule of the simple patterns it uses: names and dir/ prefixes,
    * globs, ! exceptions - evaluated in order like Docker)."""
    import fnmatch
    rules = []
    for line in open(DOCKERIGNORE):
        s = line.strip()
        if s and not s.startswith("#"):
            rules.append(s)
    excluded = False
    parts = relpath.strip("/").split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for r in rules:
        neg = r.startswith("!")
        pat = r[1:] if neg else r
        pat = pat.rstrip("/")
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatch(p.split("/")[-1], pat[3:])
                      for p in prefixes)
        else:
            hit = any(fnmatch.fnmatchcase(p, pat) for p in prefixes)
        if hit:
            excluded = not neg
    return excluded


# ----------------------------------------------------------------- checks
def check(text):
    """All problems of a Dockerfile text (empty list = good)."""
    errs = []
    ins = parse(text)
    froms = [(a, st) for k, a, st in ins if k == "FROM"]
    if len(froms) < 2:
        return ["not multi-stage (%d FROM)" % len(froms)]
    stage_names = {}
    for a, st in froms:
        w = a.split()
        image = w[0].split("@")[0]
        if len(w) >= 3 and w[1].upper() == "AS":
            stage_names[w[2]] = st
        if image not in ("debian:12", "debian:12-slim"):
            errs.append("base image %s is not debian:12 / debian:12-slim"
                        % image)
    last = froms[-1][1]
    if froms[-1][0].split()[0].split("@")[0] != "debian:12-slim":
        errs.append("runtime stage is not debian:12-slim")
    if froms[0][0].split()[0].split("@")[0] != "debian:12":
        errs.append("build stage is not debian:12")

    runtime_pkgs, build_pkgs, targets = [], [], set()
    for k, a, st in ins:
        if k == "RUN":
            (runtime_pkgs if st == last else build_pkgs).extend(
                apt_packages(a))
            m = re.search(r"--target\s+(.+?)(?:&&|$)", a)
            if m and st != last:
                targets |= set(m.group(1).split())
    if not runtime_pkgs:
        errs.append("runtime stage installs no packages")
    for p in build_pkgs + runtime_pkgs:
        if not apt_exists(p):
            errs.append("package %s does not exist in Debian 12" % p)

    copied_bins, image_files = [], set()
    for k, a, st in ins:
        if k != "COPY" or st != last:
            continue
        w = a.split()
        frm = [x for x in w if x.startswith("--from=")]
        paths = [x for x in w if not x.startswith("--")]
        srcs, dst = paths[:-1], paths[-1]
        for s in srcs:
            target = dst if not dst.endswith("/") else dst + \
                os.path.basename(s.rstrip("/"))
            image_files.add(target.rstrip("/"))
            if frm:
                if frm[0][7:] not in stage_names:
                    errs.append("COPY from unknown stage %s" % frm[0])
                if not s.startswith(BUILD_PREFIX):
                    errs.append("COPY %s: not under %s" % (s, BUILD_PREFIX))
                    continue
                rel = s[len(BUILD_PREFIX):]
                local = os.path.join(BUILD, rel)
                name = os.path.basename(rel)
                if name not in targets:
                    errs.append("binary %s is copied but not a --target of "
                                "the build stage" % name)
                if not (os.path.isfile(local) and os.access(local, os.X_OK)):
                    errs.append("binary %s not built (%s)" % (rel, local))
                else:
                    copied_bins.append(local)
            else:
                local = os.path.join(SRC, s)
                if not os.path.exists(local):
                    errs.append("COPY %s: missing in the source tree" % s)
                elif ignored(s):
                    errs.append("COPY %s: excluded by %s" % (
                        s, os.path.basename(DOCKERIGNORE)))
    if not copied_bins:
        errs.append("no binaries copied from the build stage")

    # Shared libraries: every ldd library owned by a package the image has.
    # The sanitizer runtimes are skipped: the image builds the release
    # preset, while this test also runs against the asan build.
    have = closure(runtime_pkgs) | set(runtime_pkgs) | slim_base()
    for b in copied_bins:
        needed, libs = ldd_libs(b)
        for so, path in libs.items():
            if SANITIZER_LIB.match(so):
                continue
            if path is None:
                errs.append("%s: %s not found by ldd" % (b, so))
                continue
            pkg = lib_package(path)
            if pkg is None:
                errs.append("%s: no Debian package owns %s" % (b, path))
            elif pkg not in have:
                errs.append("%s: %s (package %s) not provided by the "
                            "runtime packages nor debian:12-slim"
                            % (os.path.basename(b), so, pkg))
            elif so in needed and pkg not in runtime_pkgs and \
                    pkg not in slim_base():
                errs.append("%s links %s directly; name its package %s in "
                            "the runtime stage" % (os.path.basename(b), so,
                                                   pkg))

    users = [a for k, a, st in ins if k == "USER" and st == last]
    if not users:
        errs.append("no USER in the runtime stage (runs as root)")
    else:
        uid = users[-1].split(":")[0]
        if not uid.isdigit():
            errs.append("USER %s is not numeric (runAsNonRoot cannot "
                        "verify a name)" % users[-1])
        elif int(uid) == 0:
            errs.append("USER is root")
    stops = [a for k, a, st in ins if k == "STOPSIGNAL" and st == last]
    if not stops or stops[-1] not in ("SIGTERM", "15"):
        errs.append("STOPSIGNAL SIGTERM missing")
    hcs = [a for k, a, st in ins if k == "HEALTHCHECK" and st == last]
    if not hcs or hcs[-1].upper().startswith("NONE"):
        errs.append("HEALTHCHECK missing")
    else:
        m = re.search(r"CMD\s+(\[.*\])", hcs[-1])
        if not m:
            errs.append("HEALTHCHECK CMD is not exec form")
        elif exec_form(m.group(1))[0] not in image_files:
            errs.append("HEALTHCHECK command %s is not copied into the image"
                        % exec_form(m.group(1))[0])
    eps = [a for k, a, st in ins if k == "ENTRYPOINT" and st == last]
    if not eps:
        errs.append("ENTRYPOINT missing")
    else:
        try:
            ep = exec_form(eps[-1])
            if ep[0] not in image_files:
                errs.append("ENTRYPOINT %s is not copied into the image"
                            % ep[0])
        except ValueError:
            errs.append("ENTRYPOINT is not exec form (shell form does not "
                        "pass SIGTERM to the worker)")
    return errs


def mutants(text):
    """Broken variants and the message each must produce."""
    return [
        (text.replace("USER 10001:10001", "USER root"), "not numeric"),
        (text.replace("USER 10001:10001", "USER 0"), "USER is root"),
        (text.replace("STOPSIGNAL SIGTERM", "STOPSIGNAL SIGKILL"),
         "STOPSIGNAL"),
        (re.sub(r"\nHEALTHCHECK[^\n]*\\\n[^\n]*\n", "\n", text),
         "HEALTHCHECK missing"),
        (text.replace("FROM debian:12-slim", "FROM ubuntu:24.04"),
         "not debian:12"),
        (text.replace("libyaml-0-2 libxml2 libcurl4",
                      "libyaml-0-2 libcurl4"), "libxml2.so.2"),
        (text.replace("libyaml-0-2 libxml2", "libyaml-0-2 libxml2 "
                      "libnosuchpackage-crmsync9"),
         "libnosuchpackage-crmsync9 does not exist"),
        (text.replace("tools/crmsync-produce /usr/local/bin/crmsync-produce",
                      "tools/crmsync-nosuch /usr/local/bin/crmsync-nosuch"),
         "crmsync-nosuch"),
        (text.replace("COPY schemas/", "COPY docs/"), "excluded by"),
    ]


# ------------------------------------------------------ scripts, run here
class Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        code = Handler.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *a):
        pass


def check_scripts():
    errs = []
    ep = os.path.join(SRC, "deploy", "image", "entrypoint.sh")
    hc = os.path.join(SRC, "deploy", "image", "healthcheck.sh")
    # entrypoint: dispatch into a bin dir holding the built programs
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        for sub, name in (("workers", "crmsync-trigger"),
                          ("tools", "crmsync-produce")):
            os.symlink(os.path.join(BUILD, sub, name), os.path.join(d, name))
        env = dict(os.environ, CRMSYNC_BIN_DIR=d)
        r = sh(["sh", ep, "trigger", "--help"], env=env)
        if r.returncode != 0 or "trigger.journeys" not in r.stdout + r.stderr:
            errs.append("entrypoint trigger --help did not run the trigger "
                        "worker: rc=%d %s" % (r.returncode, r.stderr[-300:]))
        r = sh(["sh", ep, "produce", "--help"], env=env)
        if r.returncode != 0:
            errs.append("entrypoint produce --help: rc=%d" % r.returncode)
        r = sh(["sh", ep, "nosuchworker"], env=env)
        if r.returncode != 64 or "unknown program" not in r.stderr:
            errs.append("entrypoint accepted an unknown program")
        r = sh(["sh", ep], env=env)
        if r.returncode != 64:
            errs.append("entrypoint without a program did not exit 64")
    # healthcheck against a local server: 200 -> 0, 503 -> 1, closed -> 1
    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    port = srv.server_address[1]
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        env = dict(os.environ, CRMSYNC_METRICS_PORT=str(port))
        Handler.status = 200
        r = sh(["bash", hc], env=env)
        if r.returncode != 0:
            errs.append("healthcheck failed on 200: %s" % r.stderr)
        Handler.status = 503
        r = sh(["bash", hc], env=env)
        if r.returncode != 1 or "503" not in r.stderr:
            errs.append("healthcheck passed on 503 (rc=%d)" % r.returncode)
    finally:
        srv.shutdown()
        srv.server_close()
    r = sh(["bash", hc], env=dict(os.environ, CRMSYNC_METRICS_PORT=str(port)))
    if r.returncode != 1:
        errs.append("healthcheck passed on a closed port")
    return errs


def main():
    for tool in ("apt-cache", "dpkg", "ldd", "readelf"):
        if sh(["which", tool]).returncode != 0:
            print("SKIP: %s not available (not a Debian system)" % tool)
            return 0
    if not open("/etc/debian_version").read().startswith("12"):
        print("SKIP: not Debian 12; the package checks need its archive")
        return 0
    failed = 0
    text = open(DOCKERFILE).read()
    errs = check(text)
    for e in errs:
        print("FAIL", e)
    failed += bool(errs)
    print("%s Dockerfile checks" % ("FAIL" if errs else "PASS"))
    for bad, expect in mutants(text):
        assert bad != text, "mutation for %r did not apply" % expect
        got = check(bad)
        ok = any(expect in e for e in got)
        print("%s broken Dockerfile detected (%s)%s" % (
            "PASS" if ok else "FAIL", expect, "" if ok else ": %s" % got))
        failed += not ok
    errs = check_scripts()
    for e in errs:
        print("FAIL", e)
    print("%s entrypoint and healthcheck scripts" % ("FAIL" if errs
                                                     else "PASS"))
    failed += bool(errs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
