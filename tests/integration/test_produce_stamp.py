#!/usr/bin/env python3
"""crmsync-produce --stamp (the daily list-sync CronJob's producer) against
the mock Kafka cluster: the messages on the topic are decoded (Confluent
framing + Avro ListSyncRequest, schema id 4) and must carry the stamped
times, the deterministic per-list-and-day event_id (the same for a retry on
the same UTC day, a new one the next day), the list id as key; fields
given on the line are kept; a line without tenant/crm_list_id is rejected;
-f reads a file."""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stack import Stack  # noqa: E402

TOPIC = "crmsync.listsync.requests"
DAY_MS = 86400 * 1000
# 2026-11-22T01:00:00Z and three hours later (same UTC day)
T1 = 1795309200000
T2 = T1 + 3 * 3600 * 1000
L1 = "11111111-2222-4333-8444-555555555555"
L2 = "11111111-2222-4333-8444-666666666666"
P1 = "6a0e4c7e-0b1d-4c55-9f0a-000000000001"


def _varint(b, i):
    shift = n = 0
    while True:
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return (n >> 1) ^ -(n & 1), i


def _string(b, i):
    n, i = _varint(b, i)
    return b[i:i + n].decode(), i + n


def decode_request(value):
    """Confluent frame + ListSyncRequest v1 (field order of the .avsc)."""
    assert value[0] == 0, "magic byte"
    schema_id = int.from_bytes(value[1:5], "big")
    b, i, r = value[5:], 0, {"__schema_id": schema_id}
    for name, kind in (("event_id", "s"), ("tenant", "s"),
                       ("occurred_at", "l"), ("source_system", "s"),
                       ("crm_list_id", "s"), ("esp_list_id", "s"),
                       ("consent_id", "s"), ("mode", "e"),
                       ("requested_at", "l")):
        if kind == "s":
            r[name], i = _string(b, i)
        else:
            v, i = _varint(b, i)
            r[name] = ["FULL", "INCREMENTAL"][v] if kind == "e" else v
    assert i == len(b), "trailing bytes"
    return r


def produce(st, lines, *extra, stdin=True):
    import json
    data = "".join(json.dumps(x) + "\n" for x in lines)
    argv = [st.tool("produce"), "-b", st.bootstrap, "-t", TOPIC, "-s",
            os.path.join(st.source_dir, "schemas"), "-i", "4", "--stamp"]
    argv += list(extra)
    if not stdin:
        path = os.path.join(st.workdir, "lists.jsonl")
        with open(path, "w") as f:
            f.write(data)
        argv += ["-f", path]
        data = ""
    return subprocess.run(argv, input=data.encode(), capture_output=True,
                          timeout=60)


def main():
    failures = []

    def check(what, cond, detail=""):
        print("%s %s %s" % ("PASS" if cond else "FAIL", what, detail))
        if not cond:
            failures.append(what)

    with Stack() as st:
        st.start_kafka()
        h = subprocess.run([st.tool("produce"), "--help"],
                           capture_output=True, text=True)
        check("--help documents --stamp", h.returncode == 0 and
              "--stamp" in h.stdout and "YYYY-MM-DD" in h.stdout)
        lists = [{"tenant": "t1", "crm_list_id": L1, "esp_list_id": "42",
                  "consent_id": P1},
                 {"tenant": "t1", "crm_list_id": L2, "esp_list_id": "43",
                  "consent_id": P1}]
        # the CronJob's first run, a retry 3 h later, the next day's run
        r = produce(st, lists, "--now", str(T1), stdin=False)
        check("first run (-f file) exits 0", r.returncode == 0,
              r.stderr.decode()[-300:])
        r = produce(st, lists[:1], "--now", str(T2))
        check("same-day retry exits 0", r.returncode == 0)
        r = produce(st, lists[:1], "--now", str(T1 + DAY_MS))
        check("next day exits 0", r.returncode == 0)
        # explicit fields win; another prefix
        r = produce(st, [dict(lists[0], event_id="given-1",
                              occurred_at=5, requested_at=6,
                              source_system="crm", mode="INCREMENTAL")],
                    "--now", str(T1))
        check("explicit fields exit 0", r.returncode == 0)
        r = produce(st, lists[1:], "--now", str(T1), "--stamp-prefix",
                    "manual")
        check("--stamp-prefix exits 0", r.returncode == 0)
        before = int(time.time() * 1000)
        r = produce(st, lists[1:], "--stamp-prefix", "clock")
        after = int(time.time() * 1000)
        check("clock run exits 0", r.returncode == 0)
        r = produce(st, [{"tenant": "t1", "esp_list_id": "1",
                          "consent_id": P1}], "--now", str(T1))
        check("line without crm_list_id rejected (exit 2)",
              r.returncode == 2 and b"crm_list_id" in r.stderr,
              r.stderr.decode()[-200:])

        msgs = st.consume_all(TOPIC)
        got = [(m["key"], decode_request(m["value"])) for m in msgs]
        got.sort(key=lambda kr: (kr[1]["requested_at"], kr[1]["event_id"]))
        by_id = {}
        for k, r in got:
            by_id.setdefault(r["event_id"], []).append((k, r))
        check("7 messages produced", len(got) == 7, str(len(got)))
        day1 = "daily|t1|%s|2026-11-22" % L1
        check("deterministic event_id per list and day",
              [r["requested_at"] for _, r in by_id.get(day1, [])] == [T1, T2],
              str(sorted(by_id)))
        check("second list has its own id",
              len(by_id.get("daily|t1|%s|2026-11-22" % L2, [])) == 1)
        check("next day is a new event_id",
              len(by_id.get("daily|t1|%s|2026-11-23" % L1, [])) == 1)
        k, r = by_id[day1][0]
        check("stamped fields", r == {
            "__schema_id": 4, "event_id": day1, "tenant": "t1",
            "occurred_at": T1, "source_system": "crmsync-schedule",
            "crm_list_id": L1, "esp_list_id": "42", "consent_id": P1,
            "mode": "FULL", "requested_at": T1}, str(r))
        check("key = crm_list_id", k == L1, repr(k))
        g = by_id.get("given-1", [(None, {})])[0][1]
        check("fields on the line are kept",
              (g.get("occurred_at"), g.get("requested_at"),
               g.get("source_system"), g.get("mode")) ==
              (5, 6, "crm", "INCREMENTAL"), str(g))
        check("--stamp-prefix used",
              "manual|t1|%s|2026-11-22" % L2 in by_id)
        clock = [r for i, rs in by_id.items() if i.startswith("clock|")
                 for _, r in rs]
        check("default time is the clock", len(clock) == 1 and
              before <= clock[0]["occurred_at"] <= after and
              clock[0]["occurred_at"] == clock[0]["requested_at"],
              str(clock))
        today = time.strftime("%Y-%m-%d", time.gmtime(
            clock[0]["requested_at"] / 1000)) if clock else "?"
        check("clock event_id names the UTC day",
              "clock|t1|%s|%s" % (L2, today) in by_id)
    if failures:
        print("FAILED: %s" % ", ".join(failures))
        return 1
    print("PASS: crmsync-produce --stamp")
    return 0


if __name__ == "__main__":
    sys.exit(main())
