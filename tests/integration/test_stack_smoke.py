#!/usr/bin/env python3
"""Smoke test of the local stack itself (tests/integration/stack.py and the
crmsync-kafka-mock / crmsync-kafka-offsets tools).

Proves against librdkafka 2.0.2's mock cluster: 3 brokers with the topics
pre-created; 1000 Avro messages produced by crmsync-produce come back via
kcat with keys and headers intact; raw bytes (poison messages) round-trip
exactly; a kcat balanced consumer with cooperative-sticky assignment joins
the group, commits, and crmsync-kafka-offsets sees the lag drop to 0;
redis-server with a password restarts on the same port with and without its
data; the Dataverse emulator (if present) starts and serves its seed; and
teardown leaves no process behind.

Prints "N passed, M failed" and exits non-zero on any failure.
"""
import collections
import json
import os
import socket
import subprocess
import sys
import time
import traceback
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stack import (Stack, TEST_CONSUMER_PROPS, sample_response_events,  # noqa
                   seed_for_events)

TOPIC = "crmsync.response.events"
N = 1000


class Ctx:
    pass


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def kcat_props():
    out = []
    for k, v in TEST_CONSUMER_PROPS.items():
        out += ["-X", "%s=%s" % (k, v)]
    return out


def t_kafka(st, c):
    bs = st.start_kafka()
    c.bootstrap = bs
    check(len(bs.split(",")) == 3, "3 brokers expected: %s" % bs)
    # every default topic and its DLQ exist with the right partition count
    for topic in ("crmsync.response.events", "crmsync.bounce.events.dlq",
                  "crmsync.listsync.requests", "crmsync.listsync.membership",
                  "crmsync.trigger.events.dlq"):
        rep = st.group_lag("smoke-nobody", topic)
        check(len(rep["partitions"]) == 6,
              "%s has %d partitions" % (topic, len(rep["partitions"])))
        check(rep["total_lag"] == 0, "%s not empty" % topic)
    # an unknown topic is an error, and asking does not create it
    for _ in range(2):
        try:
            st.group_lag("smoke-nobody", "no.such.topic")
            raise AssertionError("unknown topic accepted")
        except RuntimeError as e:
            check("does not exist" in str(e), str(e))


def t_redis(st, c):
    url = st.start_redis(password="smoke p@ss")
    check(url.startswith("redis://:smoke%20p%40ss@127.0.0.1:"), url)
    check(st.redis("PING") == "PONG", "PING")
    try:
        with socket.create_connection(("127.0.0.1", st.redis_port), 2) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = s.recv(100)
        check(reply.startswith(b"-NOAUTH"), "no password accepted: %r" % reply)
    except OSError as e:
        raise AssertionError("redis not reachable: %s" % e)
    with open(os.path.join(st.workdir, "redis.conf")) as f:
        check(oct(os.fstat(f.fileno()).st_mode & 0o777) == "0o600",
              "redis.conf readable by others")


