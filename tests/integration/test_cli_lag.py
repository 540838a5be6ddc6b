"""Integration tests of `crmsync lag` against the local stack (mock Kafka
cluster, redis-server, the Dataverse emulator, the built crmsync-response
worker and the built crmsync binary). Each scenario asserts effects on real
committed offsets: a drained group is OK with lag 0 and current offsets at
the log end; a stopped worker's group shows exactly the lag produced since,
is judged stalled and the command exits 3; usage errors exit 2; --watch
streams reports until SIGINT; -X/-F values never appear in the output.

Run: python3 tests/integration/test_cli_lag.py [scenario ...]
"""
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stack import (Stack, run_scenarios,  # noqa: E402
                   sample_response_events, seed_for_events)

TOPIC = "crmsync.response.events"
GROUP = "crmsync-response"
SECRET = "Lag-Cli-S3cret-Value"
EXIT_NOT_OK = 3


def crmsync(st):
    path = os.path.join(st.build_dir, "tools", "crmsync")
    if not os.access(path, os.X_OK):
        raise FileNotFoundError("%s not built (--target crmsync)" % path)
    return path


def run_lag(st, *args, timeout=60):
    r = subprocess.run([crmsync(st), "lag"] + list(args),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    return (r.returncode, r.stdout.decode("utf-8", "replace"),
            r.stderr.decode("utf-8", "replace"))


def group_of(report, name):
    for g in report["groups"]:
        if g["group"] == name:
            return g
    raise AssertionError("group %s not in report: %s" % (name, report))


def test_drained_then_stalled():
    """(1) a drained group: OK, lag 0, current == log end == produced;
    (2) worker stopped, more produced: lag == produced, stalled, exit 3."""
    with Stack(partitions=3) as st:
        st.start_kafka()
        st.start_redis(password="redis-pw")
        events, _ = sample_response_events(60, seed=7)
        st.start_dataverse(seed=seed_for_events(events))
        w = st.start_worker("response", st.worker_config(
            "response", {"consumer.batch_max_ms": 50}))
        w.wait_ready(30)
        st.produce(TOPIC, events)
        st.wait_lag_zero(GROUP, TOPIC, timeout=60)

        # Discovery: the mock cannot list groups, so the worker groups
        # with commits are found; -X values are passed but never printed.
        rc, out, err = run_lag(st, "-b", st.bootstrap, "--json",
                               "--interval", "0.3",
                               "-X", "sasl.password=" + SECRET)
        assert rc == 0, "exit %d\n%s\n%s" % (rc, out, err)
        assert SECRET not in out + err, "secret printed"
        report = json.loads(out)
        assert report["verdict"] == "OK", report
        names = [g["group"] for g in report["groups"]]
        assert names == [GROUP], names  # only the group that committed
        g = group_of(report, GROUP)
        assert g["verdict"] == "OK" and g["total_lag"] == 0, g
        parts = g["partitions"]
        assert sorted(p["partition"] for p in parts) == [0, 1, 2], parts
        assert all(p["topic"] == TOPIC for p in parts), parts
        assert sum(p["current_offset"] or 0 for p in parts) == len(events)
        for p in parts:
            assert p["lag"] == 0 and p["verdict"] == "OK", p
            assert (p["current_offset"] or 0) == p["log_end_offset"], p
            assert p["rule"] == "zero_lag" and p["samples"] == 3, p

        # The table form for an explicit group and topic.
        rc, out, err = run_lag(st, "-b", st.bootstrap, "-g", GROUP,
                               "-t", TOPIC, "--interval", "0.2")
        assert rc == 0, "exit %d\n%s\n%s" % (rc, out, err)
        lines = out.splitlines()
        assert lines[0].split()[:6] == [
            "GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET",
            "LOG-END-OFFSET", "LAG"], lines[0]
        assert len(lines) == 1 + 3 + 1, out  # header, 3 partitions, total
        total = lines[-1].split()
        assert total[:4] == [GROUP, "TOTAL", "0", "OK"], lines[-1]

        # Stop the worker, produce more: nobody consumes them.
        assert w.stop() == 0
        more, _ = sample_response_events(25, seed=8)
        st.produce(TOPIC, more)
        rc, out, err = run_lag(st, "-b", st.bootstrap, "--json",
                               "-g", GROUP, "--interval", "0.3")
        assert rc == EXIT_NOT_OK, "exit %d\n%s\n%s" % (rc, out, err)
        g = group_of(json.loads(out), GROUP)
        assert g["total_lag"] == len(more), (g["total_lag"], len(more))
        assert g["verdict"] == "stalled", g
        lagging = [p for p in g["partitions"] if p["lag"] > 0]
        assert lagging, g
        for p in lagging:
            assert p["verdict"] == "stalled", p
            assert p["rule"] == "offset_unchanged", p
        assert sum(p["log_end_offset"] for p in g["partitions"]) == (
            len(events) + len(more))

        # Same through a -F properties file (no -b), table form: exit 3.
        props = os.path.join(st.workdir, "lag.properties")
        with open(props, "w") as f:
            f.write("# kcat-style properties\n\nbootstrap.servers=%s\n"
                    "sasl.password = %s\n" % (st.bootstrap, SECRET))
        rc, out, err = run_lag(st, "-F", props, "-g", GROUP, "-t", TOPIC,
                               "--interval", "0.2", "--samples", "2")
        assert rc == EXIT_NOT_OK, "exit %d\n%s\n%s" % (rc, out, err)
        assert SECRET not in out + err, "secret printed"
        total = out.splitlines()[-1].split()
        assert total[:4] == [GROUP, "TOTAL", str(len(more)), "stalled"], out

        # --watch: one JSON report per interval until SIGINT, then exit 0.
        p = subprocess.Popen([crmsync(st), "lag", "-b", st.bootstrap,
                              "-g", GROUP, "--watch", "--json",
                              "--interval", "0.2", "--window", "4"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            reports = []
            deadline = time.monotonic() + 20
            while len(reports) < 5 and time.monotonic() < deadline:
                line = p.stdout.readline()
                if not line:
                    break
                reports.append(json.loads(line))
            assert len(reports) == 5, reports
            samples = [group_of(r, GROUP)["partitions"][0]["samples"]
                       for r in reports]
            assert samples == [1, 2, 3, 4, 4], samples  # sliding window
            assert group_of(reports[-1], GROUP)["verdict"] == "stalled"
            p.send_signal(signal.SIGINT)
            assert p.wait(10) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
            p.stderr.close()


def test_usage_errors():
    """Usage and configuration errors exit 2 without touching Kafka;
    --help documents rules and exit codes; -X values are not echoed."""
    with Stack() as st:
        bs = "127.0.0.1:9"  # never contacted
        cases = [
            [],                                     # no bootstrap
            ["-b", bs, "--samples", "1"],           # window too small
            ["-b", bs, "--interval", "zero"],
            ["-b", bs, "--window", "1", "--watch"],
            ["-b", bs, "--no-such-option"],
            ["-b", bs, "extra-argument"],
            ["-b", bs, "-X", "novalue"],
            ["-b", bs, "-X", "no.such.property=" + SECRET],
            ["-b", bs, "-X", "socket.timeout.ms=" + SECRET],
            ["-b", bs, "-F", os.path.join(st.workdir, "missing.conf")],
        ]
        for args in cases:
            t0 = time.monotonic()
            rc, out, err = run_lag(st, *args, timeout=20)
            assert rc == 2, "%s: exit %d\n%s" % (args, rc, err)
            assert SECRET not in out + err, "%s: value echoed" % args
            assert err.strip(), "%s: no message" % args
            assert time.monotonic() - t0 < 5, "%s: slow" % args
        rc, out, _ = run_lag(st, "--help")
        assert rc == 0
        for word in ("zero_lag", "offset_rewound", "no_commit_in_window",
                     "offset_unchanged", "lag_not_decreasing", "--watch",
                     "--json", "-F FILE", "exit codes", "3 some group"):
            assert word in out, "--help lacks %r" % word


TESTS = [v for k, v in sorted(globals().items()) if k.startswith("test_")]


def main(argv):
    return run_scenarios(TESTS, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
