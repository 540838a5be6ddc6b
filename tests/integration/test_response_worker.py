"""Integration tests of the response worker against the real local stack:
mock Kafka cluster (3 brokers), redis-server, the Dataverse emulator and the
built crmsync-response binary. Each scenario asserts effects: records in the
emulator, dead letters with their headers, committed offsets.

Run: python3 tests/integration/test_response_worker.py [scenario ...]
"""
import json
import os
import re
import signal
import sys
import time
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stack import (Stack, expected_unique, poison_events,  # noqa: E402
                   run_scenarios, sample_response_events, seed_for_events)

TOPIC = "crmsync.response.events"
DLQ = TOPIC + ".dlq"
GROUP = "crmsync-response"
SRC = os.environ.get("CRMSYNC_SOURCE_DIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def uuid_namespace():
    text = open(os.path.join(SRC, "common", "odata.h")).read()
    m = re.search(r'#define CRMSYNC_UUID_NAMESPACE\s+"([0-9a-f-]{36})"', text)
    return uuid.UUID(m.group(1))


NS = uuid_namespace()


def activity_id(tenant, event_id):
    return str(uuid.uuid5(NS, "e|%s|%s" % (tenant, event_id)))


def responses(st):
    return st.dv_admin("GET", "/_admin/records/campaignresponses")


def event_ids_of(records):
    """Event id each record was written for (from its description)."""
    out = []
    for r in records:
        m = re.search(r"\(event (\S+) from ", r.get("description", ""))
        out.append(m.group(1) if m else None)
    return out


def assert_exactly(st, expected, tenant="tenant-test", mode="all"):
    recs = responses(st)
    ids = event_ids_of(recs)
    assert len(ids) == len(set(ids)), "duplicate records: %d vs %d unique" % (
        len(ids), len(set(ids)))
    missing = expected - set(ids)
    extra = set(ids) - expected
    assert not missing and not extra, "missing=%d extra=%d (of %d)" % (
        len(missing), len(extra), len(expected))
    if mode == "all":
        for r, eid in zip(recs, ids):
            assert r["activityid"] == activity_id(tenant, eid), (
                "record id is not the deterministic UUIDv5")
    return recs


def wait_records(st, n, timeout=120):
    st.wait_for(lambda: len(responses(st)) >= n, timeout=timeout,
                what="%d campaign responses" % n)


def base_stack(st, n, seed=1, partitions=6, **cfg):
    st.start_kafka()
    st.start_redis(password="redis-pw")
    events, expected = sample_response_events(n, seed=seed)
    st.start_dataverse(seed=seed_for_events(events))
    overrides = {"consumer.batch_max_messages": 200,
                 "consumer.batch_max_ms": 50,
                 "consumer.retry_backoff_max_ms": 2000,
                 "idem.lease_ms": 3000}
    overrides.update(cfg)
    return events, expected, st.worker_config("response", overrides)


# --------------------------------------------------------------------------

def test_exactly_once_with_duplicates_and_poison():
    """N events with duplicates and poison -> exactly the unique responses;
    poison in the DLQ with reason headers; SIGTERM exits fast, lag 0."""
    with Stack() as st:
        events, expected, cfg = base_stack(st, 3000)
        w = st.start_worker("response", cfg)
        w.wait_ready(30)
        st.produce(TOPIC, events[:1500])
        st.produce(TOPIC, poison_events("poison-1"))
        st.produce(TOPIC, events[1500:])
        st.wait_lag_zero(GROUP, TOPIC, timeout=120)
        recs = assert_exactly(st, expected)
        # every record is linked to its campaign and customer
        r0 = recs[0]
        assert r0.get("_regardingobjectid_value"), r0
        assert r0.get("channeltypecode") == 1
        dead = st.consume_all(DLQ)
        assert len(dead) == 3, "dead letters: %d" % len(dead)
        classes = sorted(d["headers"]["crmsync.error.class"] for d in dead)
        assert classes == ["BAD_FRAME", "DECODE", "UNKNOWN_SCHEMA"], classes
        for d in dead:
            h = d["headers"]
            assert h["crmsync.error.topic"] == TOPIC
            assert h["crmsync.error.worker"] == "response"
            assert h["crmsync.error.message"]
            assert int(h["crmsync.error.offset"]) >= 0
            assert d["key"] == "poison-1"
        status, _ = w._get("/readyz")
        assert status == 200, "not ready while running: %d" % status
        st.wait_for(lambda: any(k.startswith("crmsync_consumer_lag{")
                                for k in w.metrics()), timeout=15,
                    what="per-partition consumer lag from statistics")
        assert w.metric("crmsync_crm_request_duration_seconds_count") > 0
        assert w.metric("crmsync_crm_operations_total", result="ok") == len(
            expected)
        dups = w.metric("crmsync_messages_duplicate_total")
        assert dups >= 1, "duplicates were not counted"
        skipped = w.metric("crmsync_messages_skipped_total",
                           reason="no_campaign")
        assert skipped >= 1
        t0 = time.monotonic()
        rc = w.stop(signal.SIGTERM, timeout=15)
        took = time.monotonic() - t0
        assert rc == 0, "exit code %s" % rc
        assert took < 10, "SIGTERM took %.1fs" % took
        lag = st.group_lag(GROUP, TOPIC)
        assert lag["total_lag"] == 0, lag
        # Secrets never appear in logs (stdout JSON lines or stderr).
        out = open(w.log_path, encoding="utf-8", errors="replace").read()
        out += w.stderr()
        for secret in (st.dv_client_secret, "redis-pw"):
            assert secret not in out, "secret leaked into worker output"
        assert '"level":"info"' in out  # the logs were really read


def test_unique_mode_per_tenant():
    """tenant mode unique: first reaction per type/recipient/mailing."""
    with Stack() as st:
        events, _, cfg = base_stack(
            st, 1500, seed=2, **{"response.mode": "all",
                                 "response.tenant_modes":
                                 "tenant-test=unique"})
        w = st.start_worker("response", cfg)
        w.wait_ready(30)
        st.produce(TOPIC, events)
        st.wait_lag_zero(GROUP, TOPIC, timeout=120)
        want = expected_unique(events)
        ids = event_ids_of(responses(st))
        assert len(ids) == len(want), "%d records, want %d" % (len(ids),
                                                              len(want))
        assert set(ids) == want
        w.stop()


def test_crm_rejections_dead_letter():
    """Records the CRM rejects (campaign or contact unknown: 404) go to the
    DLQ with the CRM's reason; every other event still lands."""
    with Stack() as st:
        events, expected, cfg = base_stack(st, 500, seed=14)
        ghost_campaign = str(uuid.uuid4())
        ghost_contact = str(uuid.uuid4())
        bad = [dict(events[0], event_id="bad-campaign", crm_campaign_id=
                    ghost_campaign, from_copied_list=False),
               dict(events[1], event_id="bad-contact", crm_campaign_id=
                    events[2]["crm_campaign_id"] or ghost_campaign,
                    from_copied_list=False,
                    recipient={"entity_type": "contact",
                               "entity_id": ghost_contact, "email": None},
                    __key="contact:" + ghost_contact)]
        if not bad[1]["crm_campaign_id"] or bad[1]["crm_campaign_id"] == \
                ghost_campaign:
            bad[1]["crm_campaign_id"] = next(
                e["crm_campaign_id"] for e in events if e["crm_campaign_id"])
        w = st.start_worker("response", cfg)
        w.wait_ready(30)
        st.produce(TOPIC, events[:250] + bad + events[250:])
        st.wait_lag_zero(GROUP, TOPIC, timeout=120)
        assert_exactly(st, expected)
        dead = st.consume_all(DLQ)
        assert len(dead) == 2, [d["headers"] for d in dead]
        for d in dead:
            h = d["headers"]
            assert h["crmsync.error.class"] == "CRM_REJECTED", h
            assert "404" in h["crmsync.error.message"], h
            assert "Does Not Exist" in h["crmsync.error.message"], h
        w.stop()


def test_redis_outage_pauses_and_resumes():
    """Redis stopped mid-run: work pauses (not ready, nothing lost) and
    completes after Redis is back."""
    with Stack() as st:
        events, expected, cfg = base_stack(st, 2000, seed=3)
        w = st.start_worker("response", cfg)
        w.wait_ready(30)
        st.produce(TOPIC, events[:800])
        wait_records(st, 100)
        st.stop_redis()
        st.produce(TOPIC, events[800:])
        st.wait_for(lambda: w.metric("crmsync_partitions_paused") > 0,
                    timeout=30, what="partitions paused while redis is down")
        st.wait_for(lambda: w._get("/readyz")[0] == 503, timeout=30,
                    what="/readyz 503 while redis is down")
        time.sleep(2)
        during = len(responses(st))
        assert during < len(expected), "everything landed without redis?"
        assert w.alive, "worker died while redis was down"
        st.restart_redis()
        st.wait_lag_zero(GROUP, TOPIC, timeout=120)
        assert_exactly(st, expected)
        st.wait_for(lambda: w._get("/readyz")[0] == 200, timeout=30,
                    what="/readyz 200 after redis is back")
        assert w.metric("crmsync_messages_retried_total") > 0
        assert st.consume_all(DLQ) == [], "a blip must never dead-letter"
        w.stop()


def test_throttling_and_server_errors():
    """429 bursts with Retry-After and 5xx bursts: nothing lost, no request
    sent before Retry-After elapsed."""
    with Stack() as st:
        events, expected, cfg = base_stack(st, 1500, seed=4,
                                           **{"crm.batch_size": 50})
        st.dv_admin("POST", "/_admin/faults", {
            "script": [{"status": 429, "retry_after": 2, "count": 2},
                       {"status": 503, "count": 3},
                       {"status": 429, "retry_after": 1, "count": 1}],
            "throttle": {"requests_per_window": 15, "window_s": 3,
                         "retry_after_s": 1}})
        w = st.start_worker("response", cfg)
        w.wait_ready(30)
        st.produce(TOPIC, events)
        st.wait_lag_zero(GROUP, TOPIC, timeout=180)
        assert_exactly(st, expected)
        stats = st.dv_admin("GET", "/_admin/stats")
        assert stats["throttled_429"] >= 3, stats["throttled_429"]
        assert stats["early_requests"] == 0, (
            "requests sent before Retry-After: %d" % stats["early_requests"])
        assert w.metric("crmsync_crm_throttled_total") >= 1
        assert st.consume_all(DLQ) == []
        w.stop()


def test_crm_outage_pauses_and_resumes():
    """The CRM answers 503 to everything for a while: partitions pause,
    /readyz turns 503, nothing is dead-lettered; all lands afterwards."""
    with Stack() as st:
        events, expected, cfg = base_stack(st, 1500, seed=11)
        w = st.start_worker("response", cfg)
        w.wait_ready(30)
        st.produce(TOPIC, events[:500])
        wait_records(st, 50)
        st.dv_admin("POST", "/_admin/faults", {"error_rate": 1.0,
                                               "error_status": 503})
        st.produce(TOPIC, events[500:])
        st.wait_for(lambda: w.metric("crmsync_partitions_paused") > 0,
                    timeout=30, what="partitions paused while the CRM is down")
        st.wait_for(lambda: w._get("/readyz")[0] == 503, timeout=30,
                    what="/readyz 503 while the CRM is down")
        before = len(responses(st))
        time.sleep(3)
        assert len(responses(st)) == before, "writes during the outage?"
        st.dv_admin("DELETE", "/_admin/faults")
        st.wait_lag_zero(GROUP, TOPIC, timeout=180)
        assert_exactly(st, expected)
        assert st.consume_all(DLQ) == [], "an outage must never dead-letter"
        w.stop()


def test_token_expiry_and_revocation():
    """Short-lived tokens and tokens revoked mid-run (401): the connector
    refreshes and retries; nothing lost, nothing dead-lettered."""
    with Stack() as st:
        st.start_kafka()
        st.start_redis()
        events, expected = sample_response_events(2000, seed=8)
        st.start_dataverse(seed=seed_for_events(events), token_ttl=2)
        cfg = st.worker_config("response", {"consumer.batch_max_messages":
                                            100, "consumer.batch_max_ms": 50,
                                            "crm.batch_size": 50})
        w = st.start_worker("response", cfg)
        w.wait_ready(30)
        st.produce(TOPIC, events[:1000])
        wait_records(st, 200)
        st.dv_admin("POST", "/_admin/expire-tokens")
        time.sleep(2.5)
        st.produce(TOPIC, events[1000:])
        st.wait_lag_zero(GROUP, TOPIC, timeout=120)
        assert_exactly(st, expected)
        stats = st.dv_admin("GET", "/_admin/stats")
        assert stats["tokens_issued"] >= 2, stats["tokens_issued"]
        assert w.metric("crmsync_crm_token_refreshes_total") >= 2
        assert st.consume_all(DLQ) == []
        w.stop()


def test_sigkill_and_rebalance():
    """Two workers share the group; one is SIGKILLed mid-batch and later
    restarted: nothing lost, nothing duplicated."""
    with Stack() as st:
        events, expected, cfg = base_stack(st, 3000, seed=5,
                                           **{"crm.batch_size": 20})
        st.dv_admin("POST", "/_admin/faults", {"latency_ms": 40})
        a = st.start_worker("response", cfg)
        b = st.start_worker("response", st.worker_config("response", {
            "consumer.batch_max_messages": 200, "consumer.batch_max_ms": 50,
            "idem.lease_ms": 3000, "crm.batch_size": 20}))
        a.wait_ready(30)
        b.wait_ready(30)
        st.produce(TOPIC, events)
        wait_records(st, 300)
        a.kill()
        time.sleep(1)
        a2 = st.start_worker("response", cfg)
        st.dv_admin("DELETE", "/_admin/faults")
        st.wait_lag_zero(GROUP, TOPIC, timeout=180)
        assert_exactly(st, expected)
        a2.stop()
        b.stop()


def test_concurrent_batches_in_flight():
    """crm.max_in_flight=4 with small $batch chunks and CRM latency, in
    unique mode: several $batch requests overlap and still exactly the
    first reaction per type, recipient and mailing lands."""
    with Stack() as st:
        events, _, cfg = base_stack(
            st, 2000, seed=15, **{"crm.max_in_flight": 4,
                                  "crm.batch_size": 25,
                                  "response.mode": "unique"})
        st.dv_admin("POST", "/_admin/faults", {"latency_ms": 30})
        w = st.start_worker("response", cfg)
        w.wait_ready(30)
        st.produce(TOPIC, events)
        st.wait_lag_zero(GROUP, TOPIC, timeout=180)
        want = expected_unique(events)
        ids = event_ids_of(responses(st))
        assert len(ids) == len(set(ids)), "duplicate records"
        assert set(ids) == want, "%d records, want %d" % (len(ids),
                                                         len(want))
        assert st.consume_all(DLQ) == []
        w.stop()


def test_redis_wipe_and_replay():
    """Redis data wiped and every event replayed (new consumer group): the
    CRM's deterministic ids still prevent any duplicate."""
    with Stack() as st:
        events, expected, cfg = base_stack(st, 1000, seed=6)
        w = st.start_worker("response", cfg)
        w.wait_ready(30)
        st.produce(TOPIC, events)
        st.wait_lag_zero(GROUP, TOPIC, timeout=120)
        assert_exactly(st, expected)
        w.stop()
        st.flush_redis()
        cfg2 = st.worker_config("response", {
            "consumer.group_id": "crmsync-response-replay",
            "consumer.batch_max_ms": 50, "idem.lease_ms": 3000})
        w2 = st.start_worker("response", cfg2)
        st.wait_lag_zero("crmsync-response-replay", TOPIC, timeout=120)
        assert_exactly(st, expected)
        ok = w2.metric("crmsync_crm_operations_total", result="exists")
        assert ok >= len(expected), "replay should hit 412 exists: %s" % ok
        w2.stop()


def test_schema_evolution_v2_events():
    """Producers add an optional field (schema id 2): consumed unchanged."""
    with Stack() as st:
        events, expected, cfg = base_stack(st, 400, seed=7)
        for i, e in enumerate(events):
            if i % 2:
                e["__schema_id"] = 2
                e["device"] = "mobile"
        w = st.start_worker("response", cfg)
        w.wait_ready(30)
        st.produce(TOPIC, events)
        st.wait_lag_zero(GROUP, TOPIC, timeout=120)
        assert_exactly(st, expected)
        assert st.consume_all(DLQ) == []
        w.stop()


def test_schema_registry_writer_schemas():
    """Writer schemas fetched by id from a Schema Registry (v1 and v2
    producers mixed), each id fetched once and cached."""
    with Stack() as st:
        events, expected, _ = base_stack(st, 600, seed=12)
        url = st.start_schema_registry()
        for i, e in enumerate(events):
            if i % 3 == 0:
                e["__schema_id"] = 2
                e["device"] = "desktop"
        cfg = st.worker_config("response", {
            "avro.schema_registry_url": url, "consumer.batch_max_ms": 50})
        w = st.start_worker("response", cfg)
        w.wait_ready(30)
        st.produce(TOPIC, events)
        st.wait_lag_zero(GROUP, TOPIC, timeout=120)
        assert_exactly(st, expected)
        with urllib.request.urlopen(url + "/_admin/stats") as r:
            served = json.loads(r.read())["requests"]
        assert served == 2, "expected one fetch per schema id, got %d" % served
        w.stop()


def test_tls_verification_on_by_default():
    """A CRM with a self-signed certificate: by default the worker refuses
    it (pauses, not ready, nothing written, nothing dead-lettered); with
    crm.ca_file trusting that certificate everything lands."""
    with Stack() as st:
        st.start_kafka()
        st.start_redis()
        events, expected = sample_response_events(300, seed=13)
        st.start_dataverse(seed=seed_for_events(events), tls=True)
        assert st.dv_url.startswith("https://")
        strict = st.start_worker("response", st.worker_config(
            "response", {"consumer.batch_max_ms": 50,
                         "consumer.retry_backoff_max_ms": 1000}))
        st.produce(TOPIC, events)
        st.wait_for(lambda: strict.metric("crmsync_partitions_paused") > 0,
                    timeout=60, what="worker pausing on an untrusted cert")
        assert strict._get("/readyz")[0] == 503
        assert responses(st) == [], "wrote through an unverified TLS peer"
        assert any("certificate" in (ln.get("msg") or "").lower() or
                   "ssl" in (ln.get("msg") or "").lower()
                   for ln in strict.logs()), "no TLS error logged"
        assert strict.stop() == 0
        trusting = st.start_worker("response", st.worker_config(
            "response", {"consumer.batch_max_ms": 50,
                         "crm.ca_file": st.dv_ca}))
        # The strict worker released its leases when it stopped: the
        # next owner must not wait for them (idem.lease_ms is 30 s here).
        t = time.monotonic()
        st.wait_lag_zero(GROUP, TOPIC, timeout=120)
        assert time.monotonic() - t < 25, "blocked by abandoned leases"
        assert_exactly(st, expected)
        assert st.consume_all(DLQ) == []
        trusting.stop()


TESTS = [v for k, v in sorted(globals().items()) if k.startswith("test_")]


def main(argv):
    return run_scenarios(TESTS, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
