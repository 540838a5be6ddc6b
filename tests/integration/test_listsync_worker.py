"""Integration tests of the list-sync worker (crmsync-listsync) against the
real local stack: mock Kafka cluster, redis-server, the Dataverse emulator,
the Optimizely Campaign emulator, the bounce/opt-out worker (for the
barrier and the feedback loop) and the built binaries. The spec is
docs/listsync.md; every scenario asserts effects: the ESP recipient list
(addresses and attributes) and the emulator's stats, the CRM list record's
status JSON, the Redis job hash, the results topic, the feedback events on
crmsync.bounce.events and the dead-letter topic.

The scenarios share one stack (one bounce worker, one list-sync worker);
each uses its own tenant / lists / ESP list ids / addresses. Scenarios that
need another worker configuration (barrier timeout, bad ESP password) or
kill the worker restart the shared list-sync worker afterwards.

Run: python3 tests/integration/test_listsync_worker.py [scenario ...]
"""
import datetime
import json
import os
import struct
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stack import (Stack, bounce_event, list_sync_request,  # noqa: E402
                   run_scenarios)

REQ_TOPIC = "crmsync.listsync.requests"
DLQ = REQ_TOPIC + ".dlq"
RESULTS = "crmsync.listsync.results"
BOUNCE_TOPIC = "crmsync.bounce.events"
GROUP = "crmsync-listsync"

EMAIL = 534120000           # msdynmkt_contactpointtype Email
PURPOSE = 534120000         # msdynmkt_contactpointconsenttype Purpose
OPTED_IN = 534120001
OPTED_OUT = 534120002
RESTRICTIVE = 534120000     # msdynmkt_enforcementmodel
NON_RESTRICTIVE = 534120001
DISABLED = 534120002

P_RESTR = "6a0e4c7e-0b1d-4c55-9f0a-0000000000b1"
P_NONR = "6a0e4c7e-0b1d-4c55-9f0a-0000000000b2"
P_DIS = "6a0e4c7e-0b1d-4c55-9f0a-0000000000b3"
H_NEWS = "7b1f5d8f-1c2e-4d66-8a1b-0000000000b1"  # tenant-h (history model)

ESP_PW = "esp-pw-Secr3t"
HOUR = 3600 * 1000
NOW = int(time.time()) * 1000
T0 = NOW - 3 * 24 * HOUR

TENANTS = {
    "tenant-h": {"consent.model": "history"},
    "tenant-m": {"listsync.default_language": "de"},
}

MAPPING = ("firstname=field:firstname,lastname=field:lastname,"
           "company=lookup:_parentcustomerid_value,"
           "contact-method=option:preferredcontactmethodcode,"
           "interests=multi:crmsync_interests,language=language:x")
LABELS = "de|preferredcontactmethodcode|2=E-Mail;de|crmsync_interests|3=Reisen"
TECH = ("opt-in-id", "description", "media-type", "entity-type", "entity-id")


def catalog_seed():
    return {
        "msdynmkt_purposes": [
            {"msdynmkt_purposeid": P_RESTR, "msdynmkt_name": "Newsletter",
             "msdynmkt_type": 534120000,
             "msdynmkt_enforcementmodel": RESTRICTIVE},
            {"msdynmkt_purposeid": P_NONR, "msdynmkt_name": "Offers",
             "msdynmkt_type": 534120000,
             "msdynmkt_enforcementmodel": NON_RESTRICTIVE},
            {"msdynmkt_purposeid": P_DIS, "msdynmkt_name": "Service news",
             "msdynmkt_type": 534120000,
             "msdynmkt_enforcementmodel": DISABLED},
        ],
        "crmsync_advertisingconsents": [
            {"crmsync_advertisingconsentid": H_NEWS,
             "crmsync_name": "Newsletter", "crmsync_tenant": "tenant-h"},
        ],
        "_optionsets": {"contacts": {
            "preferredcontactmethodcode": {"1": "Any", "2": "Email"},
            "crmsync_interests": {"1": "Sport", "2": "Music",
                                  "3": "Travel"}}},
    }


# -- helpers ---------------------------------------------------------------

