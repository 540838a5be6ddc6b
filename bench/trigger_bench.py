"""Trigger worker benchmark, end to end through Kafka, the worker and Redis
(the timer store alone is measured by crmsync-bench-trigger_timers).

Phase 1 (starts): N `cart.abandoned` triggers for N different contacts are
produced while one worker runs; each starts an abandoned-cart instance
whose first reminder is an hour away, so N timers stay pending.
triggers/s = N / (first produce -> consumer lag 0); Redis bytes per pending
timer = used_memory delta / N, as the worker really stores them.
Phase 2 (qualifying triggers): N `checkout.completed` for the same contacts
end every instance and cancel its timer; triggers/s the same way, and the
wheel must be empty afterwards.
Phase 3 (firing lag): `fire.start` triggers produced at a steady rate; the
journey waits 5 s and then produces an event, so timers fall due at that
rate; firing lag p50/p99 from the worker's crmsync_trigger_firing_lag_seconds
histogram. Phase 4 (burst): M such triggers at once, so M timers fall due
at the same moment: timers fired/s through the worker. The produced events
are counted on their topic (each exactly once).
"""
import argparse
import os
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
sys.path.insert(0, HERE)
from response_bench import (cpu_seconds, histogram, quantile,  # noqa: E402
                            redis_used_memory, rss_peak_kib, total)
from stack import Stack  # noqa: E402

TOPIC = "crmsync.trigger.events"
OUT = "crmsync.bench.fired"
GROUP = "crmsync-trigger"

JOURNEYS = """journeys:
  - id: cart
    start: {trigger: cart.abandoned}
    reentry: always
    steps:
      - reminder:
          action: {type: produce, topic: %(out)s, trigger: cart.reminder}
          first_after: 1h
          every: 24h
          max: 3
          until: [checkout.completed]
          deadline: 7d
  - id: fire
    start: {trigger: fire.start}
    steps:
      - wait: {for: 5s}
      - action: {type: produce, topic: %(out)s, trigger: fired}
""" % {"out": OUT}


def trigger(name, cid, i, prefix):
    return {
        "event_id": "%s-%07d" % (prefix, i),
        "tenant": "acme",
        "occurred_at": int(time.time() * 1000),
        "source_system": "bench",
        "recipient": {"entity_type": "contact", "entity_id": cid,
                      "email": None},
        "trigger_kind": "CUSTOM",
        "trigger_name": name,
        "journey_id": None,
        "attributes": {},
        "deadline": None,
        "__key": "contact:" + cid,
    }


def _cid_in(value, cids):
    """The contact id (a GUID string inside the Avro value) of an event."""
    i = value.find(b"5c000000-")
    return value[i:i + 36].decode() if i >= 0 and \
        value[i:i + 36].decode() in cids else None


def pct(v, q):
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


def produced(st, topic):
    r = st.group_lag("crmsync-bench-counter", topic)
    return sum(p["high"] for p in r["partitions"])


