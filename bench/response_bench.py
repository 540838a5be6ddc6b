"""Response worker benchmark: throughput, batching, Redis cost, latency,
memory - side by side with kcat consuming the same stream raw.

Phase 1 (throughput): one worker is running and ready; N events are
produced; events/s = N / (time from the first produce to consumer lag 0).
kcat then reads the same stream raw from the beginning: the ceiling.
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


def redis_used_memory(st):
    info = st.redis("INFO", "memory")
    if isinstance(info, bytes):
        info = info.decode()
    return int(info.split("used_memory:")[1].split()[0])


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    ap.add_argument("--max-in-flight", type=int, default=None,
                    help="crm.max_in_flight of the worker (default: the "
                         "worker's default)")
    ap.add_argument("--batch-size", type=int, default=1000,
                    help="crm.batch_size of the worker")
    ap.add_argument("--write", action="store_true",
                    help="write the figures to docs/benchmarks.md")
    a = ap.parse_args()

    with Stack(build_dir=os.path.abspath(a.build_dir), source_dir=REPO,
               partitions=a.partitions) as st:
        st.start_kafka()
        st.start_redis()
        # Current event times: markers of events older than idem.ttl_days
        # expire after one lease, which would hide their memory.
        events, expected = sample_response_events(
            a.events, dup_rate=0.05, recipients=5000, seed=9,
            start_ms=int(time.time() * 1000) - 2 * 86400 * 1000)
        # Phase-2 events: same recipients and campaigns, new event ids.
        lat_events = []
        for i, e in enumerate(events[:a.latency_events]):
            e = dict(e)
            e["event_id"] = "lat-%06d" % i
            e["crm_campaign_id"] = e["crm_campaign_id"] or next(
                x["crm_campaign_id"] for x in events if x["crm_campaign_id"])
            e["from_copied_list"] = False
            lat_events.append(e)
        st.start_dataverse(seed=seed_for_events(events))
        # Size the idempotency buckets by the documented rule: events per
        # day / 80 (the sample spreads occurred_at over about three days).
        buckets = max(64, len(events) // 3 // 80)
        opts = {"consumer.batch_max_messages": 2000,
                "consumer.batch_max_ms": 100, "crm.batch_size": a.batch_size,
                "idem.buckets_per_day": buckets, "log.level": "warn"}
        if a.max_in_flight is not None:
            opts["crm.max_in_flight"] = a.max_in_flight
        cfg = st.worker_config("response", opts)
        used0 = redis_used_memory(st)

        emu_pid = st._dv.popen.pid
        w = st.start_worker("response", cfg)
        w.wait_ready(60)
        emu_cpu0, worker_cpu0 = cpu_seconds(emu_pid), cpu_seconds(w.pid)
        print("producing %d events to %d partitions while the worker runs"
              % (len(events), a.partitions))
        t0 = time.monotonic()
        st.produce(TOPIC, events)
        st.wait_lag_zero("crmsync-response", TOPIC, timeout=1800)
        took = time.monotonic() - t0
        worker_cpu = cpu_seconds(w.pid) - worker_cpu0
        emu_cpu = cpu_seconds(emu_pid) - emu_cpu0
        kcat_n, kcat_rate = kcat_ceiling(st, len(events))
        m = w.metrics()
        written = len(st.dv_admin("GET", "/_admin/records/campaignresponses"))
        used1 = redis_used_memory(st)
        reqs = total(m, "crmsync_crm_requests_total", kind="batch")
        ops = total(m, "crmsync_crm_operations_total")
        batches = total(m, "crmsync_batches_total")
        rtrips = total(m, "crmsync_redis_round_trips_total")

        # Phase 2: steady produce while consuming, occurred_at = now.
        chunk = max(1, a.rate // 4)
        p0 = time.monotonic()
        for i in range(0, len(lat_events), chunk):
            tick = time.monotonic()
            now = int(time.time() * 1000)
            part = lat_events[i:i + chunk]
            for e in part:
                e["occurred_at"] = now
                e["sent_at"] = now - 60000
            st.produce(TOPIC, part)
            time.sleep(max(0.0, 0.25 - (time.monotonic() - tick)))
        achieved = len(lat_events) / (time.monotonic() - p0)
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
        ("CPU during phase 1: worker / emulator", "%.1f s / %.1f s of %.1f s"
         % (worker_cpu, emu_cpu, took)),
        ("kcat raw consume (ceiling)", "%.0f msgs/s (%d msgs)" % (kcat_rate,
                                                                 kcat_n)),
        ("CRM operations per HTTP request", "%.1f" % (ops / max(reqs, 1))),
        ("Redis round trips per batch", "%.2f" % (rtrips / max(batches, 1))),
        ("Redis bytes per remembered event id", "%.1f B (buckets_per_day=%d)"
         % ((used1 - used0) / max(unique_ids, 1), buckets)),
        ("event-to-CRM latency p50 / p99", "%.0f ms / %.0f ms (at %.0f ev/s)"
         % (p50 * 1000, p99 * 1000, achieved)),
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