def iso(ms):
    return datetime.datetime.fromtimestamp(
        ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def nid(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


class Esp:
    """ESP list ids: unique digits per scenario."""
    n = 1000

    @classmethod
    def new(cls):
        cls.n += 1
        return str(cls.n)


PK = {"contact": "contactid", "lead": "leadid", "account": "accountid"}
FROM_CODE = {"account": 1, "contact": 2, "lead": 4}


def seed_records(st, entity, recs):
    """Seeds records (dicts; "id" is taken as the key) of one entity;
    returns their ids in order. Ids are random GUIDs unless given."""
    out = []
    rows = []
    for r in recs:
        r = dict(r)
        rid = r.pop("id", None) or str(uuid.uuid4())
        r[PK[entity]] = rid
        if entity != "account":
            r.setdefault("firstname", "Test")
            r.setdefault("lastname", "Member")
        rows.append(r)
        out.append(rid)
    st.dv_admin("POST", "/_admin/records/%ss" % entity, rows)
    return out


def new_list(st, entity, name, ids):
    lid = str(uuid.uuid4())
    st.dv_admin("POST", "/_admin/records/lists", {
        "listid": lid, "listname": name, "createdfromcode": FROM_CODE[entity],
        "type": False})
    add_members(st, lid, ids)
    return lid


def add_members(st, lid, ids):
    st.dv_admin("POST", "/_admin/records/listmembers", [
        {"listmemberid": str(uuid.uuid4()), "_listid_value": lid,
         "_entityid_value": i} for i in ids])


def remove_member(st, lid, rid):
    tok = st.dv_token()
    import urllib.request
    req = urllib.request.Request(
        "%s/api/data/v9.2/lists(%s)/listcontact_association(%s)/$ref" % (
            st.dv_url, lid, rid), method="DELETE",
        headers={"Authorization": "Bearer " + tok})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 204, resp.status


def consent(st, addr, purpose, value):
    st.dv_admin("POST", "/_admin/records/msdynmkt_contactpointconsent4s", {
        "msdynmkt_contactpointvalue": addr,
        "msdynmkt_contactpointtype": EMAIL,
        "msdynmkt_contactpointconsenttype": PURPOSE,
        "msdynmkt_value": value,
        "msdynmkt_purposeId@odata.bind": "/msdynmkt_purposes(%s)" % purpose})


def history_entry(st, consent_id, contact_id, optin, t):
    st.dv_admin("POST", "/_admin/records/crmsync_optinhistories", {
        "crmsync_name": "seed", "crmsync_optin": optin,
        "crmsync_occurredon": iso(t),
        "crmsync_ConsentId@odata.bind":
            "/crmsync_advertisingconsents(%s)" % consent_id,
        "crmsync_ContactId@odata.bind": "/contacts(%s)" % contact_id})


def request(st, tenant, list_id, esp_list, consent_id, eid=None, **kw):
    eid = eid or nid("req")
    st.produce(REQ_TOPIC, [list_sync_request(eid, tenant, list_id, esp_list,
                                             consent_id, **kw)], schema_id=4)
    return eid


def job(st, tenant, eid):
    raw = st.redis("HGETALL", "cs:ls:job:%s|%s" % (tenant, eid)) or []
    return {raw[i].decode(): raw[i + 1].decode()
            for i in range(0, len(raw), 2)}


def wait_job(st, tenant, eid, timeout=60, states=("done", "failed")):
    def ended():
        j = job(st, tenant, eid)
        return j if j.get("state") in states else None
    try:
        return st.wait_for(ended, timeout, 0.2, "job %s ends" % eid)
    except AssertionError:
        raise AssertionError("job %s: %s\nworker log:\n%s" % (
            eid, job(st, tenant, eid), Shared.ls.describe()
            if Shared.ls else ""))


def esp_list(st, esp_id):
    r = st.esp_admin("GET", "/_admin/lists/%s?limit=1000000" % esp_id)
    out = {x["email"]: x for x in r["recipients"]}
    assert len(out) == r["count"], "duplicate addresses in the ESP list"
    return out


def esp_count(st, esp_id):
    return st.esp_admin("GET", "/_admin/lists/%s?limit=1" % esp_id)["count"]


def calls(st, op):
    return st.esp_admin("GET", "/_admin/stats")["calls"].get(op, 0)


def list_status(st, lid):
    for r in st.dv_admin("GET", "/_admin/records/lists"):
        if r.get("listid") == lid:
            s = r.get("crmsync_syncstatus")
            return (json.loads(s) if s else None), r
    raise AssertionError("list %s is gone" % lid)


def results(st, lid, eid=None):
    out = []
    for m in st.consume_all(RESULTS):
        if m["key"] != lid:
            continue
        v = json.loads(m["value"])
        if eid is None or v.get("request") == eid:
            out.append(v)
    return out


def check_status(st, lid, eid, state="done"):
    """The status on the list record and on the results topic: equal,
    for this request, in this state. Returns it."""
    s, rec = list_status(st, lid)
    assert s is not None, "no status on list %s" % lid
    assert s["request"] == eid and s["state"] == state, s
    assert rec.get("crmsync_lastsyncon"), "crmsync_lastsyncon not set"
    rs = st.wait_for(lambda: results(st, lid, eid), 15, 0.5,
                     "result of %s on %s" % (eid, RESULTS))
    assert len(rs) == 1, "%d results for one request: %s" % (len(rs), rs)
    for k in ("state", "reason", "attempt", "read", "filtered",
              "duplicates", "sent", "accepted", "refused", "codes",
              "crm_list_id", "esp_list_id"):
        assert rs[0][k] == s[k], "results topic %s=%r, list %r" % (
            k, rs[0][k], s[k])
    return s


def filtered(s, **want):
    """Exact filtered counts: want names the non-zero ones."""
    base = {"invalid_email": 0, "inactive": 0, "qualified_lead": 0,
            "outbounced": 0, "suppressed": 0, "no_consent": 0}
    base.update(want)
    assert s["filtered"] == base, "filtered %s, want %s" % (s["filtered"],
                                                            base)


def dead(st, eid):
    out = []
    for d in st.consume_all(DLQ):
        try:
            v = d["value"] or b""
            if eid.encode() in v:
                out.append(d)
        except TypeError:
            pass
    return out


# -- a minimal Avro decoder (for the feedback events) ------------------------

class _Rd:
    def __init__(self, b):
        self.b, self.i = b, 0

    def long(self):
        n = shift = 0
        while True:
            c = self.b[self.i]
            self.i += 1
            n |= (c & 0x7F) << shift
            shift += 7
            if not c & 0x80:
                break
        return (n >> 1) ^ -(n & 1)

    def raw(self, n):
        v = self.b[self.i:self.i + n]
        self.i += n
        return v


def avro_decode(schema, rd, names):
    if isinstance(schema, list):
        return avro_decode(schema[rd.long()], rd, names)
    if isinstance(schema, str):
        if schema in names:
            return avro_decode(names[schema], rd, names)
        if schema == "null":
            return None
        if schema in ("long", "int"):
            return rd.long()
        if schema == "boolean":
            return rd.raw(1) == b"\x01"
        if schema == "string":
            return rd.raw(rd.long()).decode()
        raise ValueError("unsupported type %s" % schema)
    t = schema["type"]
    if "name" in schema:
        names[schema["name"]] = schema
    if t == "record":
        return {f["name"]: avro_decode(f["type"], rd, names)
                for f in schema["fields"]}
    if t == "enum":
        return schema["symbols"][rd.long()]
    return avro_decode(t, rd, names)


def decode_bounce(st, value):
    """Confluent framing (magic 0, schema id 3) + BounceEvent."""
    assert value[0] == 0, "no Confluent magic byte"
    sid = struct.unpack(">I", value[1:5])[0]
    assert sid == 3, "schema id %d, want 3" % sid
    with open(os.path.join(st.source_dir, "schemas",
                           "bounce_event.v1.avsc")) as f:
        schema = json.load(f)
    rd = _Rd(value[5:])
    ev = avro_decode(schema, rd, {})
    assert rd.i == len(value) - 5, "trailing bytes in the Avro body"
    return ev


# -- the shared stack -------------------------------------------------------

def ls_config(st, **extra):
    cfg = {"consumer.batch_max_ms": 50,
           "consumer.topics":
               "crmsync.listsync.requests,crmsync.listsync.membership",
           "consumer.retry_backoff_max_ms": 1000,
           "listsync.lease_ms": 5000,
           "listsync.barrier_timeout_s": 30,
           "listsync.mapping": MAPPING,
           "listsync.labels": LABELS,
           "listsync.language_field": "crmsync_language",
           "listsync.multi_separator": "|",
           "esp.batch_size": 100,
           "esp.max_retries": 8,
           "tenants": TENANTS}
    cfg.update(st.esp_config())
    cfg.update(extra)
    return st.worker_config("listsync", cfg)


def bounce_config(st):
    return st.worker_config("bounce", {"consumer.batch_max_ms": 50,
                                       "tenants": {"tenant-h": TENANTS[
                                           "tenant-h"]}})


class Shared:
    st = None
    ls = None
    bounce = None


def shared():
    if Shared.st is not None and Shared.ls is not None and Shared.ls.alive:
        return Shared.st
    close_shared()
    st = Stack()
    st.__enter__()
    Shared.st = st
    st.start_kafka()
    st.start_redis(password="redis-pw")
    st.start_dataverse(seed=catalog_seed())
    st.start_esp(mandator="4711", user="api", password=ESP_PW)
    start_bounce()
    start_ls()
    return st


def start_ls(**extra):
    st = Shared.st
    pw = extra.pop("_pw", None)
    if Shared.ls is not None and Shared.ls.alive:
        Shared.ls.stop()
    Shared.ls = st.start_worker("listsync", ls_config(st, **extra),
                                env=st.esp_env(pw))
    Shared.ls.wait_ready(30)
    return Shared.ls


def start_bounce():
    Shared.bounce = Shared.st.start_worker("bounce",
                                           bounce_config(Shared.st))
    Shared.bounce.wait_ready(30)


def stop_bounce():
    if Shared.bounce is not None and Shared.bounce.alive:
        Shared.bounce.stop()


def close_shared():
    if Shared.st is not None:
        for w in (Shared.ls, Shared.bounce):
            if w is not None and w.alive:
                try:
                    w.stop()
                except AssertionError as e:
                    sys.stderr.write("%s\n" % e)
        Shared.st.close()
    Shared.st = Shared.ls = Shared.bounce = None


# -- scenarios -------------------------------------------------------------

def test_full_refresh_filters():
    """Filters with exact counts (CI-J restrictive and non-restrictive,
    history model, lead states, suppression sets), the technical
    attributes, the status on the list and the results topic, and a second
    refresh that replaces the list."""
    st = shared()
    d = "@full.example.org"
    names = ["ok1", "ok2", "bad", "noemail", "inactive", "outb", "supc",
             "supx", "nocons", "optout"]
    recs = []
    for n in names:
        r = {"emailaddress1": n + d, "firstname": n.capitalize()}
        if n == "bad":
            r["emailaddress1"] = "not-an-email"
        if n == "noemail":
            del r["emailaddress1"]
        if n == "inactive":
            r.update(statecode=1, statuscode=2)
        recs.append(r)
    ids = dict(zip(names, seed_records(st, "contact", recs)))
    for n in ("ok1", "ok2", "inactive", "outb", "supc", "supx"):
        consent(st, n + d, P_RESTR, OPTED_IN)
    consent(st, "optout" + d, P_RESTR, OPTED_OUT)
    consent(st, "optout" + d, P_NONR, OPTED_OUT)
    consent(st, "ok2" + d, P_NONR, OPTED_IN)
    st.redis("SADD", "cs:sup:b", "outb" + d)
    st.redis("SADD", "cs:sup:c:tenant-c|" + P_RESTR, "supc" + d)
    st.redis("SADD", "cs:sup:c:tenant-c|" + P_NONR, "supc" + d)
    st.redis("SADD", "cs:sup:x:tenant-c", "supx" + d)
    lid = new_list(st, "contact", "Full news", [ids[n] for n in names])

    # leads: open / qualified / disqualified (purpose with enforcement
    # disabled: consent does not matter)
    lids = seed_records(st, "lead", [
        {"emailaddress1": "lead.open" + d},
        {"emailaddress1": "lead.qual" + d, "statecode": 1, "statuscode": 3},
        {"emailaddress1": "lead.disq" + d, "statecode": 2, "statuscode": 4}])
    llist = new_list(st, "lead", "Lead list", lids)

    # history model (tenant-h): the newest entry decides
    hn = ["h.outlast", "h.inlast", "h.none", "h.in"]
    hid = dict(zip(hn, seed_records(st, "contact", [
        {"emailaddress1": n + d} for n in hn])))
    history_entry(st, H_NEWS, hid["h.outlast"], True, T0)
    history_entry(st, H_NEWS, hid["h.outlast"], False, T0 + HOUR)
    history_entry(st, H_NEWS, hid["h.inlast"], True, T0 + 2 * HOUR)
    history_entry(st, H_NEWS, hid["h.inlast"], False, T0 + HOUR)
    history_entry(st, H_NEWS, hid["h.in"], True, T0)
    hlist = new_list(st, "contact", "History list", list(hid.values()))

    e_r, e_n, e_l, e_h = (Esp.new() for _ in range(4))
    clears0 = calls(st, "RpcRecipient.clear")
    r1 = request(st, "tenant-c", lid, e_r, P_RESTR)
    r2 = request(st, "tenant-c", lid, e_n, P_NONR)
    r3 = request(st, "tenant-c", llist, e_l, P_DIS)
    r4 = request(st, "tenant-h", hlist, e_h, H_NEWS)
    for t, r in (("tenant-c", r1), ("tenant-c", r2), ("tenant-c", r3),
                 ("tenant-h", r4)):
        j = wait_job(st, t, r)
        assert j["state"] == "done", j
    st.wait_lag_zero(GROUP, REQ_TOPIC, timeout=30)

    # restrictive: only Opted In
    got = esp_list(st, e_r)
    assert set(got) == {"ok1" + d, "ok2" + d}, sorted(got)
    a = got["ok1" + d]["attributes"]
    assert a["opt-in-id"] == P_RESTR and a["description"] == "Full news", a
    assert a["media-type"] == "email" and a["entity-type"] == "contact", a
    assert a["entity-id"] == ids["ok1"] and a["firstname"] == "Ok1", a
    s = check_status(st, lid, r2)  # the list record holds the last job
    filtered(s, invalid_email=2, inactive=1, outbounced=1, suppressed=2,
             no_consent=1)
    assert s["read"] == 10 and s["sent"] == 3 and s["accepted"] == 3, s
    # the restrictive job's own status: results topic and Redis
    rs = results(st, lid, r1)
    assert len(rs) == 1, rs
    filtered(rs[0], invalid_email=2, inactive=1, outbounced=1, suppressed=2,
             no_consent=2)
    assert rs[0]["read"] == 10 and rs[0]["sent"] == 2, rs[0]
    assert rs[0]["accepted"] == 2 and rs[0]["refused"] == 0, rs[0]
    assert rs[0]["attempt"] == 1 and rs[0]["restarted"] is False, rs[0]
    assert rs[0]["list_name"] == "Full news", rs[0]
    jr = json.loads(job(st, "tenant-c", r1)["status"])
    assert jr["filtered"] == rs[0]["filtered"], jr
    # non-restrictive: only Opted Out excluded
    assert set(esp_list(st, e_n)) == {"ok1" + d, "ok2" + d, "nocons" + d}
    # leads: only open ones; qualified counted apart from inactive
    got = esp_list(st, e_l)
    assert set(got) == {"lead.open" + d}, sorted(got)
    assert got["lead.open" + d]["attributes"]["entity-type"] == "lead"
    s = check_status(st, llist, r3)
    filtered(s, qualified_lead=1, inactive=1)
    # history: newest entry decides, no entry = no consent
    assert set(esp_list(st, e_h)) == {"h.inlast" + d, "h.in" + d}
    s = check_status(st, hlist, r4)
    filtered(s, no_consent=2)
    assert calls(st, "RpcRecipient.clear") == clears0 + 4
    # Redis: lease released, seen set deleted
    assert st.redis("EXISTS", "cs:ls:lease:tenant-c|" + e_r) == 0
    assert st.redis("EXISTS", "cs:ls:seen:tenant-c|" + r1) == 0
    assert not dead(st, r1)

    # members change: ok2 leaves, ok3 joins; the refresh replaces the list
    ok3 = seed_records(st, "contact", [{"emailaddress1": "ok3" + d}])[0]
    consent(st, "ok3" + d, P_RESTR, OPTED_IN)
    add_members(st, lid, [ok3])
    remove_member(st, lid, ids["ok2"])
    r5 = request(st, "tenant-c", lid, e_r, P_RESTR)
    assert wait_job(st, "tenant-c", r5)["state"] == "done"
    assert set(esp_list(st, e_r)) == {"ok1" + d, "ok3" + d}
    assert calls(st, "RpcRecipient.clear") == clears0 + 5
    s = check_status(st, lid, r5)
    assert s["read"] == 10 and s["sent"] == 2, s


def test_unsubscribe_before_sync_and_barrier():
    """An unsubscribe produced just before the request is applied first
    (the barrier); with the bounce worker stopped the job waits at the
    barrier (ESP list untouched) and completes once it runs again."""
    st = shared()
    d = "@barrier.example.org"
    names = ["u1", "u2", "u3"]
    ids = dict(zip(names, seed_records(st, "contact", [
        {"emailaddress1": n + d} for n in names])))
    for n in names:
        consent(st, n + d, P_RESTR, OPTED_IN)
    lid = new_list(st, "contact", "Barrier list", list(ids.values()))
    e = Esp.new()
    # the unsubscribe arrives a moment before the sync request
    now = int(time.time() * 1000)
    st.produce(BOUNCE_TOPIC, [bounce_event(
        nid("unsub"), "tenant-c", now - 1000, "UNSUBSCRIBE", email="u1" + d,
        consent_id=P_RESTR, source="LINK")], schema_id=3)
    r1 = request(st, "tenant-c", lid, e, P_RESTR)
    assert wait_job(st, "tenant-c", r1)["state"] == "done"
    assert set(esp_list(st, e)) == {"u2" + d, "u3" + d}
    s = check_status(st, lid, r1)
    assert s["filtered"]["no_consent"] + s["filtered"]["suppressed"] == 1, s

    # the bounce worker is down: the job must wait at the barrier
    stop_bounce()
    clears0 = calls(st, "RpcRecipient.clear")
    st.produce(BOUNCE_TOPIC, [bounce_event(
        nid("unsub"), "tenant-c", int(time.time() * 1000) - 500,
        "UNSUBSCRIBE", email="u2" + d, consent_id=P_RESTR, source="LINK")],
        schema_id=3)
    time.sleep(1.0)
    r2 = request(st, "tenant-c", lid, e, P_RESTR)
    st.wait_for(lambda: job(st, "tenant-c", r2).get("state") == "running",
                20, 0.2, "job %s running" % r2)
    time.sleep(4)
    assert job(st, "tenant-c", r2)["state"] == "running", job(
        st, "tenant-c", r2)
    assert calls(st, "RpcRecipient.clear") == clears0, "cleared before " \
        "the barrier was reached"
    assert set(esp_list(st, e)) == {"u2" + d, "u3" + d}
    start_bounce()
    assert wait_job(st, "tenant-c", r2)["state"] == "done"
    assert set(esp_list(st, e)) == {"u3" + d}, "u2 was re-added"
    s = check_status(st, lid, r2)
    # Regression: the list lease (listsync.lease_ms) must be renewed while
    # the job waits at the barrier too; a wait longer than the lease used
    # to lose it (interrupted, cleared and refilled twice, attempt 2).
    n = calls(st, "RpcRecipient.clear")
    assert n == clears0 + 1 and s["attempt"] == 1, (
        "lease not renewed during the barrier wait: clear "
        "called %d times, want 1; status attempt=%s reason=%r" % (
            n - clears0, s["attempt"], s["reason"]))


def test_barrier_timeout():
    """Bounce worker down with an unsubscribe pending and a short
    barrier timeout: the job fails (barrier-timeout), the request is
    dead-lettered with that reason and the ESP list is untouched."""
    st = shared()
    d = "@btimeout.example.org"
    rid = seed_records(st, "contact", [{"emailaddress1": "t1" + d}])[0]
    lid = new_list(st, "contact", "Timeout list", [rid])
    e = Esp.new()
    st.esp_admin("POST", "/_admin/lists/" + e, {"recipients": [
        {"id": "keep" + d, "email": "keep" + d, "attributes": {}}]})
    stop_bounce()
    try:
        start_ls(**{"listsync.barrier_timeout_s": 3})
        st.produce(BOUNCE_TOPIC, [bounce_event(
            nid("unsub"), "tenant-c", int(time.time() * 1000) - 500,
            "UNSUBSCRIBE", email="t1" + d, consent_id=P_DIS)], schema_id=3)
        time.sleep(1.0)
        clears0 = calls(st, "RpcRecipient.clear")
        r = request(st, "tenant-c", lid, e, P_DIS)
        j = wait_job(st, "tenant-c", r, timeout=30)
        assert j["state"] == "failed", j
        s = check_status(st, lid, r, state="failed")
        assert s["reason"].startswith("barrier-timeout"), s["reason"]
        dl = st.wait_for(lambda: dead(st, r), 20, 0.5, "dead letter")
        assert len(dl) == 1, dl
        h = dl[0]["headers"]
        assert "barrier-timeout" in (h.get("crmsync.error.message") or ""), h
        assert h.get("crmsync.error.topic") == REQ_TOPIC, h
        assert calls(st, "RpcRecipient.clear") == clears0
        assert set(esp_list(st, e)) == {"keep" + d}, "ESP list touched"
        st.wait_lag_zero(GROUP, REQ_TOPIC, timeout=20)
    finally:
        start_bounce()
        start_ls()


def test_mapping():
    """field, lookup, option (formatted label, per-language override),
    multi-select joined with the separator, language with default;
    XML-special and non-ASCII values survive."""
    st = shared()
    d = "@mapping.example.org"
    acc = seed_records(st, "account", [{"name": "Acme & Söhne GmbH"}])[0]
    ids = seed_records(st, "contact", [
        {"emailaddress1": "m1" + d, "firstname": "Zoë <&> \"Q\"",
         "lastname": "One", "preferredcontactmethodcode": 2,
         "crmsync_interests": "1,3", "crmsync_language": "en",
         "parentcustomerid_account@odata.bind": "/accounts(%s)" % acc},
        {"emailaddress1": "m2" + d, "firstname": "Max", "lastname": "Two",
         "preferredcontactmethodcode": 2, "crmsync_interests": "1,3"},
        {"emailaddress1": "m3" + d, "firstname": "Ann", "lastname": "Three",
         "preferredcontactmethodcode": 1, "crmsync_interests": "2",
         "crmsync_language": "de"}])
    lid = new_list(st, "contact", "Mapping list", ids)
    e = Esp.new()
    r = request(st, "tenant-m", lid, e, P_DIS)
    assert wait_job(st, "tenant-m", r)["state"] == "done"
    got = esp_list(st, e)
    assert set(got) == {"m1" + d, "m2" + d, "m3" + d}, sorted(got)
    a1, a2, a3 = (got[n + d]["attributes"] for n in ("m1", "m2", "m3"))
    want1 = {"firstname": "Zoë <&> \"Q\"", "lastname": "One",
             "company": "Acme & Söhne GmbH", "contact-method": "Email",
             "interests": "Sport|Travel", "language": "en"}
    for k, v in want1.items():
        assert a1.get(k) == v, "m1 %s=%r, want %r (%s)" % (k, a1.get(k), v,
                                                            a1)
    # no language: the tenant's default (de) and its label overrides
    want2 = {"company": "", "contact-method": "E-Mail",
             "interests": "Sport|Reisen", "language": "de"}
    for k, v in want2.items():
        assert (a2.get(k) or "") == v, "m2 %s=%r, want %r (%s)" % (
            k, a2.get(k), v, a2)
    want3 = {"contact-method": "Any", "interests": "Music",
             "language": "de"}
    for k, v in want3.items():
        assert a3.get(k) == v, "m3 %s=%r, want %r (%s)" % (k, a3.get(k), v,
                                                            a3)
    for a in (a1, a2, a3):
        assert set(TECH) <= set(a), a
        assert a["description"] == "Mapping list", a
    check_status(st, lid, r)


def test_dedupe():
    """Two members with the same address (case, blanks) become one
    recipient; the duplicate is counted."""
    st = shared()
    d = "@dedupe.example.org"
    a = "00000000-0000-4000-8000-0000000d0001"
    b = "00000000-0000-4000-8000-0000000d0002"
    ids = seed_records(st, "contact", [
        {"id": a, "emailaddress1": "Dup.User" + d.upper()},
        {"id": b, "emailaddress1": "  dup.user" + d + " "},
        {"emailaddress1": "other" + d}])
    lid = new_list(st, "contact", "Dedupe list", ids)
    e = Esp.new()
    r = request(st, "tenant-c", lid, e, P_DIS)
    assert wait_job(st, "tenant-c", r)["state"] == "done"
    got = esp_list(st, e)
    assert set(got) == {"dup.user" + d, "other" + d}, sorted(got)
    assert got["dup.user" + d]["attributes"]["entity-id"] == a, got
    s = check_status(st, lid, r)
    assert s["duplicates"] == 1 and s["sent"] == 2 and s["read"] == 3, s
    filtered(s)


def membership(st, tenant, lid, change, entity, rid=None, email=None):
    """Produces one ListMembershipChange (schema id 5)."""
    now = int(time.time() * 1000)
    st.produce("crmsync.listsync.membership", [{
        "event_id": nid("mem"), "tenant": tenant, "occurred_at": now,
        "source_system": "crmsync-test",
        "recipient": {"entity_type": entity, "entity_id": rid,
                      "email": email},
        "crm_list_id": lid, "change": change, "__key": lid}], schema_id=5)


def wait_membership(st, what, predicate, timeout=30):
    st.wait_lag_zero("crmsync-listsync", "crmsync.listsync.membership",
                     timeout=timeout)
    Stack.wait_for(predicate, timeout=timeout, what=what)


def test_incremental_membership():
    """An INCREMENTAL request runs a full refresh and registers the list;
    then ADDED / DATA_CHANGED / REMOVED events update single recipients
    after the same filters (an opted-out member is taken off the list);
    events of lists not registered are skipped."""
    st = shared()
    d = "@incr.example.org"
    ids = seed_records(st, "contact", [
        {"emailaddress1": "a" + d, "firstname": "Ann"},
        {"emailaddress1": "b" + d, "firstname": "Ben"}])
    lid = new_list(st, "contact", "Incremental list", ids)
    e = Esp.new()
    r = request(st, "tenant-c", lid, e, P_NONR, mode="INCREMENTAL")
    assert wait_job(st, "tenant-c", r)["state"] == "done"
    assert set(esp_list(st, e)) == {"a" + d, "b" + d}
    assert st.redis("HGET", "cs:ls:inc:tenant-c|%s" % lid, "esp") == \
        str(e).encode()
    clears = calls(st, "RpcRecipient.clear")

    # ADDED: a new member appears without a refresh
    (cid,) = seed_records(st, "contact", [
        {"emailaddress1": "C" + d.upper(), "firstname": "Cy"}])
    add_members(st, lid, [cid])
    membership(st, "tenant-c", lid, "ADDED", "contact", cid, "c" + d)
    wait_membership(st, "c added", lambda: "c" + d in esp_list(st, e))
    assert esp_list(st, e)["c" + d]["attributes"]["entity-id"] == cid

    # DATA_CHANGED: the attributes are replaced
    seed_records(st, "contact", [
        {"id": ids[0], "emailaddress1": "a" + d, "firstname": "Anna"}])
    membership(st, "tenant-c", lid, "DATA_CHANGED", "contact", ids[0],
               "a" + d)
    wait_membership(st, "a renamed", lambda: esp_list(st, e).get(
        "a" + d, {}).get("attributes", {}).get("firstname") == "Anna")

    # DATA_CHANGED to opted out: taken off the list
    consent(st, "b" + d, P_NONR, OPTED_OUT)
    membership(st, "tenant-c", lid, "DATA_CHANGED", "contact", ids[1],
               "b" + d)
    wait_membership(st, "b removed", lambda: "b" + d not in esp_list(st, e))

    # REMOVED
    membership(st, "tenant-c", lid, "REMOVED", "contact", cid, "c" + d)
    wait_membership(st, "c removed", lambda: "c" + d not in esp_list(st, e))
    assert set(esp_list(st, e)) == {"a" + d}

    # a list nobody registered: skipped, nothing written
    other = new_list(st, "contact", "Not incremental", [])
    membership(st, "tenant-c", other, "ADDED", "contact", cid, "c" + d)
    st.wait_lag_zero("crmsync-listsync", "crmsync.listsync.membership",
                     timeout=30)
    assert set(esp_list(st, e)) == {"a" + d}
    assert calls(st, "RpcRecipient.clear") == clears, "no refresh"


def test_dynamic_list():
    """A dynamic list's members come from its FetchXML, paged with paging
    cookies; the columns the job needs are added to the query."""
    st = shared()
    d = "@dynamic.example.org"
    seed_records(st, "contact", [
        {"emailaddress1": "m%d%s" % (i, d), "lastname": "Dyn",
         "firstname": "D%d" % i, "statecode": 1 if i == 3 else 0}
        for i in range(12)] + [
        {"emailaddress1": "other" + d, "lastname": "Static"}])
    lid = str(uuid.uuid4())
    st.dv_admin("POST", "/_admin/records/lists", {
        "listid": lid, "listname": "Dynamic list", "createdfromcode": 2,
        "type": True, "query":
            '<fetch><entity name="contact"><attribute name="contactid" />'
            '<filter><condition attribute="lastname" operator="eq" '
            'value="Dyn" /></filter></entity></fetch>'})
    e = Esp.new()
    start_ls(**{"listsync.page_size": 10})  # two pages: a paging cookie
    try:
        r = request(st, "tenant-c", lid, e, P_DIS)
        assert wait_job(st, "tenant-c", r)["state"] == "done"
    finally:
        start_ls()
    got = esp_list(st, e)
    want = {"m%d%s" % (i, d) for i in range(12) if i != 3}
    assert set(got) == want, sorted(set(got) ^ want)
    assert got["m5" + d]["attributes"]["firstname"] == "D5", got["m5" + d]
    s = check_status(st, lid, r)
    assert s["read"] == 12 and s["sent"] == 11, s
    filtered(s, inactive=1)


def test_refusal_codes_fed_back():
    """Recipients the ESP refuses (unsubscribed, blacklisted, bounce-
    overflowed, filtered) are counted by code; 2/3 come back as
    UNSUBSCRIBE and 4 as OUTBOUNCE (source ESP) on crmsync.bounce.events,
    the bounce worker applies them, and the next refresh filters them
    before the ESP."""
    st = shared()
    d = "@refused.example.org"
    names = ["unsub", "black", "bounced", "filt", "fine"]
    ids = dict(zip(names, seed_records(st, "contact", [
        {"emailaddress1": n + d} for n in names])))
    for n in names:
        consent(st, n + d, P_RESTR, OPTED_IN)
    st.esp_admin("POST", "/_admin/unsubscribes", {"addresses": ["unsub" + d]})
    st.esp_admin("POST", "/_admin/blacklist", {"addresses": ["black" + d]})
    st.esp_admin("POST", "/_admin/bounced", {"addresses": ["bounced" + d]})
    st.esp_admin("POST", "/_admin/filtered", {"addresses": ["filt" + d]})
    lid = new_list(st, "contact", "Refusal list", list(ids.values()))
    e = Esp.new()
    r = request(st, "tenant-c", lid, e, P_RESTR)
    assert wait_job(st, "tenant-c", r)["state"] == "done"
    assert set(esp_list(st, e)) == {"fine" + d}
    s = check_status(st, lid, r)
    assert s["codes"] == {"inserted": 1, "validation_failed": 0,
                          "unsubscribed": 1, "blacklisted": 1,
                          "bounce_overflowed": 1, "already_in_list": 0,
                          "filtered": 1, "general_error": 0}, s["codes"]
    assert s["accepted"] == 1 and s["refused"] == 4 and s["sent"] == 5, s
    assert s["feedback_events"] == 3, s
    fb = {}
    for m in st.consume_all(BOUNCE_TOPIC):
        if isinstance(m["key"], str) and m["key"].endswith(d):
            ev = decode_bounce(st, m["value"])
            fb.setdefault(m["key"], []).append(ev)
    assert sorted(fb) == sorted(["unsub" + d, "black" + d, "bounced" + d]), \
        sorted(fb)
    for k, evs in fb.items():
        assert len(evs) == 1, evs
        ev = evs[0]
        want = "OUTBOUNCE" if k.startswith("bounced") else "UNSUBSCRIBE"
        assert ev["kind"] == want and ev["source"] == "ESP", ev
        assert ev["tenant"] == "tenant-c" and ev["consent_id"] == P_RESTR, ev
        assert ev["recipient"]["email"] == k, ev
        assert ev["recipient"]["entity_type"] == "contact", ev
        assert ev["recipient"]["entity_id"] == ids[k.split("@")[0]], ev
    # the bounce worker applies them: CRM and suppression sets agree
    st.wait_lag_zero("crmsync-bounce", BOUNCE_TOPIC, timeout=30)
    sup_c = "cs:sup:c:tenant-c|" + P_RESTR
    assert st.redis("SISMEMBER", sup_c, "unsub" + d) == 1
    assert st.redis("SISMEMBER", sup_c, "black" + d) == 1
    assert st.redis("SISMEMBER", "cs:sup:b", "bounced" + d) == 1
    # the next refresh filters them before the ESP
    r2 = request(st, "tenant-c", lid, e, P_RESTR)
    assert wait_job(st, "tenant-c", r2)["state"] == "done"
    s = check_status(st, lid, r2)
    assert s["sent"] == 2 and s["codes"]["inserted"] == 1, s
    assert s["filtered"]["outbounced"] == 1, s
    assert (s["filtered"]["suppressed"] + s["filtered"]["no_consent"]) == 2, s
    assert set(esp_list(st, e)) == {"fine" + d}


def bulk(st, n, tag, every=None):
    lid = str(uuid.uuid4())
    body = {"list_id": lid, "entity": "contact", "count": n,
            "email_pattern": "%s.{n}@bulk.example.org" % tag,
            "fields": {"firstname": "F{n}", "lastname": tag},
            "listname": "Bulk " + tag}
    if every:
        body["every"] = every
    st.dv_admin("POST", "/_admin/bulk-list", body)
    return lid


def test_session_expiry_mid_job():
    """Sessions expire mid-job: the worker logs in again and resends; the
    list ends complete."""
    st = shared()
    lid = bulk(st, 1500, "sess")
    e = Esp.new()
    st0 = st.esp_admin("GET", "/_admin/stats")
    st.esp_admin("POST", "/_admin/faults", {"latency_ms": 120})
    try:
        r = request(st, "tenant-c", lid, e, P_DIS)
        st.wait_for(lambda: esp_count(st, e) >= 200, 30, 0.05,
                    "first batches in the ESP")
        exp = st.esp_admin("POST", "/_admin/expire-sessions")
        assert exp["expired"] >= 1, exp
        assert esp_count(st, e) < 1500, "job ended before the expiry"
        assert wait_job(st, "tenant-c", r)["state"] == "done"
    finally:
        st.esp_admin("DELETE", "/_admin/faults")
    assert esp_count(st, e) == 1500
    st1 = st.esp_admin("GET", "/_admin/stats")
    assert st1["logins"] - st0["logins"] >= 2, (st0["logins"],
                                                st1["logins"])
    assert st1["session_faults"] > st0["session_faults"], st1
    s = check_status(st, lid, r)
    assert s["sent"] == 1500 and s["accepted"] == 1500, s
    assert s["codes"]["already_in_list"] == 0, s["codes"]


def test_sigkill_restart_and_duplicate():
    """SIGKILL mid-job, restart: the job starts over (attempt 2) and the
    list ends complete; the same request again runs no second refresh."""
    st = shared()
    lid = bulk(st, 4000, "kill", every=[{"n": 10, "offset": 3, "fields": {
        "statecode": 1, "statuscode": 2}}])
    want = 4000 - 400
    e = Esp.new()
    st.esp_admin("POST", "/_admin/faults", {"latency_ms": 60})
    try:
        r = request(st, "tenant-c", lid, e, P_DIS)
        st.wait_for(lambda: esp_count(st, e) >= 500, 60, 0.05,
                    "first batches in the ESP")
        Shared.ls.kill()
        n_at_kill = esp_count(st, e)
        assert 0 < n_at_kill < want, n_at_kill
        assert job(st, "tenant-c", r)["state"] == "running"
        start_ls()
        st.esp_admin("POST", "/_admin/faults", {"latency_ms": 0})
        j = wait_job(st, "tenant-c", r, timeout=60)
    finally:
        st.esp_admin("DELETE", "/_admin/faults")
    assert j["state"] == "done", j
    s = check_status(st, lid, r)
    assert s["attempt"] == 2 and s["restarted"] is True, s
    assert "restarted after interruption" in s["reason"], s["reason"]
    filtered(s, inactive=400)
    assert s["read"] == 4000, s
    st.wait_lag_zero(GROUP, REQ_TOPIC, timeout=30)
    # the same request again: a duplicate, no second refresh
    n_before = esp_count(st, e)
    clears = calls(st, "RpcRecipient.clear")
    adds = calls(st, "RpcRecipient.addAll3")
    request(st, "tenant-c", lid, e, P_DIS, eid=r)
    st.wait_lag_zero(GROUP, REQ_TOPIC, timeout=30)
    time.sleep(1)
    assert calls(st, "RpcRecipient.clear") == clears, "second refresh"
    assert calls(st, "RpcRecipient.addAll3") == adds, "second refresh"
    assert len(results(st, lid, r)) == 1
    assert esp_count(st, e) == n_before
    assert job(st, "tenant-c", r)["state"] == "done"
    assert not dead(st, r)
    # Regression: a restarted attempt must forget the killed attempt's
    # dedupe set cs:ls:seen:<tenant>|<event_id> (else every member already
    # sent counts as a duplicate and the cleared list stays empty).
    assert esp_count(st, e) == want and s["duplicates"] == 0, (
        "seen set survives the restart: ESP list has %d, "
        "want %d; status duplicates=%d sent=%d" % (
            esp_count(st, e), want, s["duplicates"], s["sent"]))
    assert s["sent"] == want and s["accepted"] == want, s
    assert s["codes"]["already_in_list"] == 0, s["codes"]


def test_esp_outage_and_bad_password():
    """HTTP 503 from the ESP for a while: the job retries and completes.
    A wrong password (non-retryable): job failed with a clear status, the
    request dead-lettered, the password in no status."""
    st = shared()
    lid = bulk(st, 300, "outage")
    e = Esp.new()
    f0 = st.esp_admin("GET", "/_admin/stats")["faults_injected"]
    st.esp_admin("POST", "/_admin/faults", {"error_rate": 1.0,
                                            "fault": "http", "status": 503})
    try:
        r = request(st, "tenant-c", lid, e, P_DIS)
        st.wait_for(lambda: st.esp_admin("GET", "/_admin/stats")[
            "faults_injected"] >= f0 + 2, 30, 0.2, "injected ESP faults")
        time.sleep(2)
        assert job(st, "tenant-c", r).get("state") != "done"
    finally:
        st.esp_admin("DELETE", "/_admin/faults")
    j = wait_job(st, "tenant-c", r, timeout=60)
    assert j["state"] == "done", j
    assert esp_count(st, e) == 300
    s = check_status(st, lid, r)
    assert s["sent"] == 300 and s["accepted"] == 300, s
    assert not dead(st, r)

    # bad password
    try:
        start_ls(_pw="wrong-password-xyz")
        e2 = Esp.new()
        st.esp_admin("POST", "/_admin/lists/" + e2, {"recipients": [
            {"id": "keep@x.example", "email": "keep@x.example",
             "attributes": {}}]})
        r2 = request(st, "tenant-c", lid, e2, P_DIS)
        j = wait_job(st, "tenant-c", r2, timeout=60)
        assert j["state"] == "failed", j
        s = check_status(st, lid, r2, state="failed")
        assert "Invalid credentials" in s["reason"], s["reason"]
        assert "wrong-password-xyz" not in json.dumps(s)
        assert ESP_PW not in json.dumps(s)
        dl = st.wait_for(lambda: dead(st, r2), 20, 0.5, "dead letter")
        assert len(dl) == 1, dl
        msg = dl[0]["headers"].get("crmsync.error.message") or ""
        assert "Invalid credentials" in msg, dl[0]["headers"]
        assert "wrong-password-xyz" not in json.dumps(dl[0]["headers"])
        assert esp_count(st, e2) == 1, "ESP list touched"
        logs = open(Shared.ls.log_path, "rb").read().decode("utf-8",
                                                           "replace")
        assert "wrong-password-xyz" not in logs, "password in the log"
    finally:
        start_ls()


TESTS = [
    test_full_refresh_filters,
    test_mapping,
    test_dedupe,
    test_refusal_codes_fed_back,
    test_unsubscribe_before_sync_and_barrier,
    test_session_expiry_mid_job,
    test_sigkill_restart_and_duplicate,
    test_esp_outage_and_bad_password,
    test_barrier_timeout,
    test_incremental_membership,
    test_dynamic_list,
]


def on_fail():
    if Shared.ls is not None and not Shared.ls.alive:
        print(Shared.ls.describe())
    elif Shared.ls is not None:
        print("list-sync worker log (job lines):")
        for line in Shared.ls.logs()[-400:]:
            msg = str(line.get("msg", line.get("raw", "")))
            if "job" in msg or line.get("level") != "info":
                print("  " + msg[:300])


def main(argv):
    return run_scenarios(TESTS, argv, on_fail, close_shared)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