def phase(st, events):
    t0 = time.monotonic()
    for i in range(0, len(events), 50000):
        st.produce(TOPIC, events[i:i + 50000], schema_id=6)
    st.wait_lag_zero(GROUP, TOPIC, timeout=1800)
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default=os.path.join(REPO, "build",
                                                        "release"))
    ap.add_argument("--n", type=int, default=200000,
                    help="instances started (and ended) in phases 1 and 2")
    ap.add_argument("--fire", type=int, default=20000,
                    help="timers fired at a steady rate in phase 3")
    ap.add_argument("--rate", type=int, default=2000,
                    help="timers falling due per second in phase 3")
    ap.add_argument("--burst", type=int, default=20000,
                    help="timers falling due at the same moment in phase 4")
    ap.add_argument("--partitions", type=int, default=24)
    a = ap.parse_args()
    cids = [str(uuid.UUID(int=(0x5b << 120) | i)) for i in range(a.n)]

    with Stack(build_dir=os.path.abspath(a.build_dir), source_dir=REPO,
               partitions=a.partitions) as st:
        st.start_kafka(extra_topics=(OUT,))
        st.start_redis()
        st.start_dataverse()
        st.start_esp()
        path = os.path.join(st.workdir, "journeys.yaml")
        with open(path, "w") as f:
            f.write(JOURNEYS)
        cfg = {"trigger.journeys": path, "log.level": "warn",
               "consumer.batch_max_messages": 2000,
               "consumer.batch_max_ms": 100}
        cfg.update(st.esp_config())
        w = st.start_worker("trigger", st.worker_config("trigger", cfg),
                            env=st.esp_env())
        w.wait_ready(60)
        used0 = redis_used_memory(st)
        cpu0 = cpu_seconds(w.pid)

        print("phase 1: %d starts" % a.n, flush=True)
        t1 = phase(st, [trigger("cart.abandoned", c, i, "s")
                        for i, c in enumerate(cids)])
        cpu1 = cpu_seconds(w.pid)
        used1 = redis_used_memory(st)
        m = w.metrics()
        started = total(m, "crmsync_trigger_instances_total", journey="cart",
                        outcome="started")

        print("phase 2: %d checkouts" % a.n, flush=True)
        t2 = phase(st, [trigger("checkout.completed", c, i, "q")
                        for i, c in enumerate(cids)])
        cpu2 = cpu_seconds(w.pid)
        wheel = st.redis("ZCARD", "cs:tr:wi")

        print("phase 3: %d timers falling due at %d/s" % (a.fire, a.rate),
              flush=True)
        h0 = dict(histogram(w.metrics(), "crmsync_trigger_firing_lag_seconds"))
        out0 = produced(st, OUT)
        fire_cids = [str(uuid.UUID(int=(0x5c << 120) | i))
                     for i in range(a.fire + a.burst)]
        chunk = max(1, a.rate // 4)
        fired_starts = []
        p0 = time.monotonic()
        for i in range(0, a.fire, chunk):
            tick = time.monotonic()
            evs = [trigger("fire.start", c, i + k, "f")
                   for k, c in enumerate(fire_cids[i:i + chunk])]
            fired_starts += [(e["recipient"]["entity_id"], e) for e in evs]
            st.produce(TOPIC, evs, schema_id=6)
            time.sleep(max(0.0, 0.25 - (time.monotonic() - tick)))
        achieved = a.fire / (time.monotonic() - p0)
        st.wait_for(lambda: produced(st, OUT) - out0 >= a.fire, 600, 0.5,
                    "every timer fired")
        h = [(le, c - h0.get(le, 0.0)) for le, c in
             histogram(w.metrics(), "crmsync_trigger_firing_lag_seconds")]
        # due time of each wait (start + 5 s) -> the produced event's Kafka
        # timestamp: the whole way from timer to action, per timer
        due_of = {c: e["occurred_at"] + 5000 for c, e in fired_starts}
        delays = sorted(
            m["timestamp"] - due_of[c]
            for m in st.consume_all(OUT, timeout=120)
            for c in [_cid_in(m["value"], due_of)]
            if c)

        print("phase 4: a burst of %d timers due at once" % a.burst,
              flush=True)
        out1 = produced(st, OUT)
        burst = [trigger("fire.start", c, a.fire + k, "f")
                 for k, c in enumerate(fire_cids[a.fire:])]
        due = burst[0]["occurred_at"] / 1000.0 + 5.0
        st.produce(TOPIC, burst, schema_id=6)
        st.wait_for(lambda: produced(st, OUT) - out1 >= a.burst, 600, 0.05,
                    "the burst fired")
        burst_s = time.time() - due
        time.sleep(2)  # anything beyond the count would be a duplicate
        fired_out = produced(st, OUT) - out0
        rss = rss_peak_kib(w.pid)
        w.stop()

    rows = [
        ("phase 1: starts end to end", "%.0f triggers/s (%d in %.1f s)"
         % (a.n / t1, a.n, t1)),
        ("instances started", "%d (expected %d)" % (started, a.n)),
        ("Redis bytes per pending timer (worker's own data)",
         "%.1f B" % ((used1 - used0) / max(a.n, 1))),
        ("worker CPU per 100k starts", "%.2f s" % ((cpu1 - cpu0) * 1e5 / a.n)),
        ("phase 2: qualifying triggers end to end",
         "%.0f triggers/s (%d in %.1f s)" % (a.n / t2, a.n, t2)),
        ("worker CPU per 100k qualifying triggers",
         "%.2f s" % ((cpu2 - cpu1) * 1e5 / a.n)),
        ("wheel hashes left after phase 2", "%d (expected 0)" % wheel),
        ("phases 3+4: timers fired / events produced", "%d / %d"
         % (a.fire + a.burst, fired_out)),
        ("phase 3: firing lag p50 / p99 (worker histogram)",
         "%.0f ms / %.0f ms at %.0f timers/s" % (
             quantile(0.5, h) * 1000, quantile(0.99, h) * 1000, achieved)),
        ("phase 3: due time -> produced event p50 / p99",
         "%.0f ms / %.0f ms (%d events)" % (
             pct(delays, 0.5), pct(delays, 0.99), len(delays))),
        ("phase 4: burst fired through the worker (produce action)",
         "%.0f timers/s (%d in %.1f s after their due time)"
         % (a.burst / burst_s, a.burst, burst_s)),
        ("worker peak RSS", "%.1f MiB" % (rss / 1024.0)),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print("%-*s  %s" % (width, k, v))


if __name__ == "__main__":
    main()
