"""stack - the local crmsync stack for integration tests and the demo script.

One ``Stack`` starts and owns every process of a test run: the mock Kafka
cluster (crmsync-kafka-mock), redis-server, the Dataverse emulator and the
workers. Each process runs in its own session (process group) and is torn
down with its whole group when the ``with`` block ends, also on exceptions,
Ctrl-C (KeyboardInterrupt) and SIGTERM (turned into SystemExit while a Stack
is open), and as a last resort at interpreter exit.

Stdlib only; works with any python3 >= 3.9.

    from stack import Stack, sample_response_events, seed_for_events
    with Stack(partitions=6) as st:
        st.start_kafka(); st.start_redis(password="pw")
        events, expected = sample_response_events(200)
        st.start_dataverse(seed=seed_for_events(events))
        w = st.start_worker("response", st.worker_config("response"))
        w.wait_ready(30)
        st.produce("crmsync.response.events", events)
        st.wait_lag_zero("crmsync-response", "crmsync.response.events")

Paths: build_dir defaults to $CRMSYNC_BUILD_DIR or <repo>/build/dev,
source_dir to $CRMSYNC_SOURCE_DIR or the repository root. Everything a run
writes (logs, configs, bootstrap/port files, redis dump) goes to workdir, a
fresh temporary directory removed at the end unless keep=True or the
directory was passed in.

Values returned by consume_all(): "value" is bytes (None for a null
payload), "key" is str (bytes if it is not UTF-8; None if absent), header
values are str (bytes if not UTF-8; None for a null header).
"""

import atexit
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

DEFAULT_TOPICS = {
    "response": "crmsync.response.events",
    "bounce": "crmsync.bounce.events",
    "listsync": "crmsync.listsync.requests",
    "trigger": "crmsync.trigger.events",
}

# librdkafka properties every test consumer should use against the mock
# cluster: with the default session.timeout.ms (45 s) a rebalance after a
# member joins or leaves takes 44 s there.
TEST_CONSUMER_PROPS = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 500,
}

# Environment variables of the caller's shell that would silently change a
# worker's configuration; stripped from the workers' environment.
_KEEP_ENV = ("CRMSYNC_BUILD_DIR", "CRMSYNC_SOURCE_DIR")


def free_port():
    """Returns a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path, n=40):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return "<no output>"


def _proc_alive(pid):
    """True if pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return False


def _killpg(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class _Proc:
    """A child process in its own process group, with its output in files."""

    def __init__(self, name, argv, workdir, env=None, cwd=None):
        self.name = name
        self.argv = list(argv)
        self.stdout_path = os.path.join(workdir, name + ".out")
        self.stderr_path = os.path.join(workdir, name + ".err")
        with open(self.stdout_path, "ab") as out, \
                open(self.stderr_path, "ab") as err:
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                env=env, cwd=cwd, start_new_session=True)
        self.pid = self.popen.pid
        self.pgid = self.pid  # start_new_session: leader of its own group

    @property
    def alive(self):
        return self.popen.poll() is None

    def describe(self):
        return "%s (pid %d) stdout:\n%s\nstderr:\n%s" % (
            self.name, self.pid, _tail(self.stdout_path),
            _tail(self.stderr_path))

    def send_signal(self, sig):
        if self.alive:
            try:
                self.popen.send_signal(sig)
            except ProcessLookupError:
                pass

    def terminate(self, sig=signal.SIGTERM, timeout=10.0):
        """Signals the leader, waits, then SIGKILLs the whole group.
        Returns the leader's exit code."""
        if self.alive:
            self.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        _killpg(self.pgid, signal.SIGKILL)  # leftovers of the group
        if self.alive:
            self.popen.wait(10)
        return self.popen.returncode


class WorkerProc:
    """A running worker (crmsync-<worker>). Its stdout holds JSON log lines."""

    def __init__(self, proc, worker, config_path, metrics_port=None):
        self._proc = proc
        self.worker = worker
        self.config_path = config_path
        self._metrics_port = metrics_port

    @property
    def pid(self):
        return self._proc.pid

    @property
    def alive(self):
        return self._proc.alive

    @property
    def returncode(self):
        return self._proc.popen.poll()

    @property
    def log_path(self):
        return self._proc.stdout_path

    @property
    def metrics_port(self):
        """Port of /metrics: from a "metrics_port=<n>" log line if the
        worker printed one, else the port written into its config."""
        for line in self.logs():
            msg = str(line.get("msg", ""))
            idx = msg.find("metrics_port=")
            if idx >= 0:
                digits = ""
                for ch in msg[idx + len("metrics_port="):]:
                    if not ch.isdigit():
                        break
                    digits += ch
                if digits and int(digits) > 0:
                    return int(digits)
        return self._metrics_port

    def logs(self):
        """Every stdout line parsed as JSON; non-JSON lines appear as
        {"raw": <line>}."""
        out = []
        try:
            with open(self._proc.stdout_path, "rb") as f:
                data = f.read().decode("utf-8", "replace")
        except OSError:
            return out
        for line in data.split("\n"):  # JSON lines end in \n only
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
                out.append(obj if isinstance(obj, dict) else {"raw": line})
            except ValueError:
                out.append({"raw": line})
        return out

    def stderr(self):
        return _tail(self._proc.stderr_path, 200)

    def describe(self):
        return self._proc.describe()

    def _get(self, path, timeout=5.0):
        port = self.metrics_port
        if not port:
            raise RuntimeError("%s: no metrics port known" % self.worker)
        url = "http://127.0.0.1:%d%s" % (port, path)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")

    def metrics(self):
        """GET /metrics parsed into {series: value}; series is the text
        before the value, e.g. 'crmsync_messages_total{topic="t"}'."""
        status, text = self._get("/metrics")
        if status != 200:
            raise RuntimeError("/metrics returned %d" % status)
        return parse_prometheus(text)

    def metric(self, name, default=0.0, **labels):
        """Sum of every series of family `name` whose labels include
        `labels` (e.g. metric("crmsync_skipped_total", reason="dup"))."""
        total = None
        for series, value in self.metrics().items():
            fam, lab = split_series(series)
            if fam != name:
                continue
            if all(lab.get(k) == str(v) for k, v in labels.items()):
                total = (total or 0.0) + value
        return default if total is None else total

    def wait_ready(self, timeout=30.0):
        """Waits until GET /readyz answers 200; raises with the worker's
        log tail if it exits or the time runs out."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.alive:
                raise AssertionError("%s exited with %s before ready\n%s" % (
                    self.worker, self.returncode, self.describe()))
            try:
                status, body = self._get("/readyz", timeout=2.0)
                if status == 200:
                    return
                last = "%d %s" % (status, body.strip()[:200])
            except (OSError, RuntimeError) as e:
                last = str(e)
            time.sleep(0.2)
        raise AssertionError("%s not ready after %.0fs (%s)\n%s" % (
            self.worker, timeout, last, self.describe()))

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        """Sends sig and waits up to timeout seconds. Returns the exit code.
        If the worker does not exit in time it is SIGKILLed and
        AssertionError is raised."""
        if not self.alive:
            return self.returncode
        self._proc.send_signal(sig)
        try:
            return self._proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.terminate(signal.SIGKILL, 5)
            raise AssertionError("%s did not exit within %.0fs of signal %d"
                                 % (self.worker, timeout, int(sig)))
        finally:
            _killpg(self._proc.pgid, signal.SIGKILL)

    def kill(self):
        """SIGKILLs the worker's process group; returns the exit code."""
        _killpg(self._proc.pgid, signal.SIGKILL)
        return self._proc.popen.wait(10)


