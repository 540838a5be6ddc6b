"""Integration tests of the bounce/opt-out worker (crmsync-bounce) against
the real local stack: mock Kafka cluster (3 brokers), redis-server, the
Dataverse emulator and the built binary. The spec is docs/bounce.md; every
scenario asserts effects: consent4 rows and opt-in history entries in the
emulator, bounce columns on contacts / accounts / leads, Redis state and
suppression sets, dead letters with their crmsync.error.* headers,
committed offsets (lag 0) and the worker's metrics.

The semantic scenarios (latest wins, duplicates, outbounce, thresholds,
reset, spam, suppression sets, bad input, metrics) share one stack and one
worker to keep the run short: each uses its own addresses (and therefore
its own Redis keys and CRM rows) and waits for lag 0 after every batch, so
they do not see each other. Per-tenant settings give each one the config
it needs (tenants: mapping). The robustness scenarios (Redis wipe +
replay, SIGKILL, CRM outage) each get a fresh stack.

Run: python3 tests/integration/test_bounce_worker.py [scenario ...]
"""
import datetime
import os
import re
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stack import (Stack, bounce_event, run_scenarios,  # noqa: E402
                   sample_bounce_events, split_series)

TOPIC = "crmsync.bounce.events"
DLQ = TOPIC + ".dlq"
GROUP = "crmsync-bounce"

# Dataverse option values (reference/dataverse.md, consent section)
EMAIL = 534120000           # msdynmkt_contactpointtype Email
PURPOSE = 534120000         # msdynmkt_contactpointconsenttype Purpose
TOPIC_TYPE = 534120001      # ... Topic
OPTED_IN = 534120001        # msdynmkt_value
OPTED_OUT = 534120002
COMMERCIAL = 534120000      # msdynmkt_type
TRANSACTIONAL = 534120001

# The consent catalog of every stack.
P_NEWS = "6a0e4c7e-0b1d-4c55-9f0a-000000000001"    # commercial purpose
P_OFFERS = "6a0e4c7e-0b1d-4c55-9f0a-000000000002"  # commercial purpose
P_TRX = "6a0e4c7e-0b1d-4c55-9f0a-000000000003"     # transactional purpose
T_WEEKLY = "6a0e4c7e-0b1d-4c55-9f0a-0000000000a1"  # topic of P_NEWS
H_NEWS = "7b1f5d8f-1c2e-4d66-8a1b-000000000001"    # advertising consents of
H_EVENTS = "7b1f5d8f-1c2e-4d66-8a1b-000000000002"  # tenant-h (history model)
H_FOREIGN = "7b1f5d8f-1c2e-4d66-8a1b-000000000009"  # ... of tenant-x

OLD = "2025-01-01T00:00:00Z"  # createdon / modifiedon of seeded records
SEC = 1000
MIN = 60 * SEC
HOUR = 60 * MIN
DAY = 24 * HOUR
NOW = int(time.time()) * 1000
T0 = NOW - 3 * DAY  # event times are realistic: in the recent past

# Per-tenant settings of the shared stack: tenant-c (and any other tenant)
# uses the defaults (cij, dlq, 3 hard / 5 soft in 30 days).
TENANTS = {
    "tenant-h": {"consent.model": "history"},
    "tenant-d": {"consent.set_donotbulkemail": True},
    "tenant-s": {"bounce.soft_threshold": 2},
    "tenant-l": {"recipient.not_found": "create-lead"},
    "tenant-k": {"consent.channel_consents": P_OFFERS},
}


def catalog_seed():
    return {
        "msdynmkt_purposes": [
            {"msdynmkt_purposeid": P_NEWS, "msdynmkt_name": "Newsletter",
             "msdynmkt_type": COMMERCIAL},
            {"msdynmkt_purposeid": P_OFFERS, "msdynmkt_name": "Offers",
             "msdynmkt_type": COMMERCIAL},
            {"msdynmkt_purposeid": P_TRX, "msdynmkt_name": "Invoices",
             "msdynmkt_type": TRANSACTIONAL},
        ],
        "msdynmkt_topics": [
            {"msdynmkt_topicid": T_WEEKLY, "msdynmkt_name": "Weekly digest",
             "msdynmkt_purposeId@odata.bind":
                 "/msdynmkt_purposes(%s)" % P_NEWS},
        ],
        "crmsync_advertisingconsents": [
            {"crmsync_advertisingconsentid": H_NEWS,
             "crmsync_name": "Newsletter", "crmsync_tenant": "tenant-h"},
            {"crmsync_advertisingconsentid": H_EVENTS,
             "crmsync_name": "Events", "crmsync_tenant": "tenant-h"},
            {"crmsync_advertisingconsentid": H_FOREIGN,
             "crmsync_name": "Other client", "crmsync_tenant": "tenant-x"},
        ],
    }


# -- helpers ---------------------------------------------------------------

def iso_ms(s):
    """ISO 8601 (Z or offset, optional fraction) -> ms since the epoch."""
    s = str(s).strip()
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    m = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", s)
    frac = 0
    if m:  # fromisoformat of python 3.9 takes only 3 or 6 digits
        frac = int(round(float(m.group(2) or "0") * 1000))
        s = m.group(1) + m.group(3)
    dt = datetime.datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return int(dt.timestamp()) * 1000 + frac


