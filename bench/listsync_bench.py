"""List-sync worker benchmark: a full refresh of one large marketing list
through both emulators (Dataverse and Optimizely Campaign).

The Dataverse emulator gets one static list of N contacts through
POST /_admin/bulk-list (in chunks) and a non-restrictive purpose with no
consent rows, so every member passes the consent filter (nothing is
opted out) and is sent. One crmsync-listsync process runs against the
ESP emulator; one ListSyncRequest is produced and timed until the
worker's group has lag 0 (the job ended and its offset was stored).
While it runs, the worker's /metrics (crmsync_listsync_job_members) and
/proc/<pid>/status (VmRSS, VmHWM) are sampled every 0.5 s, so the peak
RSS after the first 100,000 members can be compared with the peak at the
end: memory must be flat in the list size. Not a test: the figures go to
docs/benchmarks.md between the list-sync markers with --write.

  python3 bench/listsync_bench.py [--members 1000000] [--write]
"""
import argparse
import json
import os
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
from stack import Stack, split_series  # noqa: E402

TOPIC = "crmsync.listsync.requests"
RESULTS = "crmsync.listsync.results"
LIST_ID = "b0000000-0000-4000-8000-000000000001"
PURPOSE = "b0000000-0000-4000-8000-0000000000c1"
ESP_LIST = "4242"
NON_RESTRICTIVE = 534120001  # msdynmkt_enforcementmodel
COMMERCIAL = 534120000       # msdynmkt_type
BEGIN, END = "<!-- bench-listsync:begin -->", "<!-- bench-listsync:end -->"


def proc_status(pid):
    """(VmRSS, VmHWM) in KiB from /proc/<pid>/status."""
    rss = hwm = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def total(metrics, name, **want):
    s = 0.0
    for series, v in metrics.items():
        n, labels = split_series(series)
        if n == name and all(labels.get(k) == x for k, x in want.items()):
            s += v
    return s


def start_esp(st):
    """Starts the ESP emulator under the stack (stopped with it); returns
    (process, base URL of its admin API)."""
    pf = os.path.join(st.workdir, "esp.port")
    p = st._start("esp", [sys.executable, os.path.join(
        REPO, "tests", "emulators", "optimizely_emulator.py"), "--port", "0",
        "--port-file", pf, "--mandator", "123", "--user", "api",
        "--password", "bench-pw", "--quiet"])
    port = int(st._wait_file(p, pf, 30))
    return p, "http://127.0.0.1:%d" % port


