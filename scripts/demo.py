"""The crmsync demo: the whole fleet on the embedded stack.

Starts the mock Kafka cluster, redis-server and the Dataverse emulator,
every built worker, produces a sample stream of ESP events (duplicates and
poison messages included), waits until every consumer group has lag 0 and
prints what landed in the CRM and in the dead-letter topics. The bounce
worker gets a consent catalog, people in the CRM and a bounce / opt-out
stream of its own (see BounceDemo). The list-sync worker then mirrors a
marketing list of a few thousand contacts to the Optimizely Campaign
emulator (see ListSyncDemo), with the request produced as the daily
CronJob does. Every part checks its numbers against
what the demo's own oracle expects from the stream it produced; the exit
status is 1 on any mismatch. Then it keeps the stack up (metrics on the
printed ports) until Ctrl-C, or exits at once with --exit.
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
from stack import (DEFAULT_TOPICS, Stack, bounce_event,  # noqa: E402
                   poison_events, sample_bounce_events,
                   sample_response_events, seed_for_events, split_series)


def hr(title):
    print("\n== %s %s" % (title, "=" * max(0, 70 - len(title))))


# -- the bounce / opt-out part ---------------------------------------------
# A small CI-J consent catalog, people with emailaddress1 in the CRM and a
# bounce stream whose end state the demo computes itself (the oracle) and
# then checks against the emulator, Redis, the DLQ and the worker's metrics.

BOUNCE_TENANT = "tenant-demo"
P_NEWS = "6a0e4c7e-0b1d-4c55-9f0a-00000000de01"     # Commercial
P_OFFERS = "6a0e4c7e-0b1d-4c55-9f0a-00000000de02"   # Commercial
P_INVOICES = "6a0e4c7e-0b1d-4c55-9f0a-00000000de03"  # Transactional
COMMERCIAL, TRANSACTIONAL = 534120000, 534120001    # msdynmkt_type
OPTED_IN, OPTED_OUT = 534120001, 534120002          # msdynmkt_value
PURPOSE_NAMES = {P_NEWS: "Newsletter", P_OFFERS: "Offers",
                 P_INVOICES: "Invoices"}
DOMAIN = "bounce-demo.example"
HOUR = 3600 * 1000
DAY = 24 * HOUR
PK = {"contacts": "contactid", "accounts": "accountid", "leads": "leadid"}


def addr(local):
    return "%s@%s" % (local, DOMAIN)


def rid(set_name, address):
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "crmsync-demo:%s:%s"
                          % (set_name, address)))


class BounceDemo:
    """The bounce stream (phase 1: everything; phase 2, after lag 0:
    redeliveries, a re-report, an older resubscribe and a bounce reset) and
    the state it must leave behind."""

    def __init__(self, now_ms, seed=7):
        self.t0 = now_ms - 5 * DAY
        self.sample_addrs = [addr("reader%02d" % i) for i in range(1, 9)]
        # (set, address) of every seeded person; one address on two sets.
        self.people = [("contacts", a) for a in self.sample_addrs]
        self.people += [("contacts", addr(x)) for x in (
            "unsub-mixed", "by-entity", "spam", "hard-2x", "soft-5x",
            "soft-4x", "outbounce", "reset")]
        self.people += [("accounts", addr("channel-unsub")),
                        ("leads", addr("hard-3x")),
                        ("leads", addr("outbounce"))]
        sample, exp = sample_bounce_events(
            self.sample_addrs, {BOUNCE_TENANT: [P_NEWS, P_OFFERS]},
            per_key=4, seed=seed, start_ms=now_ms - 14 * DAY,
            status_events=2)
        self.n_sample = len(sample)
        self.n = 0
        # consent oracle: (address, purpose) -> opted out?
        self.consent = {(a, c): out for (_, a, c), (_, out)
                        in exp["consent"].items()}
        self.bounced = {a for a, (_, b) in exp["bounce"].items() if b}
        self.dead = []            # expected DLQ reason prefixes
        self.kinds = collections.Counter()   # kind -> events produced
        self.fixed = collections.Counter()   # (kind, outcome) -> expected
        for e in sample:
            self.kinds[e["kind"]] += 1
        self.phase1 = list(sample)
        self.phase2 = []
        self._hand_made()
        self.phase1 += poison_events("poison-bounce")

    def ev(self, t, kind, email=None, phase=1, outcome=None, **kw):
        self.n += 1
        e = bounce_event("demo-b-%03d" % self.n, BOUNCE_TENANT, t, kind,
                         email=email, **kw)
        (self.phase1 if phase == 1 else self.phase2).append(e)
        # An event rejected before its kind is read (no event time) is
        # counted with kind="UNKNOWN".
        self.kinds[kind if t > 0 else "UNKNOWN"] += 1
        if outcome:
            self.fixed[(kind, outcome)] += 1
        return e

    def again(self, e, outcome, new_id=False):
        """A redelivery (same event id) or a re-report (new id, same
        content) in phase 2."""
        c = dict(e)
        if new_id:
            self.n += 1
            c["event_id"] = "demo-b-%03d" % self.n
        self.phase2.append(c)
        self.kinds[c["kind"]] += 1
        self.fixed[(c["kind"], outcome)] += 1
        return c

    def _hand_made(self):
        t0 = self.t0
        # Unsubscribe / resubscribe, arriving out of time order: the newest
        # event per consent wins (Newsletter out, Offers in again).
        a = addr("unsub-mixed")
        self.ev(t0 + 2 * HOUR, "UNSUBSCRIBE", a, consent_id=P_NEWS,
                source="LINK", reason="too many mails")
        self.ev(t0 + 1 * HOUR, "UNSUBSCRIBE", a, consent_id=P_OFFERS,
                source="LINK")
        self.ev(t0 + 1 * HOUR, "RESUBSCRIBE", a, consent_id=P_NEWS,
                source="PREFERENCE_PAGE")                       # older
        self.ev(t0 + 3 * HOUR, "RESUBSCRIBE", a, consent_id=P_OFFERS,
                source="PREFERENCE_PAGE")
        self.consent[(a, P_NEWS)] = True
        self.consent[(a, P_OFFERS)] = False
        # The ESP names only the CRM contact: its emailaddress1 is read.
        a = addr("by-entity")
        self.ev(t0 + 4 * HOUR, "UNSUBSCRIBE", None, entity_type="contact",
                entity_id=rid("contacts", a), consent_id=P_OFFERS,
                source="LIST_UNSUBSCRIBE_HEADER", outcome="applied")
        self.consent[(a, P_OFFERS)] = True
        # Spam complaint: every commercial purpose out, Invoices untouched;
        # redelivered later (duplicate), then an older resubscribe (stale).
        a = addr("spam")
        spam = self.ev(t0 + 5 * HOUR, "SPAM_COMPLAINT", a, scope="CHANNEL",
                       source="FEEDBACK_LOOP", outcome="applied")
        self.again(spam, "duplicate")
        self.ev(t0 + 4 * HOUR, "RESUBSCRIBE", a, consent_id=P_NEWS,
                source="PREFERENCE_PAGE", phase=2, outcome="stale")
        self.consent[(a, P_NEWS)] = self.consent[(a, P_OFFERS)] = True
        # Client-wide unsubscribe of an account (List-Unsubscribe header);
        # re-reported later by the ESP with a new event id (duplicate).
        a = addr("channel-unsub")
        ch = self.ev(t0 + 6 * HOUR, "UNSUBSCRIBE", a, scope="CHANNEL",
                     source="LIST_UNSUBSCRIBE_HEADER", outcome="applied")
        self.again(ch, "duplicate", new_id=True)
        self.consent[(a, P_NEWS)] = self.consent[(a, P_OFFERS)] = True
        self.channel_out = {addr("spam"), addr("channel-unsub")}
        # Bounces against the thresholds (3 hard / 5 soft in 30 days): the
        # bounce that crosses is "applied" (an outbounce), the others
        # "counted".
        for local, n, hard in (("hard-3x", 3, True), ("hard-2x", 2, True),
                               ("soft-5x", 5, False), ("soft-4x", 4, False)):
            crosses = n == (3 if hard else 5)
            for i in range(n):
                last = i == n - 1
                self.ev(t0 + i * (DAY if hard else 6 * HOUR), "BOUNCE",
                        addr(local), scope="CHANNEL",
                        bounce_type="HARD" if hard else "SOFT",
                        smtp_status="5.1.1" if hard else "4.2.2",
                        mailing_id="M-2026-11",
                        outcome="applied" if crosses and last else "counted")
            if crosses:
                self.bounced.add(addr(local))
        self.outbounce_causes = {"hard": 1, "soft": 1}
        # An explicit outbounce (address on a contact and a lead: both are
        # flagged), redelivered later (duplicate).
        a = addr("outbounce")
        ob = self.ev(t0 + 7 * HOUR, "OUTBOUNCE", a, scope="CHANNEL",
                     outcome="applied")
        self.again(ob, "duplicate")
        self.bounced.add(a)
        # Outbounced, then the address was fixed: bounce reset (phase 2).
        a = addr("reset")
        self.ev(t0 + 1 * HOUR, "OUTBOUNCE", a, scope="CHANNEL",
                outcome="applied")
        self.ev(t0 + 8 * HOUR, "BOUNCE_RESET", a, scope="CHANNEL",
                reason="address corrected", phase=2, outcome="applied")
        # Events the worker must dead-letter (reason prefix) while the rest
        # proceeds.
        known = addr("unsub-mixed")
        for reason, kind, kw in (
                ("invalid-email", "UNSUBSCRIBE",
                 dict(email="not-an-address", consent_id=P_NEWS)),
                ("unknown-consent", "UNSUBSCRIBE",
                 dict(email=known,
                      consent_id="00000000-0000-0000-0000-0000000000ff")),
                ("recipient-not-found", "UNSUBSCRIBE",
                 dict(email=addr("nobody"), consent_id=P_NEWS)),
                ("missing-consent", "UNSUBSCRIBE", dict(email=known)),
                ("invalid-bounce", "BOUNCE",
                 dict(email=addr("hard-2x"), scope="CHANNEL",
                      smtp_status="2.0.0")),
                ("missing-timestamp", "UNSUBSCRIBE",
                 dict(email=known, consent_id=P_NEWS, t=0))):
            t = kw.pop("t", t0 + 9 * HOUR)
            self.ev(t, kind, outcome="dead", **kw)
            self.dead.append(reason)

    def seed(self, base):
        """base (the response demo's seed) plus the consent catalog and the
        people of the bounce stream."""
        seed = dict(base)
        seed["msdynmkt_purposes"] = [
            {"msdynmkt_purposeid": p, "msdynmkt_name": PURPOSE_NAMES[p],
             "msdynmkt_type": COMMERCIAL if p != P_INVOICES
             else TRANSACTIONAL} for p in (P_NEWS, P_OFFERS, P_INVOICES)]
        for set_name, a in self.people:
            rec = {PK[set_name]: rid(set_name, a), "emailaddress1": a}
            if set_name == "accounts":
                rec["name"] = "Account " + a.split("@")[0]
            else:
                rec["firstname"] = "Demo"
                rec["lastname"] = a.split("@")[0]
            seed[set_name] = list(seed.get(set_name, [])) + [rec]
        return seed

    def expected_sets(self):
        sup = {"cs:sup:b": set(self.bounced),
               "cs:sup:x:" + BOUNCE_TENANT: set(self.channel_out)}
        for p in (P_NEWS, P_OFFERS, P_INVOICES):
            sup["cs:sup:c:%s|%s" % (BOUNCE_TENANT, p)] = {
                a for (a, c), out in self.consent.items() if c == p and out}
        return sup


def bounce_report(st, w, demo, dead):
    """Prints the bounce summary; returns a list of mismatches."""
    problems = []

    def check(what, got, want):
        ok = got == want
        if not ok:
            problems.append("%s: got %s, expected %s" % (what, got, want))
        return "OK" if ok else "MISMATCH"

    hr("bounce worker: consent rows (msdynmkt_contactpointconsent4s)")
    rows = [r for r in st.dv_admin(
        "GET", "/_admin/records/msdynmkt_contactpointconsent4s")
        if (r.get("msdynmkt_contactpointvalue") or "").endswith("@" + DOMAIN)]
    got = {}
    for r in rows:
        k = (r["msdynmkt_contactpointvalue"].lower(),
             r.get("_msdynmkt_purposeid_value"))
        if k in got:
            problems.append("two consent rows for %s/%s" % k)
        got[k] = r.get("msdynmkt_value") == OPTED_OUT
    by = collections.Counter((PURPOSE_NAMES.get(p, p), out)
                             for (_, p), out in got.items())
    print("%-12s %10s %10s" % ("purpose", "opted out", "opted in"))
    for p in (P_NEWS, P_OFFERS, P_INVOICES):
        n = PURPOSE_NAMES[p]
        print("%-12s %10d %10d" % (n, by[(n, True)], by[(n, False)]))
    want_out = sum(demo.consent.values())
    print("rows: %d opted out, %d opted in; expected %d / %d -> %s" % (
        sum(got.values()), len(got) - sum(got.values()), want_out,
        len(demo.consent) - want_out, check("consent rows", got,
                                            demo.consent)))
    for k in sorted(set(got) | set(demo.consent)):
        if got.get(k) != demo.consent.get(k):
            print("  %s / %s: CRM %s, expected %s" % (
                k[0], PURPOSE_NAMES.get(k[1], k[1]), got.get(k),
                demo.consent.get(k)))
    if rows:
        r = max(rows, key=lambda r: r.get("msdynmkt_reason") or "")
        print("example: %s value=%s source=%s reason=%r" % (
            r.get("msdynmkt_contactpointvalue"), r.get("msdynmkt_value"),
            r.get("msdynmkt_source"), r.get("msdynmkt_reason")))

    hr("bounce worker: bounce status (crmsync_emailbounced)")
    flagged = set()
    nrec = 0
    status = {}
    for s in ("contacts", "accounts", "leads"):
        for r in st.dv_admin("GET", "/_admin/records/" + s):
            a = (r.get("emailaddress1") or "").lower()
            if not a.endswith("@" + DOMAIN):
                continue
            status.setdefault(a, []).append("%s %s on=%s" % (
                s[:-1], r.get("crmsync_emailbounced"),
                r.get("crmsync_emailbouncedon")))
            if r.get("crmsync_emailbounced") is True:
                flagged.add(a)
                nrec += 1
    print("%d addresses (%d records) bounced; expected %d -> %s" % (
        len(flagged), nrec, len(demo.bounced),
        check("bounced addresses", sorted(flagged), sorted(demo.bounced))))
    print("  " + ", ".join(sorted(a.split("@")[0] for a in flagged)))
    for a in sorted(flagged ^ demo.bounced):
        print("  %s: expected bounced=%s, CRM: %s" % (
            a, a in demo.bounced, "; ".join(status.get(a, ["no record"]))))

    hr("bounce worker: suppression sets in Redis (list-sync reads these)")
    for key, want in demo.expected_sets().items():
        members = {m.decode() if isinstance(m, bytes) else m
                   for m in st.redis("SMEMBERS", key) or []}
        print("  %-62s %3d  %s" % (key, len(members), check(
            key, sorted(members), sorted(want))))

    hr("bounce worker: dead letters (crmsync.bounce.events.dlq)")
    reasons = collections.Counter()
    poison = 0
    for d in dead:
        h = d["headers"]
        msg = h.get("crmsync.error.message") or ""
        print("  %-14s %s" % (h.get("crmsync.error.class"), msg[:90]))
        if h.get("crmsync.error.class") == "INVALID_EVENT":
            reasons[msg.split(":")[0]] += 1
        else:
            poison += 1
    print("%d dead letters: %d rejected events + %d poison messages; "
          "expected %d + 3 -> %s" % (
              len(dead), sum(reasons.values()), poison, len(demo.dead),
              check("dead letters", (sorted(reasons.elements()), poison),
                    (sorted(demo.dead), 3))))

    hr("bounce worker: crmsync_bounce_events_total")
    counts = collections.Counter()
    for series, v in w.metrics().items():
        fam, lab = split_series(series)
        if fam == "crmsync_bounce_events_total":
            counts[(lab.get("kind"), lab.get("outcome"))] += int(v)
    outcomes = sorted({o for _, o in counts})
    print("%-16s" % "kind" + "".join("%11s" % o for o in outcomes))
    for kind in sorted({k for k, _ in counts}):
        print("%-16s" % kind + "".join("%11d" % counts[(kind, o)]
                                       for o in outcomes))
    per_kind = collections.Counter()
    for (k, _), v in counts.items():
        per_kind[k] += v
    print("events per kind = produced per kind -> %s" % check(
        "events per kind", dict(per_kind), dict(demo.kinds)))
    fixed_got = {k: counts[k] for k in demo.fixed
                 if k[0] in ("BOUNCE", "SPAM_COMPLAINT")}
    fixed_want = {k: v for k, v in demo.fixed.items()
                  if k[0] in ("BOUNCE", "SPAM_COMPLAINT")}
    print("bounce/spam outcomes as expected -> %s" % check(
        "BOUNCE/SPAM_COMPLAINT outcomes", fixed_got, fixed_want))
    print("dead = %d -> %s" % (
        sum(v for (_, o), v in counts.items() if o == "dead"),
        check("dead outcome", sum(v for (_, o), v in counts.items()
                                  if o == "dead"), len(demo.dead))))
    causes = {c: w.metric("crmsync_bounce_outbounces_total", cause=c)
              for c in ("hard", "soft", "event")}
    print("outbounces: hard %d, soft %d, event %d (hard/soft expected 1/1)"
          " -> %s"
          % (causes["hard"], causes["soft"], causes["event"],
             check("threshold outbounces",
                   (causes["hard"], causes["soft"]), (1, 1))))
    return problems


# -- the list-sync part -----------------------------------------------------
# One static marketing list of a few thousand contacts (bulk-seeded, with
# inactive records, invalid and duplicate addresses, outbounced and
# suppressed addresses, opt-outs in the CRM) plus the bounce part's people,
# mirrored to an Optimizely Campaign list (the ESP emulator, which refuses
# a few addresses as unsubscribed / blacklisted). The request is produced
# the way the daily CronJob does (crmsync-produce --stamp), then once more
# as the CronJob's retry the same day, which the worker must skip.

LS_LIST = "5e1f0000-0000-4000-8000-00000000d001"
LS_ESP_LIST = "9001"
LS_DOMAIN = "list-demo.example"
NON_RESTRICTIVE = 534120001  # msdynmkt_enforcementmodel


def ls_addr(n):
    return "member%d@%s" % (n, LS_DOMAIN)


class ListSyncDemo:
    """The marketing list and what a full refresh must do with it. The
    list uses the Newsletter purpose, made non-restrictive (members without
    a consent row are mailed, opted-out ones are not)."""

    def __init__(self, n=3000):
        self.n = n
        r = range(n)
        self.inactive = [i for i in r if i % 10 == 3]
        self.outbounced = [i for i in r if i % 50 == 7]
        self.suppressed = [i for i in r if i % 100 == 45]
        self.opted_out = [i for i in r if i % 100 == 11]
        self.esp_unsub = [i for i in r if i % 1000 == 88]
        self.esp_black = [i for i in r if i % 1000 == 98]
        self.n_invalid = 6
        self.dup_of = [20, 21, 22]  # written in upper case once more

    def seed(self, seed):
        """Adds the purpose's enforcement model and the CRM opt-outs."""
        seed = dict(seed)
        seed["msdynmkt_purposes"] = [
            dict(p, msdynmkt_enforcementmodel=NON_RESTRICTIVE)
            if p["msdynmkt_purposeid"] == P_NEWS else p
            for p in seed.get("msdynmkt_purposes", [])]
        seed["msdynmkt_contactpointconsent4s"] = list(
            seed.get("msdynmkt_contactpointconsent4s", [])) + [{
                "msdynmkt_contactpointvalue": ls_addr(i),
                "msdynmkt_contactpointtype": 534120000,
                "msdynmkt_contactpointconsenttype": 534120000,
                "msdynmkt_value": OPTED_OUT,
                "msdynmkt_purposeId@odata.bind":
                    "/msdynmkt_purposes(%s)" % P_NEWS}
            for i in self.opted_out]
        return seed

    def setup(self, st, bdemo):
        """The list in the CRM, suppression entries in Redis."""
        st.dv_admin("POST", "/_admin/bulk-list", {
            "list_id": LS_LIST, "entity": "contact", "count": self.n,
            "listname": "Newsletter DE (daily)",
            "email_pattern": "member{n}@" + LS_DOMAIN,
            "fields": {"firstname": "Reader", "lastname": "No {n}"},
            "every": [{"n": 10, "offset": 3,
                       "fields": {"statecode": 1, "statuscode": 2}}]})
        st.dv_admin("POST", "/_admin/bulk-list", {
            "list_id": LS_LIST, "entity": "contact",
            "count": self.n_invalid, "email_pattern": "no-at-sign-{n}",
            "fields": {"firstname": "Broken", "lastname": "{n}"}})
        st.dv_admin("POST", "/_admin/bulk-list", {
            "list_id": LS_LIST, "entity": "contact",
            "count": len(self.dup_of), "start": self.dup_of[0],
            "email_pattern": "MEMBER{n}@List-Demo.EXAMPLE",
            "fields": {"firstname": "Twin", "lastname": "{n}"}})
        self.bounce_people = []
        if bdemo:
            self.bounce_people = [a for s, a in bdemo.people
                                  if s == "contacts"]
            st.dv_admin("POST", "/_admin/records/listmembers", [
                {"listmemberid": str(uuid.uuid4()), "_listid_value": LS_LIST,
                 "_entityid_value": rid("contacts", a)}
                for a in self.bounce_people])
        st.redis("SADD", "cs:sup:b", *[ls_addr(i) for i in self.outbounced])
        st.redis("SADD", "cs:sup:x:" + BOUNCE_TENANT,
                 *[ls_addr(i) for i in self.suppressed])

    def expected(self, bdemo):
        """The job status's counts. A member is counted under the first
        reason that applies, in the worker's order: invalid email,
        inactive, no consent (the CRM's rows), then outbounced and
        suppressed (Redis), then duplicates."""
        sets = bdemo.expected_sets() if bdemo else {}
        out_b = set(sets.get("cs:sup:b", ()))
        sup = set(sets.get("cs:sup:x:" + BOUNCE_TENANT, ())) | set(
            sets.get("cs:sup:c:%s|%s" % (BOUNCE_TENANT, P_NEWS), ()))
        crm_out = {a for (a, c), out in (bdemo.consent.items() if bdemo
                                         else ()) if c == P_NEWS and out}
        b_nc = [a for a in self.bounce_people if a in crm_out]
        b_out = [a for a in self.bounce_people
                 if a not in crm_out and a in out_b]
        b_sup = [a for a in self.bounce_people
                 if a not in crm_out and a not in out_b and a in sup]
        filt = {"invalid_email": self.n_invalid,
                "inactive": len(self.inactive),
                "qualified_lead": 0,
                "outbounced": len(self.outbounced) + len(b_out),
                "suppressed": len(self.suppressed) + len(b_sup),
                "no_consent": len(self.opted_out) + len(b_nc)}
        read = self.n + self.n_invalid + len(self.dup_of) + len(
            self.bounce_people)
        sent = read - sum(filt.values()) - len(self.dup_of)
        refused = len(self.esp_unsub) + len(self.esp_black)
        return {"state": "done", "read": read, "filtered": filt,
                "duplicates": len(self.dup_of), "sent": sent,
                "accepted": sent - refused, "refused": refused,
                "unsubscribed": len(self.esp_unsub),
                "blacklisted": len(self.esp_black),
                "feedback_events": refused,
                "bounce_filtered": (b_nc, b_out, b_sup)}


def start_esp(st):
    """The Optimizely Campaign emulator, owned by the stack (stopped with
    it). Returns its base URL."""
    pf = os.path.join(st.workdir, "esp.port")
    p = st._start("esp", [sys.executable, os.path.join(
        REPO, "tests", "emulators", "optimizely_emulator.py"), "--port", "0",
        "--port-file", pf, "--mandator", "123", "--user", "demo-api",
        "--password", "demo-esp-password", "--quiet"])
    return "http://127.0.0.1:%d" % int(st._wait_file(p, pf, 30))


def http_json(url, body=None, timeout=30):
    req = urllib.request.Request(
        url, data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


# -- the trigger part ----------------------------------------------------
# An abandoned-cart journey with second-scale durations (the real one in
# workers/trigger/journeys.example.yaml waits hours): 6 carts, 2 buyers
# check out after the first reminder, 1 cart is too small to qualify; and
# a won opportunity -> task for the sales manager + CI-J custom trigger.

DEMO_JOURNEYS = """journeys:
  - id: abandoned-cart
    start:
      trigger: cart.abandoned
      conditions:
        - {attribute: cart_value, op: gte, value: "50"}
    reentry: always
    steps:
      - reminder:
          action: {type: esp_mail, mailing: "1001", list: "2001"}
          first_after: 1s
          every: 2s
          max: 3
          until: [checkout.completed]
          deadline: 1h
  - id: won-opportunity
    start: {trigger: opportunity.won, kind: BUSINESS}
    steps:
      - action:
          type: crm_task
          subject: "Follow up {{attr.opportunity_name}}"
          owner: "5a000000-0000-0000-0000-000000000001"
          due_in: 2d
      - action:
          type: crm_trigger
          name: msdynmkt_opportunitywon
          parameters: {msdynmkt_textvariable1: "{{attr.opportunity_name}}"}
"""


def cli(st, *args):
    """Runs the operator CLI (build/tools/crmsync) against the stack."""
    path = os.path.join(st.build_dir, "tools", "crmsync")
    out = subprocess.run([path] + list(args) + ["-b", st.bootstrap],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, timeout=120)
    if out.returncode not in (0, 3):
        sys.stdout.write(out.stderr)
    return out


def trigger_event(name, cid, email, attrs, kind="CUSTOM"):
    return {"event_id": "demo-%s" % uuid.uuid4(), "tenant": "demo",
            "occurred_at": int(time.time() * 1000),
            "source_system": "demo-shop",
            "recipient": {"entity_type": "contact", "entity_id": cid,
                          "email": email},
            "trigger_kind": kind, "trigger_name": name, "journey_id": None,
            "attributes": attrs, "deadline": None,
            "__key": "contact:%s" % cid}


def trigger_run(st, procs):
    """Starts an ESP emulator and the trigger worker, runs the journeys,
    prints mails / tasks / custom triggers and returns mismatches."""
    problems = []
    hr("trigger: journeys (abandoned cart, won opportunity)")
    pf = os.path.join(st.workdir, "esp-trigger.port")
    p = st._start("esp-trigger", [sys.executable, os.path.join(
        REPO, "tests", "emulators", "optimizely_emulator.py"), "--port", "0",
        "--port-file", pf, "--mandator", "123", "--user", "demo-api",
        "--password", "demo-esp-password", "--quiet", "--lists", "2001",
        "--mailings", "1001:2001"])
    esp = "http://127.0.0.1:%d" % int(st._wait_file(p, pf, 30))
    path = os.path.join(st.workdir, "demo-journeys.yaml")
    with open(path, "w") as f:
        f.write(DEMO_JOURNEYS)
    cfg = {"trigger.journeys": path, "trigger.tick_ms": 50,
           "esp.base_url": esp + "/soap11", "esp.mandator_id": "123",
           "esp.user": "demo-api"}
    w = st.start_worker("trigger", st.worker_config("trigger", cfg),
                        env={"CRMSYNC_ESP_PASSWORD": "demo-esp-password"})
    w.wait_ready(60)
    procs["trigger"] = w
    print("  ESP emulator     %s" % esp)
    print("  worker trigger   pid %d, metrics http://127.0.0.1:%s/metrics"
          % (w.pid, w.metrics_port))
    people = []
    for i in range(7):
        cid = str(uuid.uuid4())
        email = "shopper%d@trigger-demo.example" % i
        st.dv_admin("POST", "/_admin/records/contacts",
                    {"contactid": cid, "emailaddress1": email,
                     "firstname": "Shopper", "lastname": str(i)})
        people.append((cid, email))
    values = ["120", "80", "65", "300", "55", "20"]
    topic = DEFAULT_TOPICS["trigger"]
    st.produce(topic, [trigger_event("cart.abandoned", c, e,
                                     {"cart_value": v})
                       for (c, e), v in zip(people, values)], schema_id=6)
    st.produce(topic, [trigger_event(
        "opportunity.won", people[6][0], people[6][1],
        {"opportunity_name": "Fleet renewal 2027"}, kind="BUSINESS")],
        schema_id=6)
    print("6 abandoned carts (one of 20 EUR, below the journey's 50) and "
          "1 won opportunity -> %s" % topic)

    def mails():
        return http_json(esp + "/_admin/mails")

    st.wait_for(lambda: len(mails()) >= 5, 30, 0.1, "first reminders")
    st.produce(topic, [trigger_event("checkout.completed", c, e, {})
                       for c, e in people[:2]], schema_id=6)
    print("2 shoppers check out after the first reminder")
    st.wait_for(lambda: len(mails()) >= 11, 30, 0.1, "all reminders")
    time.sleep(3)
    got = collections.Counter(m["recipient_id"] for m in mails())
    print("%-36s %s" % ("reminder mails (mailing 1001) to", "count"))
    for _, e in people[:6]:
        print("%-36s %d" % (e, got.get(e, 0)))
    want = {people[0][1]: 1, people[1][1]: 1, people[2][1]: 3,
            people[3][1]: 3, people[4][1]: 3}
    ok = dict(got) == want
    if not ok:
        problems.append("reminders: got %s, expected %s" % (dict(got), want))
    print("checkout stops reminders, max 3 otherwise, small cart none -> %s"
          % ("OK" if ok else "MISMATCH"))
    tasks = [t for t in st.dv_admin("GET", "/_admin/records/tasks")
             if t.get("_regardingobjectid_value") == people[6][0]]
    calls = [a for a in st.dv_admin("GET", "/_admin/actions")
             if a["action"] == "msdynmkt_opportunitywon"]
    print("won opportunity: %d task(s) %s; %d custom trigger call(s) %s" % (
        len(tasks), [t.get("subject") for t in tasks], len(calls),
        [c["parameters"].get("msdynmkt_textvariable1") for c in calls]))
    if len(tasks) != 1 or len(calls) != 1:
        problems.append("won opportunity: %d tasks, %d triggers, expected "
                        "1 and 1" % (len(tasks), len(calls)))
    print("crmsync_trigger_actions_total: %s" % {
        k: v for k, v in w.metrics().items()
        if k.startswith("crmsync_trigger_actions_total")})
    return problems


def listsync_run(st, ldemo, bdemo, procs):
    """Starts the ESP emulator and the list-sync worker, produces the
    daily request (and its retry), waits for the job, prints the summary
    and returns a list of mismatches."""
    problems = []

    def check(what, got, want):
        if got != want:
            problems.append("%s: got %s, expected %s" % (what, got, want))
            return "MISMATCH"
        return "OK"

    hr("list sync: CRM marketing list -> ESP recipient list")
    esp = start_esp(st)
    http_json(esp + "/_admin/unsubscribes",
              {"addresses": [ls_addr(i) for i in ldemo.esp_unsub]})
    http_json(esp + "/_admin/blacklist",
              {"addresses": [ls_addr(i) for i in ldemo.esp_black]})
    cfg = {"esp.base_url": esp + "/soap11", "esp.mandator_id": "123",
           "esp.user": "demo-api", "esp.batch_size": 500,
           "listsync.lease_ms": 10000, "listsync.barrier_timeout_s": 30,
           # look at the running job every second, not with a growing
           # backoff, so the demo moves on as soon as it ends
           "consumer.retry_backoff_max_ms": 1000}
    if not bdemo:
        cfg["listsync.barrier_topics"] = ""
    w = st.start_worker("listsync", st.worker_config("listsync", cfg),
                        env={"CRMSYNC_ESP_PASSWORD": "demo-esp-password"})
    w.wait_ready(60)
    procs["listsync"] = w
    print("  ESP emulator     %s (3 addresses preloaded as unsubscribed, "
          "3 as blacklisted)" % esp)
    print("  worker listsync  pid %d, metrics http://127.0.0.1:%s/metrics"
          % (w.pid, w.metrics_port))
    exp = ldemo.expected(bdemo)
    print("list 'Newsletter DE (daily)': %d contacts (%d inactive, %d "
          "without a valid address, %d written twice), %d of them "
          "outbounced and %d suppressed in Redis, %d opted out in the CRM; "
          "plus the bounce part's %d contacts" % (
              ldemo.n + ldemo.n_invalid + len(ldemo.dup_of),
              len(ldemo.inactive), ldemo.n_invalid, len(ldemo.dup_of),
              len(ldemo.outbounced), len(ldemo.suppressed),
              len(ldemo.opted_out), len(ldemo.bounce_people)))

    # The CronJob's line and its producer (deploy/base/listsync).
    lists = os.path.join(st.workdir, "lists.jsonl")
    with open(lists, "w") as f:
        f.write(json.dumps({"tenant": BOUNCE_TENANT, "crm_list_id": LS_LIST,
                            "esp_list_id": LS_ESP_LIST,
                            "consent_id": P_NEWS}) + "\n")
    argv = [st.tool("produce"), "-b", st.bootstrap, "-t",
            DEFAULT_TOPICS["listsync"], "-s", os.path.join(REPO, "schemas"),
            "-i", "4", "--stamp", "-f", lists]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    eid = "daily|%s|%s|%s" % (BOUNCE_TENANT, LS_LIST, time.strftime(
        "%Y-%m-%d", time.gmtime()))
    print("crmsync-produce --stamp -f lists.jsonl -> request %s" % eid)
    t0 = time.monotonic()
    key = "cs:ls:job:%s|%s" % (BOUNCE_TENANT, eid)

    def ended():
        raw = st.redis("HGET", key, "state")
        state = raw.decode() if isinstance(raw, bytes) else raw
        return state if state in ("done", "failed") else None
    try:
        st.wait_for(ended, 90, 0.3, "list-sync job %s ends" % eid)
    except AssertionError as e:
        problems.append(str(e))
        print("job did not end: %s\n%s" % (e, w.describe()))
        return problems
    st.wait_lag_zero("crmsync-listsync", DEFAULT_TOPICS["listsync"], 60)
    took = time.monotonic() - t0
    # The CronJob retried the same day: the same event id, skipped.
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    st.wait_lag_zero("crmsync-listsync", DEFAULT_TOPICS["listsync"], 60)

    status = None
    for r in st.dv_admin("GET", "/_admin/records/lists"):
        if r.get("listid") == LS_LIST and r.get("crmsync_syncstatus"):
            status = json.loads(r["crmsync_syncstatus"])
            synced = r.get("crmsync_lastsyncon")
    results = [json.loads(m["value"]) for m in
               st.consume_all("crmsync.listsync.results")
               if m["key"] == LS_LIST]
    stats = http_json(esp + "/_admin/stats")
    count = http_json(esp + "/_admin/lists/%s?limit=1" % LS_ESP_LIST)["count"]
    s = status or {}
    codes = s.get("codes") or {}
    print("job %s after %.1fs (state %s, attempt %s); status on the CRM "
          "list (crmsync_syncstatus, synced %s) and %d message(s) on "
          "crmsync.listsync.results" % (
              s.get("request"), took, s.get("state"), s.get("attempt"),
              status and synced, len(results)))
    rows = [("read from the CRM list", s.get("read"), exp["read"])]
    for k, v in exp["filtered"].items():
        rows.append(("  filtered: " + k.replace("_", " "),
                     (s.get("filtered") or {}).get(k), v))
    rows += [("  duplicates (same address)", s.get("duplicates"),
              exp["duplicates"]),
             ("sent to the ESP (addAll3)", s.get("sent"), exp["sent"]),
             ("  accepted (code 0)", s.get("accepted"), exp["accepted"]),
             ("  refused", s.get("refused"), exp["refused"]),
             ("    unsubscribed (2)", codes.get("unsubscribed"),
              exp["unsubscribed"]),
             ("    blacklisted (3)", codes.get("blacklisted"),
              exp["blacklisted"]),
             ("  fed back as opt-outs", s.get("feedback_events"),
              exp["feedback_events"]),
             ("ESP list %s recipients" % LS_ESP_LIST, count,
              exp["accepted"]),
             ("results on the topic", len(results), 1),
             ("ESP clear calls (retry skipped)",
              stats["calls"].get("RpcRecipient.clear"), 1),
             ("duplicate requests skipped",
              int(w.metric("crmsync_messages_duplicate_total")), 1)]
    print("%-34s %8s %9s" % ("", "got", "expected"))
    for what, got, want in rows:
        print("%-34s %8s %9s  %s" % (what, got, want, check(
            "list sync " + what.strip(), got, want)))
    b_nc, b_out, b_sup = exp["bounce_filtered"]
    if b_nc or b_out or b_sup:
        print("from the bounce part: opted out in the CRM %s; outbounced "
              "%s; suppressed %s" % tuple(
                  ", ".join(a.split("@")[0] for a in x) or "-"
                  for x in (b_nc, b_out, b_sup)))
    check("list sync state", s.get("state"), "done")
    if results:
        check("results topic = CRM status",
              {k: results[-1].get(k) for k in ("read", "sent", "accepted")},
              {k: s.get(k) for k in ("read", "sent", "accepted")})
    # The refused recipients went back through the bounce/opt-out topic:
    # once the bounce worker applied them, Redis (and the CRM) agree with
    # the ESP, so the next refresh filters them before sending.
    if bdemo and "bounce" in procs:
        st.wait_lag_zero("crmsync-bounce", DEFAULT_TOPICS["bounce"], 60)
        refused = {ls_addr(i) for i in ldemo.esp_unsub + ldemo.esp_black}
        key = "cs:sup:c:%s|%s" % (BOUNCE_TENANT, P_NEWS)
        have = {m.decode() if isinstance(m, bytes) else m
                for m in st.redis("SMEMBERS", key) or []}
        print("ESP refusals applied by the bounce worker (%s): %d of %d "
              "-> %s" % (key, len(refused & have), len(refused), check(
                  "ESP refusals in " + key, sorted(refused & have),
                  sorted(refused))))
    sample = http_json(esp + "/_admin/lists/%s?limit=1" % LS_ESP_LIST)
    if sample.get("recipients"):
        print("example recipient: %s" % json.dumps(sample["recipients"][0])
              [:300])
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build-dir", default=os.path.join(REPO, "build", "dev"))
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--exit", action="store_true",
                    help="stop the stack right after printing the result")
    args = ap.parse_args()

    built = [w for w in sorted(DEFAULT_TOPICS) if os.path.exists(
        os.path.join(args.build_dir, "workers", "crmsync-" + w))]
    # list-sync and trigger need the ESP emulator: started later by their
    # own parts
    workers = [w for w in built if w not in ("listsync", "trigger")]
    with Stack(build_dir=os.path.abspath(args.build_dir),
               source_dir=REPO) as st:
        print("starting mock Kafka cluster, redis-server, Dataverse emulator")
        st.start_kafka()
        st.start_redis(password="demo-redis-password")
        events, expected = sample_response_events(args.events, seed=42)
        seed = seed_for_events(events)
        bdemo = None
        if "bounce" in workers:
            bdemo = BounceDemo(int(time.time()) * 1000)
            seed = bdemo.seed(seed)
        ldemo = None
        if "listsync" in built:
            ldemo = ListSyncDemo()
            seed = ldemo.seed(seed)
        st.start_dataverse(seed=seed)
        print("  kafka bootstrap: %s" % st.bootstrap)
        print("  redis:           127.0.0.1:%d (password protected)"
              % st.redis_port)
        print("  dataverse:       %s" % st.dv_url)

        procs = {}
        for w in workers:
            cfg = {}
            if w == "bounce":  # retry fast after the catalog re-read
                cfg = {"consumer.retry_backoff_max_ms": 2000}
            procs[w] = st.start_worker(w, st.worker_config(w, cfg))
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
        if bdemo:
            btopic = DEFAULT_TOPICS["bounce"]
            st.produce(btopic, bdemo.phase1, schema_id=3)
            print("%d bounce events (%d sampled opt-outs/opt-ins/outbounces/"
                  "resets with duplicates, %d hand-made, %d to be rejected) "
                  "+ 3 poison messages -> %s" % (
                      len(bdemo.phase1) - 3, bdemo.n_sample,
                      len(bdemo.phase1) - 3 - bdemo.n_sample,
                      len(bdemo.dead), btopic))
        for w in workers:
            st.wait_lag_zero("crmsync-" + w, DEFAULT_TOPICS[w], timeout=300)
        if bdemo:
            # After the first part is committed: redeliveries, a re-report,
            # an older resubscribe and a bounce reset.
            st.produce(btopic, bdemo.phase2, schema_id=3)
            print("%d more bounce events later (redeliveries, a re-report, "
                  "an older resubscribe, a bounce reset) -> %s"
                  % (len(bdemo.phase2), btopic))
            st.wait_lag_zero("crmsync-bounce", btopic, timeout=300)
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
        problems = []
        if len(recs) != len(expected):
            problems.append("campaignresponses: got %d, expected %d"
                            % (len(recs), len(expected)))
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

        if bdemo:
            problems += bounce_report(
                st, procs["bounce"], bdemo,
                st.consume_all(DEFAULT_TOPICS["bounce"] + ".dlq"))

        hr("dead-letter topics (crmsync dlq list)")
        for w in workers:
            if w == "bounce":
                continue  # listed with its reasons above
            dlq = DEFAULT_TOPICS[w] + ".dlq"
            dead = st.consume_all(dlq)
            print("$ crmsync dlq list -t %s" % dlq)
            out = cli(st, "dlq", "list", "-t", dlq)
            sys.stdout.write(out.stdout)
            if out.returncode != 0 or ("matched %d of" % len(dead)) not in \
                    out.stdout:
                problems.append("crmsync dlq list %s: exit %d, expected %d "
                                "message(s)" % (dlq, out.returncode,
                                                len(dead)))

        if ldemo:
            # After the bounce checks: the list's suppression entries go to
            # the same Redis sets.
            ldemo.setup(st, bdemo)
            problems += listsync_run(st, ldemo, bdemo, procs)

        if "trigger" in built:
            problems += trigger_run(st, procs)

        hr("consumer lag of every worker group (crmsync lag)")
        print("$ crmsync lag")
        out = cli(st, "lag")
        sys.stdout.write(out.stdout)
        if out.returncode != 0:
            problems.append("crmsync lag: exit %d (a group is not OK)"
                            % out.returncode)

        hr("result")
        for p in problems:
            print("MISMATCH " + p)
        print("all numbers as expected" if not problems else
              "%d mismatch(es)" % len(problems))
        rc = 1 if problems else 0
        if args.exit or not sys.stdin.isatty():
            print("\nstopping the stack")
            return rc
        print("\nstack is running; Ctrl-C stops everything")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            print("\nstopping the stack")
    return rc


if __name__ == "__main__":
    sys.exit(main())
