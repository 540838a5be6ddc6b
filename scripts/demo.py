"""The crmsync demo: the whole fleet on the embedded stack.

Starts the mock Kafka cluster, redis-server and the Dataverse emulator,
every built worker, produces a sample stream of ESP events (duplicates and
poison messages included), waits until every consumer group has lag 0 and
prints what landed in the CRM and in the dead-letter topics. Then it keeps
the stack up (metrics on the printed ports) until Ctrl-C, or exits at once
with --exit.
"""
import argparse
import collections
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
from stack import (DEFAULT_TOPICS, Stack, poison_events,  # noqa: E402
                   sample_response_events, seed_for_events)


def hr(title):
    print("\n== %s %s" % (title, "=" * max(0, 70 - len(title))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build-dir", default=os.path.join(REPO, "build", "dev"))
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--exit", action="store_true",
                    help="stop the stack right after printing the result")
    args = ap.parse_args()

    workers = [w for w in sorted(DEFAULT_TOPICS) if os.path.exists(
        os.path.join(args.build_dir, "workers", "crmsync-" + w))]
    with Stack(build_dir=os.path.abspath(args.build_dir),
               source_dir=REPO) as st:
        print("starting mock Kafka cluster, redis-server, Dataverse emulator")
        st.start_kafka()
        st.start_redis(password="demo-redis-password")
        events, expected = sample_response_events(args.events, seed=42)
        st.start_dataverse(seed=seed_for_events(events))
        print("  kafka bootstrap: %s" % st.bootstrap)
        print("  redis:           127.0.0.1:%d (password protected)"
              % st.redis_port)
        print("  dataverse:       %s" % st.dv_url)

        procs = {}
        for w in workers:
            procs[w] = st.start_worker(w, st.worker_config(w))
            procs[w].wait_ready(60)
            print("  worker %-9s pid %d, metrics http://127.0.0.1:%s/metrics"
                  % (w, procs[w].pid, procs[w].metrics_port))

        hr("producing")
        t0 = time.monotonic()
        topic = DEFAULT_TOPICS["response"]
        uniq = len({e["event_id"] for e in events})
        st.produce(topic, events[: len(events) // 2])
        st.produce(topic, poison_events("poison-demo"))
        st.produce(topic, events[len(events) // 2:])
        print("%d response events (%d unique, %d redelivered duplicates) "
              "+ 3 poison messages -> %s" % (len(events), uniq,
                                             len(events) - uniq, topic))
        for w in workers:
            st.wait_lag_zero("crmsync-" + w, DEFAULT_TOPICS[w], timeout=300)
        took = time.monotonic() - t0
        print("all consumer groups at lag 0 after %.1fs" % took)

        hr("landed in the CRM (campaignresponses)")
        recs = st.dv_admin("GET", "/_admin/records/campaignresponses")
        camps = {c["campaignid"]: c["name"] for c in st.dv_admin(
            "GET", "/_admin/records/campaigns")}
        by = collections.Counter(
            (camps.get(r.get("_regardingobjectid_value"), "?"),
             r.get("category")) for r in recs)
        print("%-28s %-14s %6s" % ("campaign", "category", "count"))
        for (c, cat), n in sorted(by.items()):
            print("%-28s %-14s %6d" % (c[:28], cat, n))
        print("total: %d records; expected exactly %d (one per unique event "
              "under a CRM campaign, not from a copied list) -> %s"
              % (len(recs), len(expected),
                 "OK" if len(recs) == len(expected) else "MISMATCH"))
        if recs:
            r = recs[0]
            print("example: subject=%r receivedon=%s customer=%s"
                  % (r.get("subject"), r.get("receivedon"),
                     (r.get("campaignresponse_activity_parties") or [{}])[0]))

        if "response" in procs:
            w = procs["response"]
            hr("response worker counters")
            for name, labels in [
                    ("crmsync_messages_consumed_total", {}),
                    ("crmsync_messages_processed_total", {}),
                    ("crmsync_messages_duplicate_total", {}),
                    ("crmsync_messages_skipped_total",
                     {"reason": "no_campaign"}),
                    ("crmsync_messages_skipped_total",
                     {"reason": "copied_list"}),
                    ("crmsync_crm_requests_total", None),
                    ("crmsync_redis_round_trips_total", {})]:
                if labels is None:
                    total = sum(v for k, v in w.metrics().items()
                                if k.startswith(name))
                    print("  %-48s %8.0f" % (name, total))
                else:
                    lab = ",".join('%s="%s"' % kv for kv in labels.items())
                    print("  %-48s %8.0f" % (
                        name + ("{%s}" % lab if lab else ""),
                        w.metric(name, **labels)))

        hr("dead-letter topics")
        for w in workers:
            dead = st.consume_all(DEFAULT_TOPICS[w] + ".dlq")
            print("%s.dlq: %d message(s)" % (DEFAULT_TOPICS[w], len(dead)))
            for d in dead:
                h = d["headers"]
                print("  partition %s offset %s: %s - %s" % (
                    h.get("crmsync.error.partition"),
                    h.get("crmsync.error.offset"),
                    h.get("crmsync.error.class"),
                    h.get("crmsync.error.message")))

        if args.exit or not sys.stdin.isatty():
            print("\nstopping the stack")
            return 0
        print("\nstack is running; Ctrl-C stops everything")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            print("\nstopping the stack")
    return 0


if __name__ == "__main__":
    sys.exit(main())
