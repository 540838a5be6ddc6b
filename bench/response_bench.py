"""Response worker benchmark: throughput, batching, Redis cost, latency,
memory - side by side with kcat consuming the same stream raw.

Phase 1 (throughput): N events are produced first, then one worker drains
them; events/s = N / (time from worker start to consumer lag 0).
Phase 2 (latency): events are produced at a steady rate while the worker
runs, each stamped with occurred_at = produce time; p50/p99 come from the
worker's crmsync_event_to_crm_seconds histogram (linear interpolation
inside buckets, as PromQL's histogram_quantile).
"""
import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
from stack import (Stack, sample_response_events,  # noqa: E402
                   seed_for_events, split_series)

TOPIC = "crmsync.response.events"


def quantile(q, buckets):
    """buckets: sorted [(le, cumulative count)] incl. +Inf."""
    total = buckets[-1][1]
    if total == 0:
        return float("nan")
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(
                c - prev_c, 1e-9)
        prev_le, prev_c = le, c
    return prev_le


def histogram(metrics, name):
    out = []
    for series, v in metrics.items():
        n, labels = split_series(series)
        if n == name + "_bucket":
            le = labels["le"]
            out.append((float("inf") if le == "+Inf" else float(le), v))
    return sorted(out)


def total(metrics, name, **want):
    s = 0.0
    for series, v in metrics.items():
        n, labels = split_series(series)
        if n == name and all(labels.get(k) == x for k, x in want.items()):
            s += v
    return s


def rss_peak_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def kcat_ceiling(st, n):
    t0 = time.monotonic()
    out = subprocess.run(
        ["kcat", "-C", "-b", st.bootstrap, "-t", TOPIC, "-o", "beginning",
         "-e", "-q", "-f", "%o\n"], stdout=subprocess.PIPE, check=True)
    took = time.monotonic() - t0
    got = out.stdout.count(b"\n")
    return got, got / took


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default=os.path.join(REPO, "build",
                                                        "release"))
    ap.add_argument("--events", type=int, default=200000)
    ap.add_argument("--partitions", type=int, default=24)
    ap.add_argument("--latency-events", type=int, default=20000)
    ap.add_argument("--rate", type=int, default=5000,
                    help="events/s produced in the latency phase")
    ap.add_argument("--write", action="store_true",
                    help="write the figures to docs/benchmarks.md")
    a = ap.parse_args()

    with Stack(build_dir=os.path.abspath(a.build_dir), source_dir=REPO,
               partitions=a.partitions) as st:
        st.start_kafka()
        st.start_redis()
        events, expected = sample_response_events(
            a.events, dup_rate=0.05, recipients=5000, seed=9)
        st.start_dataverse(seed=seed_for_events(events))
        cfg = st.worker_config("response", {
            "consumer.batch_max_messages": 2000,
            "consumer.batch_max_ms": 100, "crm.batch_size": 1000,
            "log.level": "warn"})
        used0 = int(st.redis("INFO", "memory").split(
            "used_memory:")[1].split()[0])

        print("producing %d events to %d partitions ..." % (len(events),
                                                            a.partitions))
        st.produce(TOPIC, events)
        kcat_n, kcat_rate = kcat_ceiling(st, len(events))

        t0 = time.monotonic()
        w = st.start_worker("response", cfg)
        st.wait_lag_zero("crmsync-response", TOPIC, timeout=1800)
        took = time.monotonic() - t0
        m = w.metrics()
        written = len(st.dv_admin("GET", "/_admin/records/campaignresponses"))
        used1 = int(st.redis("INFO", "memory").split(
            "used_memory:")[1].split()[0])
        reqs = total(m, "crmsync_crm_requests_total", kind="batch")
        ops = total(m, "crmsync_crm_operations_total")
        batches = total(m, "crmsync_batches_total")
        rtrips = total(m, "crmsync_redis_round_trips_total")

        # Phase 2: steady produce while consuming, occurred_at = now.
        lat_events, _ = sample_response_events(
            a.latency_events, dup_rate=0.0, recipients=5000, seed=10)
        chunk = max(1, a.rate // 10)
        for i in range(0, len(lat_events), chunk):
            now = int(time.time() * 1000)
            part = lat_events[i:i + chunk]
            for e in part:
                e["occurred_at"] = now
                e["sent_at"] = now - 60000
            st.produce(TOPIC, part)
            time.sleep(max(0.0, 0.1 - 0.0))
        st.wait_lag_zero("crmsync-response", TOPIC, timeout=600)
        m2 = w.metrics()
        h = histogram(m2, "crmsync_event_to_crm_seconds")
        # subtract phase-1 observations (their occurred_at is historic)
        h1 = dict(histogram(m, "crmsync_event_to_crm_seconds"))
        h = [(le, c - h1.get(le, 0.0)) for le, c in h]
        p50, p99 = quantile(0.5, h), quantile(0.99, h)
        rss = rss_peak_kib(w.pid)
        w.stop()

    unique_ids = len(expected)
    rows = [
        ("events (incl. duplicates)", "%d" % len(events)),
        ("campaign responses written", "%d (expected %d)" % (written,
                                                            unique_ids)),
        ("end-to-end throughput", "%.0f events/s" % (len(events) / took)),
        ("kcat raw consume (ceiling)", "%.0f msgs/s (%d msgs)" % (kcat_rate,
                                                                 kcat_n)),
        ("CRM operations per HTTP request", "%.1f" % (ops / max(reqs, 1))),
        ("Redis round trips per batch", "%.2f" % (rtrips / max(batches, 1))),
        ("Redis bytes per remembered event id", "%.1f B" % (
            (used1 - used0) / max(unique_ids, 1))),
        ("event-to-CRM latency p50 / p99", "%.0f ms / %.0f ms (at %d ev/s)"
         % (p50 * 1000, p99 * 1000, a.rate)),
        ("worker peak RSS", "%.1f MiB" % (rss / 1024.0)),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print("%-*s  %s" % (width, k, v))
    if a.write:
        path = os.path.join(REPO, "docs", "benchmarks.md")
        with open(path) as f:
            text = f.read()
        begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
        table = "\n| measure | value |\n|---|---|\n" + "".join(
            "| %s | %s |\n" % r for r in rows)
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        with open(path, "w") as f:
            f.write(head + begin + table + end + tail)
        print("wrote", path)


if __name__ == "__main__":
    main()
