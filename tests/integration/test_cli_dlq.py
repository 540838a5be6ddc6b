"""Integration test of `crmsync dlq` (list / show / replay) against the real
local stack: mock Kafka cluster, redis-server, the Dataverse emulator and
the response worker.

One scenario, one stack (kept short): poison messages and two events the
CRM refuses (their campaign does not exist: 404) land in the worker's DLQ,
plus a DLQ message without dead-letter headers. Then:
  * `list` shows each with its class and original coordinates (checked
    against the original topic), `--class` / `--worker` / `-p` filter;
  * `show` decodes an Avro dead letter to JSON and hex-dumps a poison one;
  * `replay` without --execute produces nothing (original topic and CRM
    unchanged), and refuses the header-less message;
  * the missing campaign is created through the emulator's admin API and
    `replay --class CRM_REJECTED --execute` puts exactly the two rejected
    messages back (original key/value/headers, crmsync.replay.of, no
    crmsync.error.*); the fixed one becomes exactly one campaign response,
    the other is dead-lettered again;
  * replaying the fixed one again (offset filter) does not create a second
    campaign response (the worker is idempotent);
  * reading never commits offsets for any group, -X values never show.

Run: python3 tests/integration/test_cli_dlq.py
"""
import os
import re
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stack import (Stack, poison_events, run_scenarios,  # noqa: E402
                   sample_response_events, seed_for_events)

TOPIC = "crmsync.response.events"
DLQ = TOPIC + ".dlq"
GROUP = "crmsync-response"

LIST_RE = re.compile(
    r'^(\d+)/(\d+) (\S+) worker=(\S+) class=(\S+) original=(\S+) '
    r'message=("(?:[^"\\]|\\.)*"|unknown) key=(".*"|null)$')


def crmsync(st):
    path = os.path.join(st.build_dir, "tools", "crmsync")
    if not os.access(path, os.X_OK):
        raise FileNotFoundError("%s not built" % path)
    return path


def run_dlq(st, *args, expect_rc=0, kafka=None):
    """Runs `crmsync dlq <args>` with -b (or the given kafka options);
    returns (stdout, stderr) after checking the exit code."""
    argv = [crmsync(st), "dlq"] + list(args)
    argv += ["-b", st.bootstrap] if kafka is None else list(kafka)
    argv += ["--timeout", "20"]
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=60, cwd=st.source_dir)
    out = r.stdout.decode("utf-8", "replace")
    err = r.stderr.decode("utf-8", "replace")
    if expect_rc is not None:
        assert r.returncode == expect_rc, "%s -> rc %d\nstdout:\n%s\n" \
            "stderr:\n%s" % (" ".join(args), r.returncode, out, err)
    return out, err


def parse_list(out):
    """`dlq list` lines -> [dict]; plus the summary lines."""
    rows, summary = [], []
    for line in out.splitlines():
        m = LIST_RE.match(line)
        if not m:
            summary.append(line)
            continue
        orig = m.group(6)
        rows.append({"partition": int(m.group(1)), "offset": int(m.group(2)),
                     "time": m.group(3), "worker": m.group(4),
                     "class": m.group(5), "original": orig,
                     "message": m.group(7), "key": m.group(8)})
    return rows, summary


def responses(st):
    return st.dv_admin("GET", "/_admin/records/campaignresponses")


def responses_for(st, event_id):
    return [r for r in responses(st)
            if "(event %s from " % event_id in r.get("description", "")]


def by_coord(msgs):
    return {(m["partition"], m["offset"]): m for m in msgs}


def committed_anything(st, group, topic):
    rep = st.group_lag(group, topic)
    return [p for p in rep["partitions"] if p["committed"] >= 0]