def get_json(url, timeout=60):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default=os.path.join(REPO, "build",
                                                        "release"))
    ap.add_argument("--members", type=int, default=1000000)
    ap.add_argument("--chunk", type=int, default=100000,
                    help="members per bulk-list seeding call")
    ap.add_argument("--esp-batch", type=int, default=1000,
                    help="esp.batch_size of the worker")
    ap.add_argument("--write", action="store_true",
                    help="write the figures to docs/benchmarks.md")
    a = ap.parse_args()
    mark = min(100000, a.members)

    with Stack(build_dir=os.path.abspath(a.build_dir), source_dir=REPO) as st:
        st.start_kafka()
        st.start_redis()
        st.start_dataverse(seed={"msdynmkt_purposes": [{
            "msdynmkt_purposeid": PURPOSE, "msdynmkt_name": "Newsletter",
            "msdynmkt_type": COMMERCIAL,
            "msdynmkt_enforcementmodel": NON_RESTRICTIVE}]})
        s0 = time.monotonic()
        for start in range(0, a.members, a.chunk):
            st.dv_admin("POST", "/_admin/bulk-list", {
                "list_id": LIST_ID, "entity": "contact",
                "count": min(a.chunk, a.members - start), "start": start,
                "listname": "Benchmark list",
                "email_pattern": "member{n}@bench.example",
                "fields": {"firstname": "First{n}", "lastname": "Last{n}"}})
        print("seeded %d list members in %.1fs" % (a.members,
                                                    time.monotonic() - s0))
        esp, esp_url = start_esp(st)
        cfg = st.worker_config("listsync", {
            "esp.base_url": esp_url + "/soap11", "esp.mandator_id": "123",
            "esp.user": "api", "esp.batch_size": a.esp_batch,
            # no bounce worker here: nothing to wait for
            "listsync.barrier_topics": "", "log.level": "warn"})
        w = st.start_worker("listsync", cfg,
                            env={"CRMSYNC_ESP_PASSWORD": "bench-pw"})
        w.wait_ready(60)
        dv_pid = st._dv.popen.pid
        esp_pid = esp.popen.pid
        cpu0 = {k: cpu_seconds(p) for k, p in
                (("worker", w.pid), ("dataverse", dv_pid), ("esp", esp_pid))}
        dv0 = st.dv_admin("GET", "/_admin/stats")
        now = int(time.time() * 1000)
        t0 = time.monotonic()
        st.produce(TOPIC, [{
            "event_id": "bench-%d" % now, "tenant": "bench",
            "occurred_at": now, "source_system": "bench",
            "crm_list_id": LIST_ID, "esp_list_id": ESP_LIST,
            "consent_id": PURPOSE, "mode": "FULL", "requested_at": now,
            "__key": LIST_ID}], schema_id=4)
        hwm_at_mark = None
        rss_samples = []
        last_lag_check = 0.0
        while True:
            time.sleep(0.5)
            read = total(w.metrics(), "crmsync_listsync_job_members",
                         state="read")
            rss, hwm = proc_status(w.pid)
            rss_samples.append((read, rss))
            if hwm_at_mark is None and read >= mark:
                hwm_at_mark = (int(read), hwm)
            if time.monotonic() - last_lag_check >= 2.0:
                last_lag_check = time.monotonic()
                try:
                    if st.group_lag("crmsync-listsync",
                                    TOPIC)["total_lag"] == 0:
                        break
                except RuntimeError:
                    pass
            if time.monotonic() - t0 > 1800:
                raise SystemExit("job did not end within 30 minutes")
        took = time.monotonic() - t0
        cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in
               (("worker", w.pid), ("dataverse", dv_pid), ("esp", esp_pid))}
        _, hwm_end = proc_status(w.pid)
        m = w.metrics()
        status = None
        for msg in st.consume_all(RESULTS, timeout=60):
            status = json.loads(msg["value"])
        esp_stats = get_json(esp_url + "/_admin/stats")
        esp_count = get_json(esp_url + "/_admin/lists/%s?limit=1"
                             % ESP_LIST).get("count")
        dv1 = st.dv_admin("GET", "/_admin/stats")
        crm_reqs = total(m, "crmsync_crm_requests_total")
        dead = st.consume_all(TOPIC + ".dlq")
        w.stop()

    print("job status:", json.dumps(status)[:1500])
    print("esp stats:", json.dumps({k: v for k, v in esp_stats.items()
                                    if k not in ("lists",)})[:1500])
    status = status or {}
    sent = status.get("sent")
    job_s = status.get("duration_ms", 0) / 1000.0
    esp_calls = {k: v for k, v in (esp_stats.get("calls") or {}).items()}
    dv_reqs = None
    if isinstance(dv0, dict) and isinstance(dv1, dict) and \
            "requests" in dv0 and isinstance(dv0["requests"], int):
        dv_reqs = dv1["requests"] - dv0["requests"]
    rows = [
        ("list members (static list, contacts)", "%d" % a.members),
        ("job state / read / sent / accepted (code 0)", "%s / %s / %s / %s"
         % (status.get("state"), status.get("read"), sent,
            status.get("accepted"))),
        ("filtered (any reason) / duplicates", "%d / %s" % (
            sum((status.get("filtered") or {}).values()),
            status.get("duplicates"))),
        ("ESP list count after the job", "%s" % esp_count),
        ("job duration (status duration_ms)", "%.1f s" % job_s),
        ("throughput (members / job duration)",
         "%.0f members/s" % (a.members / max(job_s, 1e-3))),
        ("produce to group lag 0 (incl. polling the job, commit)",
         "%.1f s" % took),
        ("worker peak RSS (VmHWM) after %d members" % (hwm_at_mark or
                                                      (0, 0))[0],
         "%.1f MiB" % ((hwm_at_mark or (0, 0))[1] / 1024.0)),
        ("worker peak RSS (VmHWM) after %d members" % a.members,
         "%.1f MiB" % (hwm_end / 1024.0)),
        ("CRM HTTP requests (worker's crmsync_crm_requests_total)",
         "%.0f" % crm_reqs + (" (emulator: %d)" % dv_reqs
                              if dv_reqs is not None else "")),
        ("ESP SOAP calls", ", ".join("%s %s" % kv for kv in
                                     sorted(esp_calls.items())) or "?"),
        ("CPU: worker / Dataverse emulator / ESP emulator",
         "%.1f s / %.1f s / %.1f s of %.1f s" % (
             cpu["worker"], cpu["dataverse"], cpu["esp"], took)),
        ("dead letters", "%d" % len(dead)),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print("%-*s  %s" % (width, k, v))
    if a.write:
        path = os.path.join(REPO, "docs", "benchmarks.md")
        with open(path) as f:
            text = f.read()
        table = "\n| measure | value |\n|---|---|\n" + "".join(
            "| %s | %s |\n" % r for r in rows)
        if BEGIN not in text:
            raise SystemExit("%s has no %s marker" % (path, BEGIN))
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        with open(path, "w") as f:
            f.write(head + BEGIN + table + END + tail)
        print("wrote", path)
    ok = status.get("state") == "done" and sent == a.members \
        and esp_count == a.members
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