def iso(ms):
    return datetime.datetime.fromtimestamp(
        ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[
            :-3] + "Z"


class Ids:
    """Unique event ids per scenario."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.n = 0

    def __call__(self):
        self.n += 1
        return "%s-%03d-%s" % (self.prefix, self.n, uuid.uuid4().hex[:8])


def person(st, email, sets=("contacts",), **extra):
    """Seeds one record per entity set with emailaddress1 = email (old
    modifiedon); returns {set: id}."""
    out = {}
    for s in sets:
        rid = str(uuid.uuid4())
        pk = {"contacts": "contactid", "accounts": "accountid",
              "leads": "leadid"}[s]
        rec = {pk: rid, "emailaddress1": email, "createdon": OLD,
               "modifiedon": OLD}
        if s == "accounts":
            rec["name"] = "Account of %s" % email
        else:
            rec["firstname"] = "Test"
            rec["lastname"] = email.split("@")[0][:40]
        rec.update(extra)
        st.dv_admin("POST", "/_admin/records/" + s, rec)
        out[s] = rid
    return out


def record(st, set_name, rid):
    for r in st.dv_admin("GET", "/_admin/records/" + set_name):
        pk = {"contacts": "contactid", "accounts": "accountid",
              "leads": "leadid"}[set_name]
        if r.get(pk) == rid:
            return r
    raise AssertionError("%s(%s) is gone" % (set_name, rid))


def consent_rows(st, addr, purpose=None, topic=False):
    """consent4 rows of the contact point; purpose filters by purpose;
    topic: False = any, None = purpose rows only, id = that topic."""
    rows = st.dv_admin("GET", "/_admin/records/msdynmkt_contactpointconsent4s")
    out = []
    for r in rows:
        if (r.get("msdynmkt_contactpointvalue") or "").strip().lower() != \
                addr.strip().lower():
            continue
        if purpose and r.get("_msdynmkt_purposeid_value") != purpose:
            continue
        if topic is not False and r.get("_msdynmkt_topicid_value") != topic:
            continue
        out.append(r)
    return out


def stamp(row):
    """(event ms, kind) from the row's msdynmkt_reason stamp."""
    m = re.match(r"crmsync:t=([^;]+);k=([A-Z_]+)",
                 row.get("msdynmkt_reason") or "")
    assert m, "no crmsync stamp in msdynmkt_reason: %r" % row.get(
        "msdynmkt_reason")
    return iso_ms(m.group(1)), m.group(2)


def one_row(st, addr, purpose, topic=None):
    rows = consent_rows(st, addr, purpose, topic)
    assert len(rows) == 1, "%s/%s/%s: %d consent rows, want 1: %s" % (
        addr, purpose, topic, len(rows), rows)
    return rows[0]


def assert_consent(st, addr, purpose, value, t=None, topic=None):
    row = one_row(st, addr, purpose, topic)
    assert row.get("msdynmkt_value") == value, (
        "%s/%s: msdynmkt_value %s, want %s (%s)" % (
            addr, purpose, row.get("msdynmkt_value"), value,
            row.get("msdynmkt_reason")))
    assert row.get("msdynmkt_contactpointtype") == EMAIL, row
    assert row.get("msdynmkt_contactpointconsenttype") == (
        TOPIC_TYPE if topic else PURPOSE), row
    if t is not None:
        got = stamp(row)[0]
        assert got == t, "%s/%s: stamp t=%s, want %s" % (addr, purpose,
                                                         iso(got), iso(t))
    return row


def history(st, consent, rid, nav="contact"):
    rows = st.dv_admin("GET", "/_admin/records/crmsync_optinhistories")
    return [r for r in rows if r.get("_crmsync_consentid_value") == consent
            and r.get("_crmsync_%sid_value" % nav) == rid]


def history_state(entries):
    """(time, opted_out) of the deciding entry: newest by
    crmsync_occurredon, same time -> opt-out."""
    assert entries, "no history entries"
    best = max((iso_ms(e["crmsync_occurredon"]), e["crmsync_optin"] is False)
               for e in entries)
    return best


def assert_no_dup_history(entries):
    seen = {}
    for e in entries:
        k = (e.get("_crmsync_consentid_value"),
             e.get("_crmsync_contactid_value"),
             e.get("_crmsync_leadid_value"), e.get("_crmsync_accountid_value"),
             bool(e.get("crmsync_optin")), iso_ms(e["crmsync_occurredon"]))
        assert k not in seen, "duplicate history entry %s and %s" % (
            seen[k], e.get("crmsync_optinhistoryid"))
        seen[k] = e.get("crmsync_optinhistoryid")


def bounced(rec):
    return rec.get("crmsync_emailbounced") is True


def sismember(st, key, member):
    return st.redis("SISMEMBER", key, member) == 1


def suppressed(st, tenant, consent, addr):
    """The list-sync rule of docs/bounce.md."""
    return (sismember(st, "cs:sup:b", addr)
            or sismember(st, "cs:sup:x:" + tenant, addr)
            or sismember(st, "cs:sup:c:%s|%s" % (tenant, consent), addr))


def run(st, events, group=GROUP, timeout=60):
    """Produce events and wait until the worker committed them all."""
    st.produce(TOPIC, events, schema_id=3)
    st.wait_lag_zero(group, TOPIC, timeout=timeout)


def bounce_metric(w, kind=None, outcome=None):
    total = 0.0
    for series, value in w.metrics().items():
        fam, lab = split_series(series)
        if fam != "crmsync_bounce_events_total":
            continue
        if kind and lab.get("kind", "").lower() != kind.lower():
            continue
        if outcome and lab.get("outcome", "").lower() != outcome.lower():
            continue
        total += value
    return total


def dead_by_key(st, prefix):
    return [d for d in st.consume_all(DLQ)
            if isinstance(d["key"], str) and d["key"].startswith(prefix)]


# -- the shared stack -------------------------------------------------------

def worker_cfg(st, **extra):
    cfg = {"consumer.batch_max_messages": 200,
           "consumer.batch_max_ms": 50,
           "consumer.retry_backoff_max_ms": 2000,
           "tenants": TENANTS}
    cfg.update(extra)
    return st.worker_config("bounce", cfg)


def new_stack():
    st = Stack()
    st.__enter__()
    try:
        st.start_kafka()
        st.start_redis(password="redis-pw")
        st.start_dataverse(seed=catalog_seed())
    except BaseException:
        st.close()
        raise
    return st


class Shared:
    st = None
    w = None


def shared():
    """The stack of the semantic scenarios (started on first use; started
    again if its worker died in an earlier scenario)."""
    if Shared.st is not None and Shared.w.alive:
        return Shared.st, Shared.w
    close_shared()
    Shared.st = new_stack()
    Shared.w = Shared.st.start_worker("bounce", worker_cfg(Shared.st))
    Shared.w.wait_ready(30)
    return Shared.st, Shared.w


def close_shared():
    if Shared.st is not None:
        if Shared.w is not None and Shared.w.alive:
            try:
                Shared.w.stop()
            except AssertionError as e:
                sys.stderr.write("%s\n" % e)
        Shared.st.close()
    Shared.st = Shared.w = None


# -- semantic scenarios -----------------------------------------------------

def test_out_of_order_latest_wins():
    """Opt-out / opt-in pairs out of order resolve to the latest event
    time (cij: the consent4 row; history: the newest entry), also when the
    older event arrives second in a later batch; a same-time tie is an
    opt-out in both arrival orders; other consents stay untouched."""
    st, w = shared()
    nid = Ids("ooo")
    a = "ooo.cij@example.org"
    b = "ooo.hist@example.org"
    ties = ["ooo.tie%d@example.org" % i for i in range(4)]
    person(st, a)
    cb = person(st, b)["contacts"]
    tc = [person(st, x)["contacts"] for x in ties]
    X = T0 + 5 * HOUR

    def ev(tenant, t, kind, addr, consent, **kw):
        return bounce_event(nid(), tenant, t, kind, email=addr,
                            consent_id=consent, **kw)

    run(st, [
        ev("tenant-c", T0 + 2 * HOUR, "UNSUBSCRIBE", a, P_NEWS,
           source="LINK", reason="too many mails"),
        ev("tenant-c", T0 + 1 * HOUR, "RESUBSCRIBE", a, P_NEWS),
        ev("tenant-h", T0 + 2 * HOUR, "UNSUBSCRIBE", b, H_NEWS,
           source="LINK"),
        ev("tenant-h", T0 + 1 * HOUR, "RESUBSCRIBE", b, H_NEWS),
        ev("tenant-c", X, "UNSUBSCRIBE", ties[0], P_NEWS),
        ev("tenant-c", X, "RESUBSCRIBE", ties[1], P_NEWS),
        ev("tenant-h", X, "UNSUBSCRIBE", ties[2], H_NEWS),
        ev("tenant-h", X, "RESUBSCRIBE", ties[3], H_NEWS),
    ])
    row = assert_consent(st, a, P_NEWS, OPTED_OUT, T0 + 2 * HOUR)
    assert stamp(row)[1] == "UNSUBSCRIBE", row["msdynmkt_reason"]
    assert "too many mails" in row["msdynmkt_reason"]
    assert row.get("msdynmkt_source") == 534120001, row  # link
    assert row.get("_msdynmkt_purposeid_value") == P_NEWS
    assert history_state(history(st, H_NEWS, cb)) == (T0 + 2 * HOUR, True)

    # the older opt-in arrives again, second and in a later batch; the
    # tie partners arrive now
    run(st, [
        ev("tenant-c", T0 + 30 * MIN, "RESUBSCRIBE", a, P_NEWS),
        ev("tenant-h", T0 + 30 * MIN, "RESUBSCRIBE", b, H_NEWS),
        ev("tenant-c", X, "RESUBSCRIBE", ties[0], P_NEWS),
        ev("tenant-c", X, "UNSUBSCRIBE", ties[1], P_NEWS),
        ev("tenant-h", X, "RESUBSCRIBE", ties[2], H_NEWS),
        ev("tenant-h", X, "UNSUBSCRIBE", ties[3], H_NEWS),
    ])
    assert_consent(st, a, P_NEWS, OPTED_OUT, T0 + 2 * HOUR)
    hb = history(st, H_NEWS, cb)
    assert history_state(hb) == (T0 + 2 * HOUR, True), hb
    assert not [e for e in hb if iso_ms(e["crmsync_occurredon"]) ==
                T0 + 30 * MIN], "a stale opt-in was written: %s" % hb
    assert_no_dup_history(hb)
    for addr in ties[:2]:
        assert_consent(st, addr, P_NEWS, OPTED_OUT, X)
        assert sismember(st, "cs:sup:c:tenant-c|" + P_NEWS, addr), addr
    for addr, rid in zip(ties[2:], tc[2:]):
        entries = history(st, H_NEWS, rid)
        assert history_state(entries) == (X, True), (addr, entries)
        assert_no_dup_history(entries)
        assert sismember(st, "cs:sup:c:tenant-h|" + H_NEWS, addr), addr
    # the tie arriving opt-out first: the opt-in is not written at all
    assert not [e for e in history(st, H_NEWS, tc[2])
                if e["crmsync_optin"] is True], "tie: opt-in entry written"

    # a newer opt-in wins
    run(st, [ev("tenant-c", T0 + 3 * HOUR, "RESUBSCRIBE", a, P_NEWS,
                source="PREFERENCE_PAGE"),
             ev("tenant-h", T0 + 3 * HOUR, "RESUBSCRIBE", b, H_NEWS)])
    assert_consent(st, a, P_NEWS, OPTED_IN, T0 + 3 * HOUR)
    hb = history(st, H_NEWS, cb)
    assert history_state(hb) == (T0 + 3 * HOUR, False), hb
    assert_no_dup_history(hb)
    assert not sismember(st, "cs:sup:c:tenant-c|" + P_NEWS, a)
    st_hash = st.redis("HGET", "cs:bo:c:tenant-c|%s|%s" % (a, P_NEWS), "t")
    assert st_hash is not None and int(st_hash) == T0 + 3 * HOUR, st_hash
    ttl = st.redis("TTL", "cs:bo:c:tenant-c|%s|%s" % (a, P_NEWS))
    assert 0 < ttl <= 400 * 86400, "state hash TTL %s (state.ttl_days)" % ttl
    # other consents of the person stay as they are
    assert consent_rows(st, a, P_OFFERS) == []
    assert history(st, H_EVENTS, cb) == []


def test_duplicate_unsubscribes_one_entry():
    """The same unsubscribe twice (same batch and redelivered later) and
    re-reported with a new event id and the same time: one consent row,
    one history entry."""
    st, w = shared()
    nid = Ids("dup")
    a = "dup.cij@example.org"
    b = "dup.hist@example.org"
    person(st, a)
    cb = person(st, b)["contacts"]
    t = T0 + 7 * HOUR
    u_a = bounce_event(nid(), "tenant-c", t, "UNSUBSCRIBE", email=a,
                       consent_id=P_OFFERS, source="LIST_UNSUBSCRIBE_HEADER")
    u_b = bounce_event(nid(), "tenant-h", t, "UNSUBSCRIBE", email=b,
                       consent_id=H_EVENTS, source="LINK", reason="r")
    run(st, [u_a, u_b, u_a, u_b])
    run(st, [u_a, u_b])
    run(st, [dict(u_a, event_id=nid()), dict(u_b, event_id=nid())])
    row = assert_consent(st, a, P_OFFERS, OPTED_OUT, t)
    assert row.get("msdynmkt_source") == 534120007, row  # list-unsubscribe
    assert row.get("msdynmkt_logicalreason") == 534120007, row
    assert len(consent_rows(st, a)) == 1, consent_rows(st, a)
    entries = history(st, H_EVENTS, cb)
    assert len(entries) == 1, "history entries: %s" % entries
    e = entries[0]
    assert e["crmsync_optin"] is False, e
    assert iso_ms(e["crmsync_occurredon"]) == t, e
    assert e.get("crmsync_source") == "LINK", e
    mine = [x for x in st.dv_admin("GET",
                                   "/_admin/records/crmsync_optinhistories")
            if x.get("_crmsync_contactid_value") == cb]
    assert len(mine) == 1, mine


def test_outbounce_all_records_all_tenants():
    """An outbounce seen by tenant A marks every contact, account and lead
    with that address (status true, time = event time), fills cs:sup:b
    (which tenant B's list-sync consults); later bounces change nothing;
    an outbounce addressed by entity marks the address's other records."""
    st, w = shared()
    nid = Ids("ob")
    addr = "bounced.everywhere@example.org"
    p = person(st, addr, ("contacts", "accounts", "leads"))
    p2 = person(st, "Bounced.Everywhere@Example.org ".strip())  # 2nd contact
    other = person(st, "not.bounced@example.org",
                   ("contacts", "accounts", "leads"))
    t = T0 + 10 * HOUR
    assert not suppressed(st, "tenant-b", P_NEWS, addr)
    run(st, [bounce_event(nid(), "tenant-c", t, "OUTBOUNCE", email=addr,
                          scope="CHANNEL")])
    recs = [record(st, s, rid) for s, rid in p.items()]
    recs.append(record(st, "contacts", p2["contacts"]))
    for r in recs:
        assert bounced(r), "not marked bounced: %s" % r
        assert iso_ms(r["crmsync_emailbouncedon"]) == t, r
    for s, rid in other.items():
        assert not bounced(record(st, s, rid)), "unrelated record marked"
    assert sismember(st, "cs:sup:b", addr)
    assert suppressed(st, "tenant-b", P_NEWS, addr), "tenant B would add it"
    assert not suppressed(st, "tenant-b", P_NEWS, "not.bounced@example.org")
    # later bounces (another tenant) change nothing: No -> Yes only
    run(st, [bounce_event(nid(), "tenant-b", t + i * HOUR, "BOUNCE",
                          email=addr, bounce_type="HARD", smtp_status="5.1.1")
             for i in range(1, 4)])
    for s, rid in p.items():
        r = record(st, s, rid)
        assert bounced(r) and iso_ms(r["crmsync_emailbouncedon"]) == t, r
    # by entity (no email in the event): the lead's address is read and
    # every record with it is marked
    addr2 = "via.lead@example.org"
    q = person(st, addr2, ("leads", "contacts"))
    t2 = T0 + 11 * HOUR
    run(st, [bounce_event(nid(), "tenant-d", t2, "OUTBOUNCE",
                          entity_type="lead", entity_id=q["leads"],
                          scope="CHANNEL")])
    for s, rid in q.items():
        r = record(st, s, rid)
        assert bounced(r) and iso_ms(r["crmsync_emailbouncedon"]) == t2, r
    assert sismember(st, "cs:sup:b", addr2)


def test_bounce_thresholds_and_window():
    """5 soft bounces within the window outbounce (4 do not); 5 spread
    beyond window_days do not; 3 hard bounces do (the SMTP status decides
    the class); a tenant's soft_threshold override applies to it only."""
    st, w = shared()
    nid = Ids("thr")
    soft, spread, hard, over, ctrl, split = (
        "soft5@example.org", "spread5@example.org", "hard3@example.org",
        "override2@example.org", "control2@example.org",
        "split3x2@example.org")
    ids = {a: person(st, a)["contacts"]
           for a in (soft, spread, hard, over, ctrl, split)}
    base = NOW - 5 * DAY

    def b(tenant, t, addr, btype=None, smtp=None):
        return bounce_event(nid(), tenant, t, "BOUNCE", email=addr,
                            scope="CHANNEL", bounce_type=btype,
                            smtp_status=smtp, mailing_id="M-1")

    sbase = NOW - 40 * DAY
    run(st, [b("tenant-c", base + i * 12 * HOUR, soft, "SOFT", "4.2.2")
             for i in range(4)]
        + [b("tenant-c", sbase + int(i * 8.5 * DAY), spread, "SOFT", "4.4.1")
           for i in range(5)]
        + [b("tenant-c", base, hard, None, "5.1.1"),
           b("tenant-c", base + HOUR, hard, "HARD", None),
           # the status decides: a 4.x.x is soft whatever bounce_type says
           b("tenant-c", base + 2 * HOUR, hard, "HARD", "4.2.2")]
        + [b("tenant-s", base + i * HOUR, over, "SOFT", "4.2.1")
           for i in range(2)]
        + [b("tenant-c", base + i * HOUR, ctrl, "SOFT", "4.2.1")
           for i in range(2)]
        # counters are per tenant: 3 + 3 soft from two tenants is not 5
        + [b(tn, base + i * HOUR, split, "SOFT", "4.2.1")
           for tn in ("tenant-c", "tenant-b") for i in range(3)])
    for a in (soft, spread, hard, ctrl, split):
        assert not bounced(record(st, "contacts", ids[a])), a
        assert not sismember(st, "cs:sup:b", a), a
    assert st.redis("ZCARD", "cs:bo:n:tenant-c|%s|s" % soft) == 4
    ttl = st.redis("TTL", "cs:bo:n:tenant-c|%s|s" % soft)
    assert ttl > 0, "bounce counter without TTL: %s" % ttl
    r = record(st, "contacts", ids[over])
    assert bounced(r), "tenant-s soft_threshold 2 not applied: %s" % r
    assert iso_ms(r["crmsync_emailbouncedon"]) == base + HOUR, r
    assert sismember(st, "cs:sup:b", over)
    # the 5th soft bounce, the 3rd hard one
    run(st, [b("tenant-c", base + 4 * 12 * HOUR, soft, "SOFT", "4.2.2"),
             b("tenant-c", base + 3 * HOUR, hard, None, "5.1.2")])
    r = record(st, "contacts", ids[soft])
    assert bounced(r), "5 soft bounces did not outbounce"
    assert iso_ms(r["crmsync_emailbouncedon"]) == base + 48 * HOUR, r
    r = record(st, "contacts", ids[hard])
    assert bounced(r), "3 hard bounces did not outbounce"
    assert iso_ms(r["crmsync_emailbouncedon"]) == base + 3 * HOUR, r
    assert not bounced(record(st, "contacts", ids[spread]))
    assert not bounced(record(st, "contacts", ids[ctrl]))
    assert sismember(st, "cs:sup:b", soft) and sismember(st, "cs:sup:b", hard)
    assert not sismember(st, "cs:sup:b", spread)


def test_bounce_reset():
    """BOUNCE_RESET with a later time clears the status; an older reset
    does not undo a newer outbounce; bounces up to the reset stop
    counting (also one arriving after the reset)."""
    st, w = shared()
    nid = Ids("rst")
    r1, r2 = "reset1@example.org", "reset2@example.org"
    c1 = person(st, r1, ("contacts", "leads"))
    c2 = person(st, r2)["contacts"]
    t = T0 + 12 * HOUR

    def ev(time_ms, kind, addr, **kw):
        return bounce_event(nid(), "tenant-c", time_ms, kind, email=addr,
                            scope="CHANNEL", **kw)

    run(st, [ev(t, "OUTBOUNCE", r1)])
    assert bounced(record(st, "contacts", c1["contacts"]))
    run(st, [ev(t + HOUR, "BOUNCE_RESET", r1, reason="address corrected")])
    for s, rid in c1.items():
        rec = record(st, s, rid)
        assert rec.get("crmsync_emailbounced") is False, rec
        assert iso_ms(rec["crmsync_emailbouncedon"]) == t + HOUR, rec
    assert not sismember(st, "cs:sup:b", r1)
    run(st, [ev(t + 3 * HOUR, "OUTBOUNCE", r1)])
    run(st, [ev(t + 2 * HOUR, "BOUNCE_RESET", r1)])  # older than outbounce
    for s, rid in c1.items():
        rec = record(st, s, rid)
        assert bounced(rec), "an older reset undid a newer outbounce: %s" % rec
        assert iso_ms(rec["crmsync_emailbouncedon"]) == t + 3 * HOUR, rec
    assert sismember(st, "cs:sup:b", r1)

    def hb(time_ms):
        return ev(time_ms, "BOUNCE", r2, bounce_type="HARD",
                  smtp_status="5.1.1")

    run(st, [hb(t), hb(t + HOUR), ev(t + 2 * HOUR, "BOUNCE_RESET", r2),
             hb(t + 3 * HOUR)])
    assert not bounced(record(st, "contacts", c2))
    run(st, [hb(t + 90 * MIN)])  # before the reset, arriving after it
    assert not bounced(record(st, "contacts", c2)), (
        "a bounce older than the reset was counted")
    run(st, [hb(t + 4 * HOUR)])
    assert not bounced(record(st, "contacts", c2)), (
        "bounces before the reset still count")
    run(st, [hb(t + 5 * HOUR)])
    rec = record(st, "contacts", c2)
    assert bounced(rec), "3 hard bounces after the reset: no outbounce"
    assert iso_ms(rec["crmsync_emailbouncedon"]) == t + 5 * HOUR, rec


def test_spam_complaint_and_donotbulkemail():
    """A spam complaint opts out of every commercial purpose (the
    transactional one untouched) and fills cs:sup:x:<tenant>; with
    consent.set_donotbulkemail the contact gets donotbulkemail, a later
    resubscribe clears it (that consent only back in); a client-wide
    unsubscribe does the same, a single-consent one never touches it."""
    st, w = shared()
    nid = Ids("spam")
    sp1, sp2, sp3, sp4 = ("spam1@example.org", "spam2@example.org",
                          "chan3@example.org", "single4@example.org")
    sp5 = "spam5.consent.scope@example.org"
    person(st, sp5)
    c1 = person(st, sp1)["contacts"]
    c2 = person(st, sp2)["contacts"]
    c3 = person(st, sp3)["contacts"]
    c4 = person(st, sp4)["contacts"]
    trx_id = str(uuid.uuid4())
    st.dv_admin("POST", "/_admin/records/msdynmkt_contactpointconsent4s", {
        "msdynmkt_contactpointconsent4id": trx_id,
        "msdynmkt_contactpointvalue": sp1, "msdynmkt_contactpointtype": EMAIL,
        "msdynmkt_contactpointconsenttype": PURPOSE,
        "msdynmkt_purposeId@odata.bind": "/msdynmkt_purposes(%s)" % P_TRX,
        "msdynmkt_value": OPTED_IN, "msdynmkt_reason": "signed the contract",
        "createdon": OLD, "modifiedon": OLD})
    trx_before = one_row(st, sp1, P_TRX)
    t = T0 + 14 * HOUR
    run(st, [
        bounce_event(nid(), "tenant-c", t, "SPAM_COMPLAINT", email=sp1,
                     scope="CHANNEL", source="FEEDBACK_LOOP"),
        bounce_event(nid(), "tenant-d", t, "SPAM_COMPLAINT", email=sp2,
                     scope="CHANNEL", source="FEEDBACK_LOOP"),
        bounce_event(nid(), "tenant-d", t, "UNSUBSCRIBE", email=sp3,
                     scope="CHANNEL", source="LINK"),
        bounce_event(nid(), "tenant-d", t, "UNSUBSCRIBE", email=sp4,
                     consent_id=P_NEWS, source="LINK"),
        # a complaint is client-wide whatever its scope says
        bounce_event(nid(), "tenant-c", t, "SPAM_COMPLAINT", email=sp5,
                     consent_id=P_OFFERS, source="FEEDBACK_LOOP"),
    ])
    assert sismember(st, "cs:sup:x:tenant-c", sp5)
    for addr in (sp1, sp2, sp3, sp5):
        for p in (P_NEWS, P_OFFERS):
            assert_consent(st, addr, p, OPTED_OUT, t)
    trx_after = one_row(st, sp1, P_TRX)
    assert trx_after.get("versionnumber") == trx_before.get(
        "versionnumber") and trx_after.get("msdynmkt_value") == OPTED_IN, (
        "transactional purpose touched: %s" % trx_after)
    assert consent_rows(st, sp2, P_TRX) == [], "transactional row created"
    assert sismember(st, "cs:sup:x:tenant-c", sp1)
    assert sismember(st, "cs:sup:x:tenant-d", sp2)
    assert sismember(st, "cs:sup:x:tenant-d", sp3)
    assert not sismember(st, "cs:sup:x:tenant-d", sp4)
    assert not sismember(st, "cs:sup:x:tenant-c", sp2)
    assert record(st, "contacts", c1).get("donotbulkemail") is not True, (
        "donotbulkemail set without consent.set_donotbulkemail")
    assert record(st, "contacts", c2).get("donotbulkemail") is True
    assert record(st, "contacts", c3).get("donotbulkemail") is True
    assert record(st, "contacts", c4).get("donotbulkemail") is not True, (
        "a single-consent opt-out set donotbulkemail")
    assert_consent(st, sp4, P_NEWS, OPTED_OUT, t)
    assert consent_rows(st, sp4, P_OFFERS) == []
    # a later resubscribe to one consent clears the channel opt-out
    run(st, [bounce_event(nid(), "tenant-d", t + HOUR, "RESUBSCRIBE",
                          email=sp2, consent_id=P_NEWS,
                          source="PREFERENCE_PAGE")])
    assert record(st, "contacts", c2).get("donotbulkemail") is False, (
        record(st, "contacts", c2))
    assert not sismember(st, "cs:sup:x:tenant-d", sp2)
    assert_consent(st, sp2, P_NEWS, OPTED_IN, t + HOUR)
    assert_consent(st, sp2, P_OFFERS, OPTED_OUT, t)


def test_suppression_sets():
    """cs:sup:c:<tenant>|<consent> gets the (normalised) address on an
    opt-out and loses it on a newer resubscribe, not on an older one; a
    topic opt-out has its own set and row."""
    st, w = shared()
    nid = Ids("sup")
    addr = "su1.mixed@example.org"
    person(st, addr)
    hb = "su2.hist@example.org"
    person(st, hb)
    key = "cs:sup:c:tenant-c|" + P_NEWS
    t = T0 + 16 * HOUR
    run(st, [bounce_event(nid(), "tenant-c", t, "UNSUBSCRIBE",
                          email="  SU1.Mixed@Example.ORG ",
                          consent_id=P_NEWS, source="LINK"),
             bounce_event(nid(), "tenant-h", t, "UNSUBSCRIBE", email=hb,
                          consent_id=H_EVENTS, source="LINK")])
    assert sismember(st, key, addr), st.redis("SMEMBERS", key)
    assert not sismember(st, "cs:sup:c:tenant-c|" + P_OFFERS, addr)
    assert not sismember(st, "cs:sup:x:tenant-c", addr)
    assert sismember(st, "cs:sup:c:tenant-h|" + H_EVENTS, hb)
    assert suppressed(st, "tenant-c", P_NEWS, addr)
    assert not suppressed(st, "tenant-c", P_OFFERS, addr)
    row = assert_consent(st, addr, P_NEWS, OPTED_OUT, t)
    assert row["msdynmkt_contactpointvalue"] == addr, row
    run(st, [bounce_event(nid(), "tenant-c", t + HOUR, "RESUBSCRIBE",
                          email=addr, consent_id=P_NEWS)])
    assert not sismember(st, key, addr), "newer resubscribe: still listed"
    run(st, [bounce_event(nid(), "tenant-c", t - HOUR, "UNSUBSCRIBE",
                          email=addr, consent_id=P_NEWS)])
    assert not sismember(st, key, addr), "a stale opt-out re-listed it"
    assert_consent(st, addr, P_NEWS, OPTED_IN, t + HOUR)
    # topic
    run(st, [bounce_event(nid(), "tenant-c", t + 2 * HOUR, "UNSUBSCRIBE",
                          email=addr, consent_id=P_NEWS, topic_id=T_WEEKLY)])
    tkey = "cs:sup:c:tenant-c|%s/%s" % (P_NEWS, T_WEEKLY)
    assert sismember(st, tkey, addr), st.redis("KEYS", "cs:sup:c:*")
    assert not sismember(st, key, addr)
    assert_consent(st, addr, P_NEWS, OPTED_OUT, t + 2 * HOUR, topic=T_WEEKLY)
    assert_consent(st, addr, P_NEWS, OPTED_IN, t + HOUR)  # purpose row


def test_recipients_and_channel_scope():
    """Recipient rules: entity without email reads emailaddress1; email
    only matches contacts, then accounts, then leads, and all records of
    the first matching type are recipients (history entries per record);
    a client-wide opt-out in the history model covers every consent of the
    tenant only; consent.channel_consents limits a channel opt-out."""
    st, w = shared()
    nid = Ids("rcp")
    t = T0 + 24 * HOUR
    by_entity = "by.entity@example.org"
    ce = person(st, by_entity)["contacts"]
    acc_only = "account.only@example.org"
    ao = person(st, acc_only, ("accounts",))["accounts"]
    c_and_l = "contact.and.lead@example.org"
    cl = person(st, c_and_l, ("contacts", "leads"))
    shared_addr = "two.contacts@example.org"
    s1 = person(st, shared_addr)["contacts"]
    s2 = person(st, shared_addr)["contacts"]
    spam_h = "spam.hist@example.org"
    sh = person(st, spam_h)["contacts"]
    chan_k = "channel.k@example.org"
    person(st, chan_k)
    run(st, [
        bounce_event(nid(), "tenant-c", t, "UNSUBSCRIBE",
                     entity_type="contact", entity_id=ce, consent_id=P_NEWS),
        bounce_event(nid(), "tenant-h", t, "UNSUBSCRIBE", email=acc_only,
                     consent_id=H_NEWS),
        bounce_event(nid(), "tenant-h", t, "UNSUBSCRIBE", email=c_and_l,
                     consent_id=H_NEWS),
        bounce_event(nid(), "tenant-h", t, "UNSUBSCRIBE", email=shared_addr,
                     consent_id=H_NEWS),
        bounce_event(nid(), "tenant-h", t, "SPAM_COMPLAINT", email=spam_h,
                     scope="CHANNEL", source="FEEDBACK_LOOP"),
        bounce_event(nid(), "tenant-k", t, "UNSUBSCRIBE", email=chan_k,
                     scope="CHANNEL", source="LINK"),
    ])
    assert_consent(st, by_entity, P_NEWS, OPTED_OUT, t)
    assert sismember(st, "cs:sup:c:tenant-c|" + P_NEWS, by_entity)
    e = history(st, H_NEWS, ao, nav="account")
    assert len(e) == 1 and history_state(e) == (t, True), (
        "account-only address: %s" % e)
    e = history(st, H_NEWS, cl["contacts"])
    assert len(e) == 1 and history_state(e) == (t, True), e
    assert history(st, H_NEWS, cl["leads"], nav="lead") == [], (
        "the lead got an entry although a contact has the address")
    for rid in (s1, s2):
        e = history(st, H_NEWS, rid)
        assert len(e) == 1 and history_state(e) == (t, True), (
            "contact %s sharing the address: %s" % (rid, e))
    for c in (H_NEWS, H_EVENTS):
        e = history(st, c, sh)
        assert len(e) == 1 and history_state(e) == (t, True), (c, e)
    assert history(st, H_FOREIGN, sh) == [], "another tenant's consent"
    assert sismember(st, "cs:sup:x:tenant-h", spam_h)
    assert_consent(st, chan_k, P_OFFERS, OPTED_OUT, t)
    assert consent_rows(st, chan_k, P_NEWS) == [], (
        "consent.channel_consents ignored: %s" % consent_rows(st, chan_k))
    assert sismember(st, "cs:sup:x:tenant-k", chan_k)


def test_crm_newer_rows_are_kept():
    """Rows written in the CRM itself (no crmsync stamp) count with their
    modifiedon: a late ESP event older than that changes nothing
    (crm_newer); an event newer than it updates that same row (no second
    row)."""
    st, w = shared()
    nid = Ids("crm")
    addr = "crm.newer@example.org"
    person(st, addr)
    rows = {}
    for p, modified in ((P_NEWS, iso(NOW - HOUR)), (P_OFFERS, OLD)):
        rid = str(uuid.uuid4())
        st.dv_admin("POST", "/_admin/records/msdynmkt_contactpointconsent4s", {
            "msdynmkt_contactpointconsent4id": rid,
            "msdynmkt_contactpointvalue": addr,
            "msdynmkt_contactpointtype": EMAIL,
            "msdynmkt_contactpointconsenttype": PURPOSE,
            "msdynmkt_purposeId@odata.bind": "/msdynmkt_purposes(%s)" % p,
            "msdynmkt_value": OPTED_IN, "msdynmkt_source": 534120004,
            "msdynmkt_reason": "preference centre", "createdon": OLD,
            "modifiedon": modified})
        rows[p] = rid
    before = bounce_metric(w, "UNSUBSCRIBE", "crm_newer")
    t = T0 + 23 * HOUR
    run(st, [bounce_event(nid(), "tenant-c", t, "UNSUBSCRIBE", email=addr,
                          consent_id=p, source="LINK")
             for p in (P_NEWS, P_OFFERS)])
    news = one_row(st, addr, P_NEWS)
    assert news["msdynmkt_contactpointconsent4id"] == rows[P_NEWS]
    assert news.get("msdynmkt_value") == OPTED_IN and news.get(
        "msdynmkt_reason") == "preference centre", (
        "a late event overwrote a newer CRM change: %s" % news)
    offers = assert_consent(st, addr, P_OFFERS, OPTED_OUT, t)
    assert offers["msdynmkt_contactpointconsent4id"] == rows[P_OFFERS], (
        "a second row instead of updating the existing one")
    assert bounce_metric(w, "UNSUBSCRIBE", "crm_newer") - before == 1


def test_bad_input_dead_letters():
    """Invalid events are dead-lettered with the reason prefix of
    docs/bounce.md and write nothing; the good ones around them land."""
    st, w = shared()
    nid = Ids("bad")
    good = "bad.neighbour@example.org"
    person(st, good)
    noemail = str(uuid.uuid4())
    st.dv_admin("POST", "/_admin/records/contacts", {
        "contactid": noemail, "createdon": OLD, "modifiedon": OLD,
        "lastname": "No mail"})
    known = "bad.known@example.org"
    person(st, known)
    t = T0 + 18 * HOUR
    cases = [
        ("invalid-email", dict(email="no-at-sign.example.org",
                               consent_id=P_NEWS)),
        ("invalid-email", dict(email="two@@example.org", consent_id=P_NEWS)),
        ("invalid-email", dict(email="with space@example.org",
                               consent_id=P_NEWS)),
        ("missing-timestamp", dict(email=known, consent_id=P_NEWS, t=0)),
        ("missing-consent", dict(email=known)),
        ("missing-consent", dict(email=known, kind="RESUBSCRIBE",
                                 scope="CHANNEL")),
        ("unknown-consent", dict(email=known, consent_id=str(uuid.uuid4()))),
        ("unknown-consent", dict(email=known, consent_id=P_NEWS,
                                 topic_id=str(uuid.uuid4()))),
        ("unknown-consent", dict(email=known, consent_id=H_FOREIGN,
                                 tenant="tenant-h")),
        ("invalid-bounce", dict(email=known, kind="BOUNCE", scope="CHANNEL",
                                smtp_status="2.0.0")),
        ("invalid-bounce", dict(email=known, kind="BOUNCE", scope="CHANNEL",
                                smtp_status="bounced!")),
        ("invalid-bounce", dict(email=known, kind="BOUNCE", scope="CHANNEL")),
        ("recipient-not-found", dict(email="nobody.here@example.org",
                                     consent_id=P_NEWS)),
        ("recipient-without-email", dict(entity_type="contact",
                                         entity_id=noemail,
                                         consent_id=P_NEWS)),
    ]
    events = []
    want = {}
    for i, (reason, spec) in enumerate(cases):
        spec = dict(spec)
        k = "badkey-%02d" % i
        want[k] = reason
        events.append(bounce_event(
            nid(), spec.pop("tenant", "tenant-c"), spec.pop("t", t + i * SEC),
            spec.pop("kind", "UNSUBSCRIBE"),
            scope=spec.pop("scope", "CONSENT"),
            key=k, **spec))
        if i == 6:
            events.append(bounce_event(nid(), "tenant-c", t, "UNSUBSCRIBE",
                                       email=good, consent_id=P_NEWS))
    run(st, events)
    dead = dead_by_key(st, "badkey-")
    got = {d["key"]: d for d in dead}
    assert len(dead) == len(cases), "dead letters %d, want %d: %s" % (
        len(dead), len(cases), sorted(got))
    for k, reason in want.items():
        h = got[k]["headers"]
        msg = h.get("crmsync.error.message") or ""
        assert msg.startswith(reason), "%s: reason %r, want %s..." % (
            k, msg, reason)
        assert h.get("crmsync.error.topic") == TOPIC, h
        assert h.get("crmsync.error.worker") == "bounce", h
        assert int(h["crmsync.error.offset"]) >= 0, h
        assert h.get("crmsync.error.class"), h
    assert consent_rows(st, known) == [], "a rejected event wrote a row"
    assert consent_rows(st, "nobody.here@example.org") == []
    assert not [r for r in st.dv_admin("GET", "/_admin/records/leads")
                if r.get("emailaddress1") == "nobody.here@example.org"]
    assert_consent(st, good, P_NEWS, OPTED_OUT, t)
    assert w.alive


def test_not_found_creates_one_lead():
    """recipient.not_found=create-lead (tenant-l): repeated events for an
    unknown address create exactly one lead, which carries the change."""
    st, w = shared()
    nid = Ids("lead")
    addr = "brand.new.lead@example.org"
    t = T0 + 20 * HOUR
    u = bounce_event(nid(), "tenant-l", t, "UNSUBSCRIBE", email=addr,
                     consent_id=P_NEWS, source="LINK")
    run(st, [u, bounce_event(nid(), "tenant-l", t + MIN, "UNSUBSCRIBE",
                             email=addr, consent_id=P_OFFERS), u])
    run(st, [u, bounce_event(nid(), "tenant-l", t + 2 * MIN, "RESUBSCRIBE",
                             email=addr.upper(), consent_id=P_OFFERS)])
    leads = [r for r in st.dv_admin("GET", "/_admin/records/leads")
             if (r.get("emailaddress1") or "").lower() == addr]
    assert len(leads) == 1, "leads for the address: %d" % len(leads)
    assert_consent(st, addr, P_NEWS, OPTED_OUT, t)
    assert_consent(st, addr, P_OFFERS, OPTED_IN, t + 2 * MIN)
    assert not dead_by_key(st, addr), "create-lead tenant dead-lettered"


def test_metrics_outcomes():
    """crmsync_bounce_events_total{kind,outcome}: applied, duplicate and
    stale counted per event; crmsync_bounce_outbounces_total{cause}."""
    st, w = shared()
    nid = Ids("met")
    addr = "metrics@example.org"
    person(st, addr)
    t = T0 + 22 * HOUR
    before = {(k, o): bounce_metric(w, k, o)
              for k in ("UNSUBSCRIBE", "RESUBSCRIBE")
              for o in ("applied", "duplicate", "stale")}
    ob_before = w.metric("crmsync_bounce_outbounces_total", cause="event")
    u = bounce_event(nid(), "tenant-c", t, "UNSUBSCRIBE", email=addr,
                     consent_id=P_NEWS)
    run(st, [u])                                     # applied
    run(st, [u])                                     # redelivered
    run(st, [dict(u, event_id=nid())])               # re-reported
    run(st, [bounce_event(nid(), "tenant-c", t + HOUR, "RESUBSCRIBE",
                          email=addr, consent_id=P_NEWS)])  # applied
    # an opt-out of that one consent, older than the opt-in: stale (a
    # CONSENT-scope unsubscribe has no other effect that could apply)
    run(st, [bounce_event(nid(), "tenant-c", t + 30 * MIN, "UNSUBSCRIBE",
                          email=addr, consent_id=P_NEWS)])

    def delta(k, o):
        return bounce_metric(w, k, o) - before[(k, o)]

    got = {(k, o): delta(k, o) for (k, o) in before}
    want = {("UNSUBSCRIBE", "applied"): 1, ("UNSUBSCRIBE", "duplicate"): 2,
            ("UNSUBSCRIBE", "stale"): 1, ("RESUBSCRIBE", "applied"): 1,
            ("RESUBSCRIBE", "duplicate"): 0, ("RESUBSCRIBE", "stale"): 0}
    assert got == want, "metric deltas %s, want %s" % (got, want)
    assert w.metric("crmsync_bounce_crm_writes_total", target="consent") >= 2
    assert_consent(st, addr, P_NEWS, OPTED_IN, t + HOUR)
    run(st, [bounce_event(nid(), "tenant-c", t, "OUTBOUNCE", email=addr,
                          scope="CHANNEL")])
    got = w.metric("crmsync_bounce_outbounces_total", cause="event")
    assert got - ob_before == 1, "outbounces{cause=event} +%s" % (
        got - ob_before)


# -- robustness scenarios (own stacks) --------------------------------------

WL_TENANTS = {"tenant-c": [P_NEWS, P_OFFERS], "tenant-h": [H_NEWS, H_EVENTS]}


def workload(st, n=30, seed=1, per_key=4):
    addrs = ["wl%02d.s%d@example.org" % (i, seed) for i in range(n)]
    ids = {a: person(st, a)["contacts"] for a in addrs}
    events, expected = sample_bounce_events(addrs, WL_TENANTS,
                                            per_key=per_key, seed=seed,
                                            start_ms=NOW - 12 * DAY)
    return events, expected, ids


def verify_workload(st, expected, ids):
    """The CRM holds exactly the latest state of every key, no duplicate
    rows or entries."""
    rows = st.dv_admin("GET", "/_admin/records/msdynmkt_contactpointconsent4s")
    by = {}
    for r in rows:
        k = (r.get("msdynmkt_contactpointvalue", "").lower(),
             r.get("_msdynmkt_purposeid_value"),
             r.get("_msdynmkt_topicid_value"))
        by.setdefault(k, []).append(r)
    entries = st.dv_admin("GET", "/_admin/records/crmsync_optinhistories")
    assert_no_dup_history(entries)
    hist = {}
    for e in entries:
        hist.setdefault((e.get("_crmsync_consentid_value"),
                         e.get("_crmsync_contactid_value")), []).append(e)
    bad = []
    for (tenant, addr, consent), (t, out) in sorted(expected["consent"]
                                                    .items()):
        if tenant == "tenant-h":
            got = history_state(hist.get((consent, ids[addr]), []) or
                                [{"crmsync_occurredon": iso(0),
                                  "crmsync_optin": None}])
            if got != (t, out):
                bad.append("%s %s: history %s, want %s" % (
                    addr, consent, (iso(got[0]), got[1]), (iso(t), out)))
            continue
        rs = by.get((addr, consent, None), [])
        if len(rs) != 1:
            bad.append("%s %s: %d rows" % (addr, consent, len(rs)))
            continue
        want_v = OPTED_OUT if out else OPTED_IN
        if rs[0].get("msdynmkt_value") != want_v or stamp(rs[0])[0] != t:
            bad.append("%s %s: value %s stamp %s, want %s at %s" % (
                addr, consent, rs[0].get("msdynmkt_value"),
                iso(stamp(rs[0])[0]), want_v, iso(t)))
    contacts = {r["contactid"]: r
                for r in st.dv_admin("GET", "/_admin/records/contacts")}
    for addr, (t, is_b) in sorted(expected["bounce"].items()):
        rec = contacts[ids[addr]]
        if bounced(rec) != is_b:
            bad.append("%s: bounced %s, want %s (latest at %s)" % (
                addr, rec.get("crmsync_emailbounced"), is_b, iso(t)))
        sup = sismember(st, "cs:sup:b", addr)
        if sup != is_b:
            bad.append("%s: in cs:sup:b %s, want %s" % (addr, sup, is_b))
    for (tenant, addr, consent), (t, out) in expected["consent"].items():
        if sismember(st, "cs:sup:c:%s|%s" % (tenant, consent), addr) != out:
            bad.append("%s %s %s: suppression set != %s" % (
                tenant, addr, consent, out))
    assert not bad, "%d wrong keys:\n  %s" % (len(bad), "\n  ".join(
        bad[:25]))
    return rows, entries


def test_redis_wipe_and_replay():
    """The whole stream processed, Redis wiped, everything replayed from
    the beginning by a new consumer group: no consent row rewritten, no
    second history entry, no second created lead, final state unchanged."""
    st = new_stack()
    try:
        events, expected, ids = workload(st, n=30, seed=9)
        nid = Ids("rpl")
        lead_addr = "replay.lead@example.org"
        extra = [bounce_event(nid(), "tenant-l", NOW - 2 * DAY + i * MIN,
                              "UNSUBSCRIBE", email=lead_addr,
                              consent_id=P_NEWS) for i in range(3)]
        w = st.start_worker("bounce", worker_cfg(st))
        w.wait_ready(30)
        run(st, events + extra, timeout=120)
        rows, entries = verify_workload(st, expected, ids)
        assert st.consume_all(DLQ) == [], "dead letters in a clean stream"
        w.stop()
        st.flush_redis()
        w2 = st.start_worker("bounce", worker_cfg(
            st, **{"consumer.group_id": "crmsync-bounce-replay"}))
        w2.wait_ready(30)
        st.wait_lag_zero("crmsync-bounce-replay", TOPIC, timeout=120)
        rows2, entries2 = verify_workload(st, expected, ids)
        v1 = {r["msdynmkt_contactpointconsent4id"]: r.get("versionnumber")
              for r in rows}
        v2 = {r["msdynmkt_contactpointconsent4id"]: r.get("versionnumber")
              for r in rows2}
        changed = [k for k in v1 if v2.get(k) != v1[k]]
        assert set(v1) == set(v2) and not changed, (
            "replay rewrote %d consent rows, %d new" % (
                len(changed), len(set(v2) - set(v1))))
        assert sorted(e["crmsync_optinhistoryid"] for e in entries) == \
            sorted(e["crmsync_optinhistoryid"] for e in entries2), (
            "history entries %d -> %d" % (len(entries), len(entries2)))
        leads = [r for r in st.dv_admin("GET", "/_admin/records/leads")
                 if r.get("emailaddress1") == lead_addr]
        assert len(leads) == 1, "created leads after replay: %d" % len(leads)
        assert st.consume_all(DLQ) == []
        w2.stop()
    finally:
        st.close()


def test_sigkill_and_second_worker():
    """Two workers in the group, one SIGKILLed mid-stream and restarted:
    the final CRM state is the latest per key, without duplicates."""
    st = new_stack()
    try:
        events, expected, ids = workload(st, n=40, seed=10)
        st.dv_admin("POST", "/_admin/faults", {"latency_ms": 40})
        cfg = worker_cfg(st, **{"consumer.batch_max_messages": 20,
                                "crm.batch_size": 10})
        a = st.start_worker("bounce", cfg)
        b = st.start_worker("bounce", worker_cfg(
            st, **{"consumer.batch_max_messages": 20, "crm.batch_size": 10}))
        a.wait_ready(30)
        b.wait_ready(30)
        st.produce(TOPIC, events, schema_id=3)
        st.wait_for(lambda: len(st.dv_admin(
            "GET", "/_admin/records/msdynmkt_contactpointconsent4s")) >= 15,
            timeout=90, what="some consent rows before the kill")
        a.kill()
        done_at_kill = len(st.dv_admin(
            "GET", "/_admin/records/msdynmkt_contactpointconsent4s"))
        total = sum(1 for k in expected["consent"] if k[0] == "tenant-c")
        assert done_at_kill < total, "all done before the kill: test void"
        time.sleep(1)
        a2 = st.start_worker("bounce", cfg)
        st.dv_admin("DELETE", "/_admin/faults")
        st.wait_lag_zero(GROUP, TOPIC, timeout=180)
        verify_workload(st, expected, ids)
        assert st.consume_all(DLQ) == []
        a2.stop()
        b.stop()
    finally:
        st.close()


def test_crm_outage_and_throttling():
    """429 with Retry-After, 503 bursts, then a full outage: the worker
    pauses (not ready), writes nothing meanwhile, dead-letters nothing, and
    completes afterwards with the latest state."""
    st = new_stack()
    try:
        events, expected, ids = workload(st, n=30, seed=11)
        w = st.start_worker("bounce", worker_cfg(st))
        w.wait_ready(30)
        st.dv_admin("POST", "/_admin/faults", {
            "script": [{"status": 429, "retry_after": 1, "count": 2},
                       {"status": 503, "count": 3}]})
        half = len(events) // 2
        st.produce(TOPIC, events[:half], schema_id=3)
        st.wait_for(lambda: len(st.dv_admin(
            "GET", "/_admin/records/msdynmkt_contactpointconsent4s")) >= 5,
            timeout=60, what="first consent rows")
        st.dv_admin("POST", "/_admin/faults", {"error_rate": 1.0,
                                               "error_status": 503})
        st.produce(TOPIC, events[half:], schema_id=3)
        st.wait_for(lambda: w.metric("crmsync_partitions_paused") > 0,
                    timeout=30, what="partitions paused during the outage")
        st.wait_for(lambda: w._get("/readyz")[0] == 503, timeout=30,
                    what="/readyz 503 during the outage")
        counts = st.dv_admin("GET", "/_admin/records")
        time.sleep(3)
        assert st.dv_admin("GET", "/_admin/records") == counts, (
            "writes during the outage")
        assert w.alive
        st.dv_admin("DELETE", "/_admin/faults")
        st.wait_lag_zero(GROUP, TOPIC, timeout=180)
        verify_workload(st, expected, ids)
        stats = st.dv_admin("GET", "/_admin/stats")
        assert stats["throttled_429"] >= 2, stats["throttled_429"]
        assert stats["early_requests"] == 0, stats["early_requests"]
        assert st.consume_all(DLQ) == [], "an outage must never dead-letter"
        st.wait_for(lambda: w._get("/readyz")[0] == 200, timeout=30,
                    what="/readyz 200 after the outage")
        w.stop()
    finally:
        st.close()


def test_consent_tenants_and_redis_outage():
    """A deployment for one CRM org (consent.tenants=tenant-c): another
    tenant's consent change is not applied (other_tenant, not
    dead-lettered), its outbounce is (address level). Then Redis goes
    down: the worker pauses (not ready), nothing is lost or
    dead-lettered, and the event lands once Redis is back."""
    st = new_stack()
    try:
        w = st.start_worker("bounce", worker_cfg(
            st, **{"consent.tenants": "tenant-c"}))
        w.wait_ready(30)
        nid = Ids("org")
        a = "org.a@example.org"
        ca = person(st, a)["contacts"]
        t = T0
        run(st, [
            bounce_event(nid(), "tenant-z", t, "UNSUBSCRIBE", email=a,
                         consent_id=P_NEWS),
            bounce_event(nid(), "tenant-c", t, "UNSUBSCRIBE", email=a,
                         consent_id=P_OFFERS),
            bounce_event(nid(), "tenant-z", t, "OUTBOUNCE", email=a,
                         scope="CHANNEL")])
        assert consent_rows(st, a, P_NEWS) == [], "other org's consent"
        assert not sismember(st, "cs:sup:c:tenant-z|" + P_NEWS, a)
        assert_consent(st, a, P_OFFERS, OPTED_OUT, t)
        rec = record(st, "contacts", ca)
        assert bounced(rec) and iso_ms(rec["crmsync_emailbouncedon"]) == t
        assert bounce_metric(w, "UNSUBSCRIBE", "other_tenant") == 1
        assert st.consume_all(DLQ) == []
        # Redis outage
        b = "redis.outage@example.org"
        person(st, b)
        st.stop_redis()
        st.produce(TOPIC, [bounce_event(nid(), "tenant-c", t, "UNSUBSCRIBE",
                                        email=b, consent_id=P_NEWS)],
                   schema_id=3)
        st.wait_for(lambda: w._get("/readyz")[0] == 503, timeout=30,
                    what="/readyz 503 while redis is down")
        time.sleep(2)
        assert consent_rows(st, b) == [], "written without the Redis CAS"
        assert w.alive, "worker died while redis was down"
        st.restart_redis()
        st.wait_lag_zero(GROUP, TOPIC, timeout=60)
        assert_consent(st, b, P_NEWS, OPTED_OUT, t)
        assert sismember(st, "cs:sup:c:tenant-c|" + P_NEWS, b)
        assert st.consume_all(DLQ) == [], "a Redis blip dead-lettered"
        w.stop()
    finally:
        st.close()


TESTS = [
    test_out_of_order_latest_wins,
    test_duplicate_unsubscribes_one_entry,
    test_outbounce_all_records_all_tenants,
    test_bounce_thresholds_and_window,
    test_bounce_reset,
    test_spam_complaint_and_donotbulkemail,
    test_suppression_sets,
    test_recipients_and_channel_scope,
    test_crm_newer_rows_are_kept,
    test_bad_input_dead_letters,
    test_not_found_creates_one_lead,
    test_metrics_outcomes,
    test_redis_wipe_and_replay,
    test_sigkill_and_second_worker,
    test_crm_outage_and_throttling,
    test_consent_tenants_and_redis_outage,
]


def on_fail():
    if Shared.w is not None and not Shared.w.alive:
        print(Shared.w.describe())


def main(argv):
    return run_scenarios(TESTS, argv, on_fail, close_shared)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