def split_series(series):
    """'name{a="x",b="y"}' -> ('name', {'a': 'x', 'b': 'y'})."""
    if "{" not in series:
        return series, {}
    name, rest = series.split("{", 1)
    rest = rest.rsplit("}", 1)[0]
    labels = {}
    i = 0
    while i < len(rest):
        eq = rest.index("=", i)
        key = rest[i:eq].strip().lstrip(",").strip()
        j = eq + 2  # skip ="
        val = []
        while j < len(rest) and rest[j] != '"':
            if rest[j] == "\\" and j + 1 < len(rest):
                j += 1
                val.append({"n": "\n"}.get(rest[j], rest[j]))
            else:
                val.append(rest[j])
            j += 1
        labels[key] = "".join(val)
        i = j + 1
        while i < len(rest) and rest[i] in ", ":
            i += 1
    return name, labels


def parse_prometheus(text):
    """Prometheus text format -> {series: float} (comments skipped)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        # the value is the first token after the series (labels may hold
        # spaces, so split after the closing brace when there is one)
        if "}" in line:
            series, rest = line.rsplit("}", 1)
            series += "}"
        else:
            series, _, rest = line.partition(" ")
        parts = rest.split()
        if not parts:
            continue
        try:
            out[series.strip()] = float(parts[0])
        except ValueError:
            continue
    return out


class _Redis:
    """Minimal RESP2 client (one connection per call sequence)."""

    def __init__(self, port, password=None, timeout=5.0):
        self.port = port
        self.password = password
        self.timeout = timeout

    def call(self, *args):
        with socket.create_connection(("127.0.0.1", self.port),
                                      timeout=self.timeout) as s:
            f = s.makefile("rb")
            if self.password:
                self._send(s, ("AUTH", self.password))
                self._read(f)
            self._send(s, args)
            return self._read(f)

    @staticmethod
    def _send(s, args):
        buf = [b"*%d\r\n" % len(args)]
        for a in args:
            if not isinstance(a, bytes):
                a = str(a).encode()
            buf.append(b"$%d\r\n%s\r\n" % (len(a), a))
        s.sendall(b"".join(buf))

    def _read(self, f):
        line = f.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError("redis error: " + rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = f.read(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self._read(f) for _ in range(n)]
        raise RuntimeError("bad RESP reply %r" % line)


def _redis_quote(s):
    """A redis.conf double-quoted string."""
    return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')


def _yaml_scalar(v):
    if v is None:
        return '""'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return json.dumps(",".join(str(x) for x in v))
    return json.dumps(str(v))  # a JSON string is a valid YAML scalar


def _yaml_key(k):
    """A mapping key: plain when it is safe (tenant-b, consent.model),
    else a JSON (= YAML double-quoted) string."""
    k = str(k)
    if k and k[0] not in "-.?:" and all(c.isalnum() or c in "_.-"
                                          for c in k):
        return k
    return json.dumps(k)


def _yaml_nested(body, indent):
    """Lines of a nested mapping (dict values inside a section, e.g. the
    per-tenant overrides `tenants: {tenant-b: {consent.model: history}}`)."""
    lines = []
    pad = " " * indent
    for k, v in body.items():
        if isinstance(v, dict):
            if not v:
                lines.append("%s%s: {}" % (pad, _yaml_key(k)))
                continue
            lines.append("%s%s:" % (pad, _yaml_key(k)))
            lines.extend(_yaml_nested(v, indent + 2))
        else:
            lines.append("%s%s: %s" % (pad, _yaml_key(k), _yaml_scalar(v)))
    return lines


def _yaml_dump(cfg):
    lines = ["# written by tests/integration/stack.py"]
    for section, body in cfg.items():
        if isinstance(body, dict):
            lines.append("%s:" % section)
            for k, v in body.items():
                if isinstance(v, dict):  # nested mapping (per-tenant keys)
                    lines.extend(_yaml_nested({k: v}, 2))
                else:
                    lines.append("  %s: %s" % (k, _yaml_scalar(v)))
        else:
            lines.append("%s: %s" % (section, _yaml_scalar(body)))
    return "\n".join(lines) + "\n"


class Stack:
    """Context manager owning the processes of one local crmsync stack."""

    def __init__(self, build_dir=None, source_dir=None, workdir=None,
                 partitions=6, keep=False, brokers=3):
        self.source_dir = os.path.abspath(
            source_dir or os.environ.get("CRMSYNC_SOURCE_DIR") or REPO_ROOT)
        self.build_dir = os.path.abspath(
            build_dir or os.environ.get("CRMSYNC_BUILD_DIR")
            or os.path.join(self.source_dir, "build", "dev"))
        self.partitions = partitions
        self.brokers = brokers
        self.keep = keep
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="crmsync-stack-")
        os.makedirs(self.workdir, exist_ok=True)
        self._procs = []  # every _Proc started, in start order
        self.all_pids = []  # every pid ever started (for leak checks)
        self._kafka = None
        self._redis = None
        self._dv = None
        self.bootstrap = None
        self.redis_port = None
        self.redis_password = None
        self.redis_url = None
        self.dv_url = None
        self.dv_ca = None
        self.dv_tenant = None
        self.dv_client_id = None
        self.dv_client_secret = None
        self._workers = 0
        self._closed = False
        self._old_sigterm = None
        atexit.register(self.close)

    # -- lifecycle -------------------------------------------------------

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            try:
                self._old_sigterm = signal.signal(signal.SIGTERM,
                                                  self._on_sigterm)
            except ValueError:
                self._old_sigterm = None
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False

    @staticmethod
    def _on_sigterm(signum, frame):
        raise SystemExit(128 + signum)

    def close(self):
        """Stops everything started (reverse order); idempotent."""
        if self._closed:
            return
        self._closed = True
        for p in reversed(self._procs):
            try:
                p.terminate(signal.SIGTERM, 10)
            except Exception as e:  # keep tearing down the rest
                sys.stderr.write("stack: stopping %s: %s\n" % (p.name, e))
        if self._old_sigterm is not None:
            try:
                signal.signal(signal.SIGTERM, self._old_sigterm)
            except ValueError:
                pass
        if self._own_workdir and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        elif self.keep:
            sys.stderr.write("stack: kept %s\n" % self.workdir)

    def _start(self, name, argv, env=None):
        if self._closed:
            raise RuntimeError("stack is closed")
        p = _Proc(name, argv, self.workdir, env=env)
        self._procs.append(p)
        self.all_pids.append(p.pid)
        return p

    def _path(self, *parts):
        return os.path.join(self.workdir, *parts)

    def tool(self, name):
        """Path of <build>/tools/crmsync-<name>; raises if not built."""
        path = os.path.join(self.build_dir, "tools", "crmsync-" + name)
        if not os.access(path, os.X_OK):
            raise FileNotFoundError(
                "%s not built (cmake --build %s --target crmsync-%s)"
                % (path, self.build_dir, name))
        return path

    def _wait_file(self, proc, path, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(path):
                with open(path) as f:
                    text = f.read().strip()
                if text:
                    return text
            if not proc.alive:
                raise RuntimeError("%s exited with %s\n%s" % (
                    proc.name, proc.popen.returncode, proc.describe()))
            time.sleep(0.05)
        raise RuntimeError("%s: %s not written after %.0fs\n%s" % (
            proc.name, path, timeout, proc.describe()))

    # -- Kafka -----------------------------------------------------------

    def start_kafka(self, extra_topics=()):
        """Starts crmsync-kafka-mock; returns the bootstrap string.
        extra_topics: "name" or "name:partitions" strings."""
        if self._kafka and self._kafka.alive:
            return self.bootstrap
        bs_file = self._path("kafka.bootstrap")
        argv = [self.tool("kafka-mock"), "--brokers", str(self.brokers),
                "--partitions", str(self.partitions),
                "--bootstrap-file", bs_file]
        for t in extra_topics:
            argv += ["--topic", t]
        self._kafka = self._start("kafka", argv)
        self.bootstrap = self._wait_file(self._kafka, bs_file, 30)
        return self.bootstrap

    def _need_kafka(self):
        if not self.bootstrap:
            raise RuntimeError("start_kafka() first")

    def produce(self, topic, events, schema_id=1, registry_url=None,
                extra_args=()):
        """Produces events (dicts, one per message) through crmsync-produce.
        Reserved keys: __key, __schema_id, __raw_hex (or __raw: bytes),
        __headers. Raises RuntimeError on a non-zero exit."""
        self._need_kafka()
        lines = []
        for ev in events:
            if "__raw" in ev:
                ev = dict(ev)
                ev["__raw_hex"] = bytes(ev.pop("__raw")).hex()
            lines.append(json.dumps(ev, separators=(",", ":")))
        data = ("\n".join(lines) + "\n").encode() if lines else b""
        argv = [self.tool("produce"), "-b", self.bootstrap, "-t", topic,
                "-s", os.path.join(self.source_dir, "schemas"),
                "-i", str(schema_id)]
        if registry_url:
            argv += ["-r", registry_url]
        argv += list(extra_args)
        r = subprocess.run(argv, input=data, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=120)
        if r.returncode != 0:
            raise RuntimeError("crmsync-produce exited %d: %s" % (
                r.returncode, r.stderr.decode("utf-8", "replace")[-2000:]))

    @staticmethod
    def _kcat_str(s):
        """kcat -J writes raw bytes unescaped: undo the surrogateescape."""
        if s is None:
            return None
        b = s.encode("utf-8", "surrogateescape")
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return b

    def consume_all(self, topic, timeout=10):
        """Every message of topic, from the beginning, via kcat -J -e.
        Returns [{topic, partition, offset, key, value, headers,
        header_list, timestamp}] sorted by (partition, offset)."""
        self._need_kafka()
        argv = ["kcat", "-C", "-b", self.bootstrap, "-t", topic, "-J", "-e",
                "-q", "-o", "beginning"]
        r = subprocess.run(argv, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError("kcat exited %d: %s" % (
                r.returncode, r.stderr.decode("utf-8", "replace")[-2000:]))
        out = []
        # Split on b"\n" only: str.splitlines() would also break lines at
        # \x1c-\x1e and \x85, which kcat leaves raw inside payloads.
        for raw in r.stdout.split(b"\n"):
            line = raw.decode("utf-8", "surrogateescape")
            if not line.strip():
                continue
            m = json.loads(line)
            hl = m.get("headers") or []
            pairs = [(hl[i], self._kcat_str(hl[i + 1]))
                     for i in range(0, len(hl) - 1, 2)]
            payload = m.get("payload")
            out.append({
                "topic": m.get("topic"),
                "partition": m["partition"],
                "offset": m["offset"],
                "timestamp": m.get("ts"),
                "key": self._kcat_str(m.get("key")),
                "value": None if payload is None
                else payload.encode("utf-8", "surrogateescape"),
                "headers": dict(pairs),
                "header_list": pairs,
            })
        out.sort(key=lambda m: (m["partition"], m["offset"]))
        return out

    def group_lag(self, group, topic):
        """crmsync-kafka-offsets output: {topic, group, partitions:[...],
        total_lag}. Raises RuntimeError on failure (e.g. unknown topic)."""
        self._need_kafka()
        r = subprocess.run([self.tool("kafka-offsets"), "-b", self.bootstrap,
                            "-g", group, "-t", topic],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=30)
        if r.returncode != 0:
            raise RuntimeError("crmsync-kafka-offsets exited %d: %s" % (
                r.returncode, r.stderr.decode("utf-8", "replace")[-1000:]))
        return json.loads(r.stdout)

    def wait_lag_zero(self, group, topic, timeout=60):
        """Waits until the group's total lag on topic is 0; returns the last
        report."""
        last = {}

        def done():
            try:
                last["r"] = self.group_lag(group, topic)
            except RuntimeError as e:
                last["r"] = str(e)
                return False
            return last["r"]["total_lag"] == 0

        try:
            self.wait_for(done, timeout, 0.5,
                          "lag of %s on %s reaches 0" % (group, topic))
        except AssertionError as e:
            raise AssertionError("%s; last: %s" % (e, last.get("r")))
        return last["r"]

    # -- Redis -----------------------------------------------------------

    def start_redis(self, password=None):
        """Starts redis-server on a free 127.0.0.1 port (no persistence
        except on stop_redis(save=True)); returns the redis:// URL."""
        if self._redis and self._redis.alive:
            return self.redis_url
        if self.redis_port is None:
            self.redis_port = free_port()
            self.redis_password = password
        conf = self._path("redis.conf")
        lines = [
            "port %d" % self.redis_port, "bind 127.0.0.1",
            'save ""', "appendonly no", "dir %s" % _redis_quote(self.workdir),
            "dbfilename redis-dump.rdb", "daemonize no",
            "logfile %s" % _redis_quote(self._path("redis.log")),
        ]
        if self.redis_password:
            # in a 0600 file, not on the command line (visible in ps)
            lines.append("requirepass %s" % _redis_quote(self.redis_password))
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        self._redis = self._start("redis", ["redis-server", conf])
        cli = self.redis_client()
        deadline = time.monotonic() + 15
        while True:
            try:
                if cli.call("PING") == "PONG":
                    break
            except (OSError, RuntimeError, ConnectionError):
                pass
            if not self._redis.alive or time.monotonic() > deadline:
                raise RuntimeError("redis did not start\n%s\n%s" % (
                    self._redis.describe(), _tail(self._path("redis.log"))))
            time.sleep(0.05)
        auth = ""
        if self.redis_password:
            auth = ":%s@" % urllib.parse.quote(self.redis_password, safe="")
        self.redis_url = "redis://%s127.0.0.1:%d/0" % (auth, self.redis_port)
        return self.redis_url

    @property
    def redis_url_nopass(self):
        """The Redis URL without the password (for config files)."""
        return "redis://127.0.0.1:%d/0" % self.redis_port

    def redis_client(self):
        return _Redis(self.redis_port, self.redis_password)

    def redis(self, *args):
        """One Redis command, e.g. st.redis("DBSIZE")."""
        return self.redis_client().call(*args)

    def stop_redis(self, save=True, kill=False):
        """Stops redis-server. save=True snapshots the data first so
        restart_redis() brings it back; kill=True SIGKILLs (data since the
        last snapshot is lost, like a crash)."""
        if not self._redis or not self._redis.alive:
            return
        if kill:
            self._redis.terminate(signal.SIGKILL, 5)
            return
        try:
            self.redis_client().call("SHUTDOWN", "SAVE" if save else "NOSAVE")
        except (OSError, ConnectionError, RuntimeError):
            pass  # the connection closes as the server exits
        try:
            self._redis.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._redis.terminate(signal.SIGTERM, 5)

    def restart_redis(self, wipe=False):
        """Starts redis again on the same port and password. wipe=True
        starts empty; otherwise the snapshot of stop_redis() is loaded.
        Stops it first if it is still running."""
        if self._redis and self._redis.alive:
            self.stop_redis(save=not wipe)
        if wipe:
            try:
                os.unlink(self._path("redis-dump.rdb"))
            except FileNotFoundError:
                pass
        if self.redis_port is None:
            raise RuntimeError("start_redis() first")
        return self.start_redis(self.redis_password)

    def flush_redis(self):
        self.redis("FLUSHALL")

    # -- Dataverse emulator ----------------------------------------------

    def emulator_path(self):
        return os.path.join(self.source_dir, "tests", "emulators",
                            "dataverse_emulator.py")

    def start_dataverse(self, client_id="crmsync-test",
                        client_secret="s3cr3t-test", tenant="tenant-test",
                        token_ttl=3599, seed=None, extra_args=(), tls=False):
        """Starts tests/emulators/dataverse_emulator.py on a free port.
        seed: a dict (written to a JSON file) or a path. Returns the base
        URL http://127.0.0.1:<port>."""
        if self._dv and self._dv.alive:
            return self.dv_url
        path = self.emulator_path()
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        port_file = self._path("dataverse.port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        argv = [sys.executable, path, "--port", "0", "--port-file",
                port_file, "--tenant", tenant, "--client",
                "%s:%s" % (client_id, client_secret), "--token-ttl",
                str(token_ttl), "--quiet"]
        if seed is not None:
            if isinstance(seed, (dict, list)):
                seed_path = self._path("dataverse-seed.json")
                with open(seed_path, "w") as f:
                    json.dump(seed, f)
                seed = seed_path
            argv += ["--seed", seed]
        argv += list(extra_args)
        scheme = "http"
        if tls:
            # A self-signed certificate: workers must reject it unless
            # told to trust it (crm.ca_file = self.dv_ca).
            self.dv_ca = self._path("dataverse-cert.pem")
            key = self._path("dataverse-key.pem")
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                 "-keyout", key, "-out", self.dv_ca, "-days", "2", "-subj",
                 "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                check=True, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            argv += ["--tls-cert", self.dv_ca, "--tls-key", key]
            scheme = "https"
        self._dv = self._start("dataverse", argv)
        port = int(self._wait_file(self._dv, port_file, 30))
        self.dv_url = "%s://127.0.0.1:%d" % (scheme, port)
        self.dv_tenant = tenant
        self.dv_client_id = client_id
        self.dv_client_secret = client_secret
        return self.dv_url

    def dv_token(self):
        """Fetches an access token from the emulator's token endpoint with
        the stack's client credentials (what a worker does)."""
        form = urllib.parse.urlencode({
            "client_id": self.dv_client_id,
            "client_secret": self.dv_client_secret,
            "scope": self.dv_url + "/.default",
            "grant_type": "client_credentials"}).encode()
        url = "%s/%s/oauth2/v2.0/token" % (self.dv_url, self.dv_tenant)
        with urllib.request.urlopen(url, data=form, timeout=10) as resp:
            return json.loads(resp.read())["access_token"]

    def start_schema_registry(self):
        """Starts tests/emulators/schema_registry.py over <source>/schemas
        on a free port; returns its base URL."""
        port_file = self._path("registry.port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        argv = [sys.executable,
                os.path.join(self.source_dir, "tests", "emulators",
                             "schema_registry.py"),
                "--port", "0", "--port-file", port_file, "--schemas-dir",
                os.path.join(self.source_dir, "schemas")]
        proc = self._start("schema-registry", argv)
        port = int(self._wait_file(proc, port_file, 30))
        return "http://127.0.0.1:%d" % port

    def dv_admin(self, method, path, body=None):
        """JSON call to the emulator (e.g. dv_admin("GET",
        "/_admin/records/campaignresponses")). Returns the parsed JSON,
        or None for an empty body; raises RuntimeError on HTTP >= 400."""
        if not self.dv_url:
            raise RuntimeError("start_dataverse() first")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.dv_url + path, data=data,
                                     method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        ctx = None
        if self.dv_url.startswith("https:"):
            import ssl
            ctx = ssl.create_default_context(cafile=self.dv_ca)
        try:
            with urllib.request.urlopen(req, timeout=30,
                                        context=ctx) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise RuntimeError("%s %s -> %d %s" % (
                method, path, e.code,
                e.read().decode("utf-8", "replace")[:500]))
        return json.loads(raw) if raw.strip() else None

    # -- Optimizely Campaign (ESP) emulator ------------------------------

    def start_esp(self, mandator="1234567890", user="api-user",
                  password="api-password", session_ttl=None, max_batch=None,
                  extra_args=()):
        """Starts tests/emulators/optimizely_emulator.py on a free port
        (tracked and stopped like the other processes). Returns the SOAP
        base URL http://127.0.0.1:<port>/soap11 (the workers' esp.base_url);
        the admin API is at self.esp_url + "/_admin" (see esp_admin())."""
        proc = getattr(self, "_esp", None)
        if proc is not None and proc.alive:
            return self.esp_base_url
        port_file = self._path("esp.port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        argv = [sys.executable,
                os.path.join(self.source_dir, "tests", "emulators",
                             "optimizely_emulator.py"),
                "--port", "0", "--port-file", port_file, "--quiet",
                "--mandator", str(mandator), "--user", user,
                "--password", password]
        if session_ttl is not None:
            argv += ["--session-ttl", str(session_ttl)]
        if max_batch is not None:
            argv += ["--max-batch", str(max_batch)]
        argv += list(extra_args)
        self._esp = self._start("esp", argv)
        port = int(self._wait_file(self._esp, port_file, 30))
        self.esp_url = "http://127.0.0.1:%d" % port
        self.esp_base_url = self.esp_url + "/soap11"
        self.esp_mandator = str(mandator)
        self.esp_user = user
        self.esp_password = password
        return self.esp_base_url

    def esp_admin(self, method, path, body=None):
        """JSON call to the ESP emulator's admin API (e.g.
        esp_admin("GET", "/_admin/lists/42")). Returns the parsed JSON, or
        None for an empty body; raises RuntimeError on HTTP >= 400."""
        if not getattr(self, "esp_url", None):
            raise RuntimeError("start_esp() first")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.esp_url + path, data=data,
                                     method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise RuntimeError("%s %s -> %d %s" % (
                method, path, e.code,
                e.read().decode("utf-8", "replace")[:500]))
        return json.loads(raw) if raw.strip() else None

    def esp_config(self):
        """Config overrides pointing a list-sync worker at the started ESP
        emulator (the password goes in the environment:
        CRMSYNC_ESP_PASSWORD, see esp_env())."""
        return {"esp.base_url": self.esp_base_url,
                "esp.mandator_id": self.esp_mandator,
                "esp.user": self.esp_user}

    def esp_env(self, password=None):
        """Environment for a list-sync worker: the ESP password."""
        return {"CRMSYNC_ESP_PASSWORD": self.esp_password
                if password is None else password}

    # -- workers ---------------------------------------------------------

    def worker_config(self, worker, overrides=None, **kw):
        """Writes <workdir>/<worker>-<n>.yaml and returns its path.
        Overrides use dotted keys split at the first dot ("response.mode",
        "kafka.statistics.interval.ms"); pass them as a dict or as
        **{"a.b": v}. A value of None removes the key. Secrets (CRM client
        secret, Redis password) are not written; start_worker() passes them
        in the environment."""
        # The mock cluster completes a rebalance only after all members
        # rejoined or session.timeout.ms - 1 s: keep it short for tests.
        cfg = {"kafka": dict(TEST_CONSUMER_PROPS), "consumer": {
            "topics": DEFAULT_TOPICS.get(worker, "crmsync.%s.events" % worker),
            "group_id": "crmsync-%s" % worker,
            "batch_max_messages": 500,
            "batch_max_ms": 50,
        }, "avro": {"schemas_dir": os.path.join(self.source_dir, "schemas")},
            "metrics": {"port": free_port()},
            "log": {"level": "info"}}
        if self.bootstrap:
            cfg["kafka"]["bootstrap.servers"] = self.bootstrap
        if self.redis_port:
            cfg["redis"] = {"url": self.redis_url_nopass}
        if self.dv_url:
            cfg["crm"] = {
                "kind": "dataverse",
                "base_url": self.dv_url,
                "token_url": "%s/%s/oauth2/v2.0/token" % (self.dv_url,
                                                           self.dv_tenant),
                "tenant_id": self.dv_tenant,
                "client_id": self.dv_client_id,
            }
        merged = dict(overrides or {})
        merged.update(kw)
        for dotted, value in merged.items():
            section, _, key = dotted.partition(".")
            if not key:
                if value is None:
                    cfg.pop(section, None)
                else:
                    cfg[section] = value
                continue
            body = cfg.setdefault(section, {})
            if value is None:
                body.pop(key, None)
            else:
                body[key] = value
        cfg = {k: v for k, v in cfg.items() if v != {}}
        self._workers += 1
        path = self._path("%s-%d.yaml" % (worker, self._workers))
        with open(path, "w") as f:
            f.write(_yaml_dump(cfg))
        return path

    @staticmethod
    def _config_metrics_port(path):
        section = None
        with open(path) as f:
            for line in f:
                if not line.startswith(" ") and line.rstrip().endswith(":"):
                    section = line.strip()[:-1]
                elif section == "metrics" and line.strip().startswith("port:"):
                    try:
                        return int(line.split(":", 1)[1].strip().strip('"'))
                    except ValueError:
                        return None
        return None

    def worker_binary(self, worker):
        path = os.path.join(self.build_dir, "workers", "crmsync-" + worker)
        if not os.access(path, os.X_OK):
            raise FileNotFoundError(
                "%s not built (cmake --build %s --target crmsync-%s)"
                % (path, self.build_dir, worker))
        return path

    def worker_env(self, env=None):
        """The environment a worker gets: ours minus CRMSYNC_* settings,
        plus the secrets, plus env."""
        e = {k: v for k, v in os.environ.items()
             if not k.startswith("CRMSYNC_") or k in _KEEP_ENV}
        if self.dv_client_secret:
            e["CRMSYNC_CRM_CLIENT_SECRET"] = self.dv_client_secret
        if self.redis_url:
            e["CRMSYNC_REDIS_URL"] = self.redis_url
        e.update(env or {})
        return e

    def start_worker(self, worker, config_path=None, env=None, args=()):
        """Runs <build>/workers/crmsync-<worker> --config <path>."""
        binary = self.worker_binary(worker)
        if config_path is None:
            config_path = self.worker_config(worker)
        n = sum(1 for p in self._procs if p.name.startswith(worker + "-"))
        proc = self._start("%s-%d" % (worker, n + 1),
                           [binary, "--config", config_path] + list(args),
                           env=self.worker_env(env))
        return WorkerProc(proc, worker, config_path,
                          self._config_metrics_port(config_path))

    # -- misc ------------------------------------------------------------

    @staticmethod
    def wait_for(predicate, timeout=60, interval=0.2, what="condition"):
        """Polls predicate() until truthy; returns its value. Raises
        AssertionError naming `what` on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            v = predicate()
            if v:
                return v
            if time.monotonic() >= deadline:
                raise AssertionError("timed out after %.0fs waiting for %s"
                                     % (timeout, what))
            time.sleep(interval)

    def pids_alive(self):
        """Pids started by this stack that still exist (not zombies)."""
        return [p for p in self.all_pids if _proc_alive(p)]


# -- sample data -----------------------------------------------------------

_USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) "
    "AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17029)",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 "
    "(via ggpht.com GoogleImageProxy)",
]
_LINKS = [("https://shop.example.com/spring-sale?utm_source=newsletter",
           "Spring sale"),
          ("https://www.example.com/events/webinar-42", "Webinar sign-up"),
          ("https://www.example.com/blog/product-update?id=7&lang=de",
           "Product update"),
          ("https://example.com/p/%C3%BCber-uns#team", "Über uns")]
_SUBJECTS = ["Re: Your spring offer", "AW: Webinar", "Automatic reply: "
             "Out of office until Monday", "Re: Quote #4711 / delivery"]
_TYPES = ["OPEN"] * 5 + ["CLICK"] * 3 + ["REPLY", "AUTORESPONDER",
                                          "UNSUBSCRIBE"]


def _guid(rng):
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def sample_response_events(n, tenant="tenant-test", campaigns=None,
                           contacts=None, dup_rate=0.1, seed=1,
                           copied_rate=0.05, no_campaign_rate=0.08,
                           recipients=40, start_ms=None):
    """Realistic crmsync.response.ResponseEvent events (schema id 1).

    Returns (events, expected): events is a list of n unique events plus
    about n*dup_rate duplicates (same event_id, same content, later in the
    stream) - each with "__key" = the recipient's entity id; expected is
    the set of event_ids that must become a campaignresponse in mode "all"
    (a CRM campaign and not from a copied list).

    campaigns: CRM campaign GUIDs (default: 3 generated); contacts:
    recipients as dicts {entity_type, entity_id, email} (default:
    `recipients` generated, mixed contact/lead/account). Use
    seed_for_events() for the matching emulator seed. Deterministic per
    seed.
    """
    rng = random.Random(seed)
    if campaigns is None:
        campaigns = [_guid(rng) for _ in range(3)]
    if contacts is None:
        contacts = []
        for i in range(recipients):
            kind = ("contact", "contact", "contact", "lead",
                    "account")[i % 5]
            contacts.append({"entity_type": kind, "entity_id": _guid(rng),
                             "email": "%s.%d@%s.example.org" % (
                                 kind, i, rng.choice(["mail", "corp",
                                                      "kunde"]))})
    mailings = []
    for i, c in enumerate(campaigns):
        mailings.append(("M-%d" % (1000 + i), "Newsletter %d" % (i + 1), c))
    mailings.append(("M-9000", "Transactional (no campaign)", None))
    if start_ms is None:
        start_ms = 1767225600000  # 2026-01-01T00:00:00Z
    events = []
    for i in range(n):
        rcpt = rng.choice(contacts)
        if rng.random() < no_campaign_rate:
            mid, mname, camp = mailings[-1]
        else:
            mid, mname, camp = rng.choice(mailings[:-1])
        rtype = rng.choice(_TYPES)
        sent = start_ms + rng.randrange(0, 3600 * 1000)
        ev = {
            "event_id": "evt-%d-%06d-%s" % (seed, i,
                                            "%08x" % rng.getrandbits(32)),
            "tenant": tenant,
            "occurred_at": sent + rng.randrange(2000, 48 * 3600 * 1000),
            "source_system": "optimizely-campaign",
            "recipient": {"entity_type": rcpt["entity_type"],
                          "entity_id": rcpt["entity_id"],
                          "email": rcpt.get("email")},
            "response_type": rtype,
            "mailing_id": mid,
            "mailing_name": mname,
            "crm_campaign_id": camp,
            "from_copied_list": rng.random() < copied_rate,
            "url": None, "link_name": None, "subject": None,
            "user_agent": None, "ip": None,
            "sent_at": sent,
        }
        if rtype in ("OPEN", "CLICK"):
            ev["user_agent"] = rng.choice(_USER_AGENTS)
            ev["ip"] = "198.51.100.%d" % rng.randrange(1, 255)
        if rtype == "CLICK":
            ev["url"], ev["link_name"] = rng.choice(_LINKS)
        if rtype in ("REPLY", "AUTORESPONDER"):
            ev["subject"] = rng.choice(_SUBJECTS)
        # the key crmsync-produce derives by default: one recipient, one
        # partition, in order
        ev["__key"] = "%s:%s" % (rcpt["entity_type"], rcpt["entity_id"])
        events.append(ev)
    expected = {e["event_id"] for e in events
                if e["crm_campaign_id"] and not e["from_copied_list"]}
    # duplicates: a copy of an earlier event placed later in the stream
    # (same key, so on the same partition after the original)
    slots = [(float(i), e) for i, e in enumerate(events)]
    for _ in range(int(round(n * dup_rate))):
        src = rng.randrange(len(events))
        slots.append((rng.uniform(src + 0.1, len(events)), dict(events[src])))
    slots.sort(key=lambda s: s[0])
    ordered = [e for _, e in slots]
    return ordered, expected


def expected_unique(events):
    """event_ids that become a response in mode "unique": the first event
    of each (recipient, mailing, response_type) among eligible ones, in
    stream order (events of one recipient share a key and partition)."""
    firsts = {}
    for e in events:
        if not e.get("crm_campaign_id") or e.get("from_copied_list"):
            continue
        r = e["recipient"]
        k = (r.get("entity_id") or r.get("email"), e["mailing_id"],
             e["response_type"])
        firsts.setdefault(k, e["event_id"])
    return set(firsts.values())


def seed_for_events(events):
    """Emulator seed where every campaign and recipient of events exists:
    {"campaigns": [{campaignid, name}], "contacts": [{contactid,
    emailaddress1, firstname, lastname}], "leads": [...], "accounts":
    [...]} keyed by entity set name."""
    seed = {"campaigns": {}, "contacts": {}, "leads": {}, "accounts": {}}
    for e in events:
        c = e.get("crm_campaign_id")
        if c and c not in seed["campaigns"]:
            seed["campaigns"][c] = {"campaignid": c,
                                    "name": e.get("mailing_name") or c}
        r = e.get("recipient") or {}
        t, rid = r.get("entity_type"), r.get("entity_id")
        if not t or not rid:
            continue
        n = len(seed[t + "s"]) + 1
        if t == "account":
            rec = {"accountid": rid, "name": "Account %d" % n,
                   "emailaddress1": r.get("email")}
        else:
            rec = {t + "id": rid, "firstname": "First%d" % n,
                   "lastname": "Last%d" % n, "emailaddress1": r.get("email")}
        seed[t + "s"].setdefault(rid, rec)
    return {k: list(v.values()) for k, v in seed.items()}


def poison_events(key="poison-1"):
    """Messages every worker must dead-letter while the rest proceeds:
    not Avro framing, an unknown schema id, and a truncated body."""
    return [
        {"__key": key, "__raw_hex": b"this is not avro".hex()},
        {"__key": key, "__raw_hex": "00000003e7" + "02" * 8},
        {"__key": key, "__raw_hex": "0000000001" + "10"},
    ]


# -- bounce / opt-out events (crmsync.bounce.BounceEvent, schema id 3) ----

def bounce_event(event_id, tenant, occurred_at, kind, email=None,
                 entity_type=None, entity_id=None, scope="CONSENT",
                 consent_id=None, topic_id=None, source=None, reason=None,
                 bounce_type=None, smtp_status=None, mailing_id=None,
                 key=None, source_system="optimizely-campaign"):
    """One BounceEvent as crmsync-produce takes it (unions as bare values,
    enums by symbol). "__key" follows the recipient rule of
    schemas/README.md (entity_type:entity_id, else the lower-cased email,
    else the event id) unless key is given."""
    ev = {
        "event_id": event_id,
        "tenant": tenant,
        "occurred_at": int(occurred_at),
        "source_system": source_system,
        "recipient": {"entity_type": entity_type, "entity_id": entity_id,
                      "email": email},
        "kind": kind,
        "scope": scope,
        "consent_id": consent_id,
        "topic_id": topic_id,
        "source": source,
        "reason": reason,
        "bounce_type": bounce_type,
        "smtp_status": smtp_status,
        "mailing_id": mailing_id,
    }
    if key is None:
        if entity_type and entity_id:
            key = "%s:%s" % (entity_type, entity_id)
        elif email:
            key = email.strip().lower()
        else:
            key = event_id
    ev["__key"] = key
    return ev


def sample_bounce_events(addresses, tenant_consents, per_key=4, seed=1,
                         start_ms=None, span_ms=10 * 86400000,
                         dup_rate=0.15, tie_rate=0.1, status_events=3):
    """A shuffled stream of opt-outs / opt-ins (and outbounces / resets)
    with duplicates, re-reports and same-time ties, keyed by address.

    addresses: email addresses (each must exist in the CRM);
    tenant_consents: {tenant: [consent ids]}. For every (tenant, address,
    consent) per_key UNSUBSCRIBE / RESUBSCRIBE events at random times
    within span_ms of start_ms, and per address status_events OUTBOUNCE /
    BOUNCE_RESET events. Events of one address stay on one partition but
    arrive out of time order. Duplicates are copies (same event id) and
    re-reports (new event id, same time and content) placed later.

    Returns (events, expected): expected = {"consent": {(tenant, address,
    consent): (t, opted_out)}, "bounce": {address: (t, bounced)}}, the
    latest change per key (same time: opt-out / bounced wins)."""
    rng = random.Random(seed)
    if start_ms is None:
        start_ms = (int(time.time()) - 14 * 86400) * 1000
    events = []
    n = 0
    consent_exp = {}
    bounce_exp = {}

    def new_id():
        nonlocal n
        n += 1
        return "bx-%d-%05d-%08x" % (seed, n, rng.getrandbits(32))

    for addr in addresses:
        for tenant, consents in tenant_consents.items():
            for consent in consents:
                times = []
                for _ in range(per_key):
                    if times and rng.random() < tie_rate:
                        t = rng.choice(times)
                    else:
                        t = start_ms + rng.randrange(0, span_ms // 1000) * 1000
                    times.append(t)
                    kind = rng.choice(("UNSUBSCRIBE", "RESUBSCRIBE"))
                    if len(times) > 1 and t == times[-2]:
                        kind = "UNSUBSCRIBE"  # make the tie a real conflict
                    events.append(bounce_event(
                        new_id(), tenant, t, kind, email=addr,
                        consent_id=consent,
                        source=rng.choice(("LINK", "PREFERENCE_PAGE",
                                           "LIST_UNSUBSCRIBE_HEADER")),
                        reason="sample"))
                    k = (tenant, addr, consent)
                    cand = (t, kind == "UNSUBSCRIBE")
                    if k not in consent_exp or cand > consent_exp[k]:
                        consent_exp[k] = cand
        tenants = sorted(tenant_consents)
        for _ in range(status_events):
            t = start_ms + rng.randrange(0, span_ms // 1000) * 1000
            kind = rng.choice(("OUTBOUNCE", "OUTBOUNCE", "BOUNCE_RESET"))
            events.append(bounce_event(new_id(), rng.choice(tenants), t, kind,
                                       email=addr, scope="CHANNEL"))
            cand = (t, kind == "OUTBOUNCE")
            if addr not in bounce_exp or cand > bounce_exp[addr]:
                bounce_exp[addr] = cand
    rng.shuffle(events)
    slots = [(float(i), e) for i, e in enumerate(events)]
    for _ in range(int(round(len(events) * dup_rate))):
        src = rng.randrange(len(events))
        copy = dict(events[src])
        if rng.random() < 0.5:
            copy["event_id"] = new_id()  # re-reported with a new id
        slots.append((rng.uniform(src + 0.1, len(events)), copy))
    slots.sort(key=lambda s: s[0])
    return [e for _, e in slots], {"consent": consent_exp,
                                   "bounce": bounce_exp}


# -- list-sync requests (crmsync.listsync.ListSyncRequest, schema id 4) ----

def list_sync_request(event_id, tenant, crm_list_id, esp_list_id, consent_id,
                      mode="FULL", requested_at=None, occurred_at=None,
                      source_system="crmsync-test", key=None):
    """One ListSyncRequest as crmsync-produce takes it (schema id 4).
    requested_at / occurred_at default to now (ms); "__key" is the CRM list
    id unless key is given."""
    now = int(time.time() * 1000)
    return {
        "event_id": event_id,
        "tenant": tenant,
        "occurred_at": int(occurred_at if occurred_at is not None else now),
        "source_system": source_system,
        "crm_list_id": crm_list_id,
        "esp_list_id": str(esp_list_id),
        "consent_id": consent_id,
        "mode": mode,
        "requested_at": int(requested_at if requested_at is not None
                            else now),
        "__key": key if key is not None else crm_list_id,
    }


def run_scenarios(tests, argv, on_fail=None, teardown=None):
    """Runs the scenario functions named in argv (all when empty), printing
    PASS/FAIL with their times and the traceback of each failure; on_fail()
    runs after a failure (e.g. to print a worker's log), teardown() once at
    the end. Returns the exit code: 0 all passed, 1 a failure, 2 an
    unknown scenario name."""
    unknown = set(argv) - {t.__name__ for t in tests}
    if unknown:
        print("unknown scenario(s): %s" % ", ".join(sorted(unknown)))
        return 2
    chosen = [t for t in tests if not argv or t.__name__ in argv]
    passed = failed = 0
    try:
        for t in chosen:
            t0 = time.monotonic()
            try:
                t()
                passed += 1
                print("PASS %s (%.1fs)" % (t.__name__, time.monotonic() - t0),
                      flush=True)
            except Exception:
                failed += 1
                print("FAIL %s (%.1fs)" % (t.__name__, time.monotonic() - t0),
                      flush=True)
                traceback.print_exc()
                if on_fail is not None:
                    on_fail()
    finally:
        if teardown is not None:
            teardown()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0