def test_dlq_list_show_replay():
    with Stack() as st:
        st.start_kafka()
        st.start_redis(password="redis-pw")
        events, expected = sample_response_events(40, seed=33, dup_rate=0.0)
        st.start_dataverse(seed=seed_for_events(events))
        camp_ok = next(e["crm_campaign_id"] for e in events
                       if e["crm_campaign_id"])
        ghost_fix = str(uuid.uuid4())    # created later: replay succeeds
        ghost_never = str(uuid.uuid4())  # never created: fails again
        bad_fix = dict(events[0], event_id="dlq-fixable",
                       crm_campaign_id=ghost_fix, from_copied_list=False,
                       __headers={"trace-id": "t-fix"})
        bad_never = dict(events[1], event_id="dlq-hopeless",
                         crm_campaign_id=ghost_never, from_copied_list=False)
        assert camp_ok
        cfg = st.worker_config("response", {
            "consumer.batch_max_messages": 200, "consumer.batch_max_ms": 50,
            "consumer.retry_backoff_max_ms": 2000, "idem.lease_ms": 3000})
        w = st.start_worker("response", cfg)
        w.wait_ready(30)
        st.produce(TOPIC, events[:20] + [bad_fix] + poison_events("poison-1")
                   + [bad_never] + events[20:])
        st.wait_lag_zero(GROUP, TOPIC, timeout=60)
        n_resp = len(responses(st))
        assert n_resp == len(expected), (n_resp, len(expected))
        dead = st.consume_all(DLQ)
        assert len(dead) == 5, [d["headers"] for d in dead]
        # one DLQ message a worker did not write: no crmsync.error.* headers
        subprocess.run(["kcat", "-P", "-b", st.bootstrap, "-t", DLQ,
                            "-p", "0", "-K", "|"], input=b"stray|garbage\n",
                           timeout=30, check=True)
        originals = by_coord(st.consume_all(TOPIC))
        n_topic = len(originals)

        # -- list: every message, its class and original coordinates ------
        out, _ = run_dlq(st, "list", "-t", DLQ)
        rows, summary = parse_list(out)
        assert len(rows) == 6, out
        dead = by_coord(st.consume_all(DLQ))
        classes = {}
        for row in rows:
            d = dead[(row["partition"], row["offset"])]
            h = d["headers"]
            if "crmsync.error.class" not in h:
                assert row["class"] == "unknown" and \
                    row["original"] == "unknown" and \
                    row["worker"] == "unknown", row
                assert row["key"] == '"stray"', row
                continue
            classes[row["class"]] = classes.get(row["class"], 0) + 1
            assert row["class"] == h["crmsync.error.class"], (row, h)
            assert row["worker"] == "response", row
            assert row["time"] == h["crmsync.error.timestamp"], row
            t, p, o = row["original"].rsplit("/", 2)
            assert t == TOPIC, row
            orig = originals[(int(p), int(o))]  # really there ...
            assert orig["value"] == d["value"], row  # ... and the same
            assert row["key"] == '"%s"' % d["key"], row
        assert classes == {"BAD_FRAME": 1, "DECODE": 1, "UNKNOWN_SCHEMA": 1,
                           "CRM_REJECTED": 2}, classes
        assert "matched 6 of 6 read in %s" % DLQ in out, summary
        assert "by class: " in out and "CRM_REJECTED=2" in out and \
            "unknown=1" in out, summary

        # --class filter (case-insensitive, repeatable), --worker, -p
        out, _ = run_dlq(st, "list", "-t", DLQ, "--class", "crm_rejected")
        rej, _ = parse_list(out)
        assert len(rej) == 2 and all(r["class"] == "CRM_REJECTED"
                                     for r in rej), out
        assert "matched 2 of 6" in out and "CRM_REJECTED=2" in out, out
        out, _ = run_dlq(st, "list", "-t", DLQ, "--class", "BAD_FRAME",
                         "--class", "DECODE")
        assert sorted(r["class"] for r in parse_list(out)[0]) == [
            "BAD_FRAME", "DECODE"], out
        out, _ = run_dlq(st, "list", "-t", DLQ, "--worker", "bounce")
        assert parse_list(out)[0] == [] and "matched 0 of 6" in out, out
        out, _ = run_dlq(st, "list", "-t", DLQ, "--since",
                         "2000-01-01T00:00:00+02:00", "--until", "2999-01-01")
        assert len(parse_list(out)[0]) == 5, out  # stray has no timestamp
        out, _ = run_dlq(st, "list", "-t", DLQ, "--until", "2001-01-01")
        assert parse_list(out)[0] == [], out
        p0 = [r for r in rows if r["partition"] == 0]
        out, _ = run_dlq(st, "list", "-t", DLQ, "-p", "0")
        assert len(parse_list(out)[0]) == len(p0), out
        out, _ = run_dlq(st, "list", "-t", DLQ, "--limit", "2")
        assert len(parse_list(out)[0]) == 2 and "--limit" in out, out

        # -- show: Avro decoded to JSON; poison as a hex dump ---------------
        fix_row = next(r for r in rej if r["key"] == '"%s"' % bad_fix["__key"]
                       and (dead[(r["partition"], r["offset"])]["headers"]
                            .get("trace-id") == "t-fix"))
        never_row = next(r for r in rej if r is not fix_row)
        out, _ = run_dlq(st, "show", "-t", DLQ, "-p",
                         str(fix_row["partition"]), "-o",
                         str(fix_row["offset"]))
        assert "decoded as crmsync.response.ResponseEvent" in out, out
        assert '"event_id": "dlq-fixable"' in out, out
        assert ghost_fix in out and "trace-id: \"t-fix\"" in out, out
        assert "class:     CRM_REJECTED" in out, out
        frame = next(r for r in rows if r["class"] == "BAD_FRAME")
        out, _ = run_dlq(st, "show", "-t", DLQ, "-p", str(frame["partition"]),
                         "-o", str(frame["offset"]))
        assert "not decodable (BAD_FRAME" in out, out
        assert "|this is not avro|" in out, out
        _, err = run_dlq(st, "show", "-t", DLQ, "-p", "0", "-o", "999999",
                         expect_rc=2)
        assert "outside" in err, err

        # -- replay dry run: prints, produces nothing ----------------------
        out, err = run_dlq(st, "replay", "-t", DLQ)
        assert "dry run: 5 message(s) would be replayed, 1 refused" in out, out
        assert "nothing was produced" in out, out
        assert re.search(r"^refuse 0/\d+: crmsync.error.topic/partition/"
                         r"offset missing", out, re.M), out
        o = fix_row["original"].rsplit("/", 2)
        want = "would replay %d/%d -> %s/%s (original offset %s)" % (
            fix_row["partition"], fix_row["offset"], TOPIC, o[1], o[2])
        assert want in out, out
        time.sleep(1)
        assert len(st.consume_all(TOPIC)) == n_topic, "dry run produced"
        assert len(responses(st)) == n_resp, "dry run changed the CRM"
        # the stray message is refused even with --execute
        out, err = run_dlq(st, "replay", "-t", DLQ, "--class", "unknown",
                           "--execute")
        assert "replayed 0 message(s)" in out and "refuse" in out, out
        assert "refused" in err, err
        assert len(st.consume_all(TOPIC)) == n_topic

        # -- fix the cause, replay the CRM rejections ----------------------
        st.dv_admin("POST", "/_admin/records/campaigns",
                    {"campaignid": ghost_fix, "name": "Created after the fact"})
        out, _ = run_dlq(st, "replay", "-t", DLQ, "--class", "CRM_REJECTED",
                         "--execute")
        assert "replayed 2 message(s): 2 delivered, 0 failed, 0 refused" in \
            out, out
        after = st.consume_all(TOPIC)
        new = [m for m in after if (m["partition"], m["offset"])
               not in originals]
        assert len(new) == 2, [m["headers"] for m in new]
        want_of = {"%s/%d/%d" % (DLQ, r["partition"], r["offset"]): r
                   for r in (fix_row, never_row)}
        for m in new:
            of = m["headers"].get("crmsync.replay.of")
            assert of in want_of, m["headers"]
            row = want_of.pop(of)
            d = dead[(row["partition"], row["offset"])]
            orig = originals[tuple(int(x) for x in
                                   row["original"].rsplit("/", 2)[1:])]
            assert m["value"] == orig["value"] and m["key"] == orig["key"]
            assert m["partition"] == orig["partition"], "not the original " \
                "partition"
            assert not any(k.startswith("crmsync.error.")
                           for k in m["headers"]), m["headers"]
            # the original headers travel along
            for k, v in orig["headers"].items():
                assert m["headers"].get(k) == v, (k, m["headers"])
            assert d["headers"].get("trace-id") == m["headers"].get(
                "trace-id")
        assert not want_of
        st.wait_lag_zero(GROUP, TOPIC, timeout=60)
        st.wait_for(lambda: len(responses_for(st, "dlq-fixable")) == 1,
                    timeout=20, what="the replayed event's response")
        assert len(responses(st)) == n_resp + 1
        # the hopeless one failed again: dead-lettered anew, marked
        dead2 = st.consume_all(DLQ)
        assert len(dead2) == 7, len(dead2)
        again = [d for d in dead2 if "crmsync.replay.of" in d["headers"]]
        assert len(again) == 1, [d["headers"] for d in dead2]
        assert again[0]["headers"]["crmsync.error.class"] == "CRM_REJECTED"
        assert again[0]["headers"]["crmsync.replay.of"] == "%s/%d/%d" % (
            DLQ, never_row["partition"], never_row["offset"])

        # -- the same replay again: no second CRM effect --------------------
        out, _ = run_dlq(st, "replay", "-t", DLQ, "--class", "CRM_REJECTED",
                         "-p", str(fix_row["partition"]), "--offset-from",
                         str(fix_row["offset"]), "--offset-to",
                         str(fix_row["offset"]), "--execute")
        assert "replayed 1 message(s): 1 delivered" in out, out
        st.wait_lag_zero(GROUP, TOPIC, timeout=60)
        time.sleep(1)
        assert len(responses_for(st, "dlq-fixable")) == 1, "duplicated"
        assert len(responses(st)) == n_resp + 1
        assert len(st.consume_all(DLQ)) == 7, "replay of a fixed one failed"
        assert len(st.consume_all(TOPIC)) == n_topic + 3

        # -- no group ever got offsets from the CLI; -F works; -X hidden --
        assert committed_anything(st, "crmsync-dlq-cli", DLQ) == []
        props = os.path.join(st.workdir, "kafka.properties")
        with open(props, "w") as f:
            f.write("# test\nbootstrap.servers = %s\n" % st.bootstrap)
        out, _ = run_dlq(st, "list", "-t", DLQ, "--class", "CRM_REJECTED",
                         kafka=["-F", props])
        assert len(parse_list(out)[0]) == 3, out
        out, err = run_dlq(st, "list", "-t", DLQ, expect_rc=1, kafka=[
            "-b", st.bootstrap, "-X", "sasl.password=Sup3rS3cret",
            "-X", "acks=Sup3rS3cret2"])
        assert "acks" in err and "Sup3rS3cret" not in out + err, err
        assert w.alive
        w.stop()


TESTS = [v for k, v in sorted(globals().items()) if k.startswith("test_")]


def main(argv):
    return run_scenarios(TESTS, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
