"""Integration test of the first-class lag metrics (issue 6, "Lag,
first-class") against the real local stack: mock Kafka cluster, redis-server,
the Dataverse emulator and the built crmsync-response binary.

A worker started on a backlog exports within 10 s crmsync_kafka_rebalances_total,
crmsync_consumer_lag{topic,partition}, crmsync_consumer_committed_offset
{topic,partition} and crmsync_consumer_lag_seconds{topic,partition}; once it
caught up the committed offsets add up to the messages produced and lag and
lag seconds are 0; while the CRM answers 503 (the loop pauses and retries)
the lag seconds grow between two readings and the committed offsets stay;
after the outage everything returns to 0.

Run: python3 tests/integration/test_lag_metrics.py [scenario ...]
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stack import (Stack, run_scenarios,  # noqa: E402
                   sample_response_events, seed_for_events, split_series)

TOPIC = "crmsync.response.events"
GROUP = "crmsync-response"
FAMILIES = ("crmsync_consumer_lag", "crmsync_consumer_committed_offset",
            "crmsync_consumer_lag_seconds")


def families(w):
    """{family: {(topic, partition): value}} of the per-partition lag
    families plus the unlabelled ones as {family: value}; None while the
    metrics endpoint is not up yet."""
    try:
        samples = w.metrics()
    except (OSError, RuntimeError):
        return None
    out = {f: {} for f in FAMILIES}
    for series, value in samples.items():
        fam, labels = split_series(series)
        if fam in FAMILIES:
            assert labels.get("worker") == "response", series
            assert set(labels) == {"worker", "topic", "partition"}, series
            out[fam][(labels["topic"], int(labels["partition"]))] = value
        elif fam in ("crmsync_kafka_rebalances_total",
                     "crmsync_consumer_lag_seconds_max",
                     "crmsync_partitions_paused"):
            out[fam] = value
    return out


def caught_up(f, produced):
    """Committed offsets add up to what was produced; lag and lag seconds
    are 0 on every partition."""
    return (f is not None
            and sum(f["crmsync_consumer_committed_offset"].values())
            == produced
            and f["crmsync_consumer_lag"]
            and not any(f["crmsync_consumer_lag"].values())
            and f["crmsync_consumer_lag_seconds"]
            and not any(f["crmsync_consumer_lag_seconds"].values())
            and f.get("crmsync_consumer_lag_seconds_max") == 0)


def test_lag_metrics_lifecycle():
    with Stack() as st:
        st.start_kafka()
        st.start_redis(password="redis-pw")
        events, _ = sample_response_events(300, seed=61)
        later, _ = sample_response_events(150, seed=62)
        st.start_dataverse(seed=seed_for_events(events + later))
        cfg = st.worker_config("response", {
            "consumer.batch_max_messages": 100,
            "consumer.batch_max_ms": 50,
            "consumer.retry_backoff_max_ms": 1000,
            "idem.lease_ms": 3000})
        st.produce(TOPIC, events)

        # (a) everything is exported within 10 s of start
        t0 = time.monotonic()
        w = st.start_worker("response", cfg)

        def exported():
            f = families(w)
            if f is None or "crmsync_kafka_rebalances_total" not in f:
                return None
            return f if all(f[fam] for fam in FAMILIES) else None

        f = st.wait_for(exported, timeout=10, interval=0.2,
                        what="lag metrics within 10 s of start")
        took = time.monotonic() - t0
        assert took <= 10.5, "lag metrics after %.1f s" % took
        assert "crmsync_consumer_lag_seconds_max" in f, f
        parts = set(f["crmsync_consumer_lag"])
        assert all(t == TOPIC for t, _ in parts), parts
        print("  all lag families after %.1f s" % took, flush=True)

        # (b) caught up: committed offsets = messages, lag 0, seconds 0
        produced = len(events)
        f = st.wait_for(lambda: (lambda g: g if caught_up(g, produced)
                                 else None)(families(w)),
                        timeout=30, what="committed %d, lag 0" % produced)
        assert f["crmsync_kafka_rebalances_total"] >= 1, f
        assert st.group_lag(GROUP, TOPIC)["total_lag"] == 0
        for key, off in f["crmsync_consumer_committed_offset"].items():
            assert off >= 0 and off == int(off), (key, off)

        # (c) the CRM fails: the loop pauses and retries, nothing commits
        # and the age of the oldest unprocessed message keeps growing
        st.dv_admin("POST", "/_admin/faults", {"error_rate": 1.0,
                                               "error_status": 503})
        st.produce(TOPIC, later)
        st.wait_for(lambda: w.metric("crmsync_partitions_paused") > 0,
                    timeout=20, what="partitions paused while the CRM fails")
        # What finished before the first failure (events that need no CRM
        # write) is still being committed and reported: let it settle
        # (auto-commit 1 s + statistics 2 s).
        settled = {"since": time.monotonic(), "last": None}

        def settled_reading():
            g = families(w)
            c = g and g["crmsync_consumer_committed_offset"]
            if c != settled["last"]:
                settled.update(since=time.monotonic(), last=c)
                return None
            if time.monotonic() - settled["since"] < 4:
                return None
            return g if g["crmsync_consumer_lag_seconds_max"] > 0 else None

        first = st.wait_for(settled_reading, timeout=25, interval=0.5,
                            what="committed offsets settled, lag seconds > 0")
        time.sleep(3)
        second = families(w)
        m1 = first["crmsync_consumer_lag_seconds_max"]
        m2 = second["crmsync_consumer_lag_seconds_max"]
        assert m2 > m1 > 0, "lag seconds max %.3f then %.3f" % (m1, m2)
        assert m2 - m1 >= 2, "grew only %.3f s in 3 s" % (m2 - m1)
        grew = [k for k, v in second["crmsync_consumer_lag_seconds"].items()
                if v > first["crmsync_consumer_lag_seconds"].get(k, 0) > 0]
        assert grew, "no partition's lag seconds grew: %s -> %s" % (
            first["crmsync_consumer_lag_seconds"],
            second["crmsync_consumer_lag_seconds"])
        assert m2 == max(second["crmsync_consumer_lag_seconds"].values())
        assert (second["crmsync_consumer_committed_offset"]
                == first["crmsync_consumer_committed_offset"]), (
            "committed offsets moved during the outage: %s -> %s" % (
                first["crmsync_consumer_committed_offset"],
                second["crmsync_consumer_committed_offset"]))
        assert sum(second["crmsync_consumer_committed_offset"].values()) < \
            produced + len(later)
        assert sum(second["crmsync_consumer_lag"].values()) > 0, second
        print("  stalled: lag seconds max %.1f -> %.1f" % (m1, m2),
              flush=True)

        # restored: everything processed, back to 0
        st.dv_admin("DELETE", "/_admin/faults")
        produced += len(later)
        st.wait_for(lambda: caught_up(families(w), produced), timeout=40,
                    what="lag seconds back to 0, committed %d" % produced)
        assert st.group_lag(GROUP, TOPIC)["total_lag"] == 0
        assert w.stop() == 0


TESTS = [v for k, v in sorted(globals().items()) if k.startswith("test_")]


def main(argv):
    return run_scenarios(TESTS, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