def t_dataverse(st, c):
    if not os.path.exists(st.emulator_path()):
        print("NOTE: %s not present yet; dataverse part skipped"
              % st.emulator_path())
        return
    events, _ = sample_response_events(50, seed=7)
    seed = seed_for_events(events)
    url = st.start_dataverse(seed=seed)
    check(url.startswith("http://127.0.0.1:"), url)
    got = st.dv_admin("GET", "/_admin/records/campaigns")
    recs = got.get("value", got) if isinstance(got, dict) else got
    ids = {r.get("campaignid") for r in recs}
    want = {r["campaignid"] for r in seed["campaigns"]}
    check(want <= ids, "seeded campaigns missing: %s" % (want - ids))
    for es, key in (("contacts", "contactid"), ("leads", "leadid"),
                    ("accounts", "accountid")):
        got = {r.get(key) for r in st.dv_admin("GET", "/_admin/records/" + es)}
        check({r[key] for r in seed[es]} <= got, "seeded %s missing" % es)
    # the worker's OAuth path: token_url + client credentials -> Web API
    token = st.dv_token()
    req = urllib.request.Request(url + "/api/data/v9.2/WhoAmI",
                                 headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(req, timeout=10) as resp:
        check("UserId" in json.loads(resp.read()), "WhoAmI failed")


def t_produce_consume(st, c):
    st.tool("produce")  # fails clearly when crmsync-produce is not built
    events, _ = sample_response_events(N, dup_rate=0.0, seed=3)
    for i, e in enumerate(events):
        e["__headers"] = {"trace-id": "t-%d" % i, "smoke": "ü,=;x"}
    st.produce(TOPIC, events)
    msgs = st.consume_all(TOPIC, timeout=30)
    check(len(msgs) == N, "consumed %d of %d" % (len(msgs), N))
    want_keys = collections.Counter(e["__key"] for e in events)
    got_keys = collections.Counter(m["key"] for m in msgs)
    check(want_keys == got_keys, "keys differ")
    by_trace = {m["headers"].get("trace-id"): m for m in msgs}
    check(len(by_trace) == N, "trace-id headers lost")
    for i, e in enumerate(events):
        m = by_trace["t-%d" % i]
        check(m["key"] == e["__key"], "key of t-%d" % i)
        check(m["headers"].get("smoke") == "ü,=;x", "header value mangled")
        check(m["value"][:5] == b"\x00\x00\x00\x00\x01",
              "not Confluent framing with schema id 1: %r" % m["value"][:5])
        check(e["event_id"].encode() in m["value"], "event_id not in value")
    # one recipient -> one partition
    part_of = {}
    for m in msgs:
        check(part_of.setdefault(m["key"], m["partition"]) == m["partition"],
              "key %s on two partitions" % m["key"])
    check(len({m["partition"] for m in msgs}) > 1, "all on one partition")
    c.produced = N


def t_raw_bytes(st, c):
    raw = bytes(range(256))
    st.produce(TOPIC, [{"__key": "raw-1", "__raw_hex": raw.hex()}])
    msgs = [m for m in st.consume_all(TOPIC, 30) if m["key"] == "raw-1"]
    check(len(msgs) == 1, "raw message count %d" % len(msgs))
    check(msgs[0]["value"] == raw, "raw bytes changed in the round trip")
    c.produced += 1


def t_group_lag(st, c):
    group = "smoke-group"
    before = st.group_lag(group, TOPIC)
    check(before["total_lag"] == c.produced,
          "lag %d before consuming, want %d" % (before["total_lag"],
                                                c.produced))
    check(all(p["committed"] == -1 for p in before["partitions"]),
          "committed offsets before any commit")
    r = subprocess.run(
        ["kcat", "-b", st.bootstrap, "-G", group, "-o", "beginning", "-e",
         "-X", "partition.assignment.strategy=cooperative-sticky",
         "-f", "%p %o\n"] + kcat_props() + [TOPIC],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    err = r.stderr.decode("utf-8", "replace")
    check(r.returncode == 0, "kcat -G exited %d: %s" % (r.returncode, err))
    check("COOPERATIVE" in err, "no cooperative rebalance seen: %s" % err)
    consumed = len(r.stdout.splitlines())
    check(consumed == c.produced, "group consumed %d" % consumed)
    after = st.wait_lag_zero(group, TOPIC, timeout=30)
    for p in after["partitions"]:
        check(p["committed"] == p["high"] or
              (p["committed"] == -1 and p["high"] == p["low"]),
              "partition %d committed %d high %d" % (
                  p["partition"], p["committed"], p["high"]))
    # a second member of the same group starts where the first committed
    r = subprocess.run(
        ["kcat", "-b", st.bootstrap, "-G", group, "-e", "-f", "%o\n", "-X",
         "partition.assignment.strategy=cooperative-sticky"] + kcat_props()
        + [TOPIC],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    check(r.stdout.strip() == b"", "re-consumed after commit: %r"
          % r.stdout[:100])


def t_cooperative_two_members(st, c):
    """A second member joining takes half the partitions incrementally:
    the first member revokes only those (cooperative-sticky), with the
    short session timeout stack.TEST_CONSUMER_PROPS recommends."""
    group = "smoke-coop"
    props = []
    for k, v in dict(TEST_CONSUMER_PROPS,
                     **{"partition.assignment.strategy":
                        "cooperative-sticky"}).items():
        props += ["-X", "%s=%s" % (k, v)]
    members = []
    try:
        for name in ("a", "b"):
            err_path = os.path.join(st.workdir, "coop-%s.err" % name)
            err = open(err_path, "wb")
            p = subprocess.Popen(
                ["kcat", "-b", st.bootstrap, "-G", group, "-o", "beginning",
                 "-f", "%p %o\n"] + props + [TOPIC],
                stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True)
            err.close()
            members.append((p, err_path))
            st.all_pids.append(p.pid)

            def assigned(path=err_path):
                with open(path, "rb") as f:
                    return b"incremental assignment of" in f.read()
            st.wait_for(assigned, 30, 0.2, "member %s assigned" % name)
        text = {}

        def rebalanced():
            for (p, path), name in zip(members, "ab"):
                with open(path, "rb") as f:
                    text[name] = f.read().decode("utf-8", "replace")
            return ("incremental revoke of 3" in text["a"]
                    and "incremental assignment of 3" in text["b"])
        st.wait_for(rebalanced, 30, 0.2, "a gives 3 partitions to b")
        check("incremental revoke of 6" not in text["a"],
              "eager-style full revoke seen")
    finally:
        for p, _ in members:
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    # the group committed everything it consumed
    st.wait_lag_zero(group, TOPIC, timeout=30)


def t_redis_restart(st, c):
    port = st.redis_port
    st.redis("SET", "smoke:k", "v1")
    st.stop_redis()
    try:
        st.redis("PING")
        raise AssertionError("redis still answers after stop")
    except (OSError, ConnectionError):
        pass
    st.restart_redis()
    check(st.redis_port == port, "port changed")
    check(st.redis("GET", "smoke:k") == b"v1", "data lost over restart")
    st.restart_redis(wipe=True)
    check(st.redis_port == port, "port changed on wipe")
    check(st.redis("GET", "smoke:k") is None, "wipe kept data")
    st.redis("SET", "smoke:k2", "x")
    st.flush_redis()
    check(st.redis("DBSIZE") == 0, "flush_redis left keys")
    st.stop_redis(kill=True)
    st.restart_redis()
    check(st.redis("PING") == "PONG", "no PING after crash restart")


def t_worker_config(st, c):
    path = st.worker_config("response", {"response.mode": "unique"},
                            **{"consumer.batch_max_messages": 50,
                               "kafka.statistics.interval.ms": 1000})
    with open(path) as f:
        text = f.read()
    check('bootstrap.servers: "%s"' % st.bootstrap in text, text)
    check("statistics.interval.ms: 1000" in text, text)
    check("batch_max_messages: 50" in text, text)
    check('mode: "unique"' in text, text)
    check('topics: "crmsync.response.events"' in text, text)
    check("smoke p@ss" not in text and "smoke%20p%40ss" not in text,
          "redis password written to the config file")
    env = st.worker_env()
    check(env["CRMSYNC_REDIS_URL"] == st.redis_url, "redis url not in env")


def main():
    results = []
    c = Ctx()
    c.produced = 0
    st = Stack(partitions=6)
    pids = []
    kafka_rc = None
    steps = [t_kafka, t_redis, t_dataverse, t_produce_consume, t_raw_bytes,
             t_group_lag, t_cooperative_two_members, t_redis_restart,
             t_worker_config]
    try:
        with st:
            for fn in steps:
                name = fn.__name__[2:]
                t0 = time.monotonic()
                try:
                    fn(st, c)
                    results.append((name, None))
                    print("ok   %s (%.1fs)" % (name, time.monotonic() - t0))
                except Exception as e:  # report and continue
                    results.append((name, e))
                    print("FAIL %s: %s" % (name, e))
                    traceback.print_exc()
            pids = list(st.all_pids)
    finally:
        if st._kafka is not None:
            kafka_rc = st._kafka.popen.returncode
    # teardown
    try:
        check(pids, "no processes were started")
        left = st.pids_alive()
        check(not left, "processes left behind: %s" % left)
        if kafka_rc is not None:
            check(kafka_rc == 0, "crmsync-kafka-mock exit code %s" % kafka_rc)
        check(not os.path.exists(st.workdir), "workdir not removed")
        results.append(("teardown", None))
        print("ok   teardown")
    except AssertionError as e:
        results.append(("teardown", e))
        print("FAIL teardown: %s" % e)
    failed = sum(1 for _, e in results if e is not None)
    print("%d passed, %d failed" % (len(results) - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
