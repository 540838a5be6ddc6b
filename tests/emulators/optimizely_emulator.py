#!/usr/bin/env python3
"""Optimizely Campaign (ex optivo broadmail) SOAP 1.1 emulator for crmsync.

Python 3 standard library only.  Emulates the part of the RPC/encoded SOAP
API the list-sync and trigger workers use (/work/shared/reference/esp.md
1.1-1.3 and the recorded traffic in /work/shared/reference/golden/optimizely/):

  POST /soap11/RpcSession     login, logout
  POST /soap11/RpcRecipient   clear, addAll3, add2, remove, getCount,
                              getAll, getAllFlat
  POST /soap11/RpcMailing     sendMail (event mailings configured through
                              /_admin/mailings or --mailings; spooled mails
                              are logged at GET /_admin/mails)
  GET  /soap11/Rpc<Name>?wsdl the recorded WSDL (when the golden dir exists)

Requests may use named parts (sessionId anywhere, as Savon sends them) or
the WSDL's positional parts in0..inN; href/multiRef references in requests
are resolved.  Responses use the recorded shapes (multiRef for int, soapenc
arrays, faults as HTTP 500 soapenv:Server.userException).  A JSON test API
under /_admin exposes lists, suppression sets, mailings, the mail log,
fault injection and stats.

Usage:
  optimizely_emulator.py --port 0 --port-file FILE [--quiet]
      [--mandator ID --user U --password P] [--session-ttl SECONDS]
      [--max-batch N] [--lists ID,ID,...] [--multiref-order shuffled|sequential]
      [--mailings ID:LIST,LIST[:TYPE];ID:LIST...]

See tests/emulators/README.md for the API and fidelity notes.
"""

import argparse
import collections
import fnmatch
import json
import os
import random
import re
import secrets
import signal
import socket
import sys
import threading
import time
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_MANDATOR = "1234567890"
DEFAULT_USER = "api-user"
DEFAULT_PASSWORD = "api-password"
DEFAULT_TTL = 1200.0          # the real service: 20 minutes
DEFAULT_MAX_BATCH = 1000
HOSTNAME = "api-emulator.broadmail.local"

NS_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
NS_ENC = "http://schemas.xmlsoap.org/soap/encoding/"
NS_XSI = "http://www.w3.org/2001/XMLSchema-instance"
NS_AXIS = "http://xml.apache.org/axis/"
XSI_NIL = "{%s}nil" % NS_XSI
URN = "urn:api.broadmail.de/soap11/"

EXC = "broadmail.api.soap11.impl.WebserviceImplException: "
SESSION_EXC = ("optivo.core.util.DontLogMeException: "
               "broadmail.api.soap11.impl.InvalidWebserviceSessionException: "
               "Invalid sessionId: ")

GOLDEN_WSDL_DIRS = [
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                 "shared", "reference", "golden", "optimizely", "wsdl"),
    "/work/shared/reference/golden/optimizely/wsdl",
]

# service -> operation -> WSDL parameter order, each entry (name, aliases,
# kind) with kind in str | long | bool | array | array2.
P_SID = ("sessionId", (), "str")
P_LIST = ("recipientListId", ("listId",), "long")
OPS = {
    "RpcSession": {
        "login": [("mandatorId", ("mandator",), "long"),
                  ("user", ("username", "userName"), "str"),
                  ("password", (), "str")],
        "logout": [P_SID],
    },
    "RpcRecipient": {
        "clear": [P_SID, P_LIST],
        "addAll3": [P_SID, P_LIST,
                    ("optinProcessId", (), "long"),
                    ("recipientIds", (), "array"),
                    ("emailAddresses", ("addresses", "recipientAddresses"),
                     "array"),
                    ("attributeNames", (), "array"),
                    ("attributeValues", (), "array2")],
        "add2": [P_SID, P_LIST,
                 ("optinProcessId", (), "long"),
                 ("recipientId", (), "str"),
                 ("address", ("emailAddress",), "str"),
                 ("attributeNames", (), "array"),
                 ("attributeValues", (), "array")],
        "remove": [P_SID, P_LIST, ("recipientId", (), "str")],
        "getCount": [P_SID, P_LIST,
                     ("recipientFilterId", ("filterId",), "long")],
        "getAll": [P_SID, P_LIST, ("attributeNames", (), "array")],
        "getAllFlat": [P_SID, P_LIST, ("attributeNames", (), "array")],
    },
    "RpcMailing": {
        # int sendMail(String sessionId, long mailingId, long recipientListId,
        #              String recipientId)
        "sendMail": [P_SID, ("mailingId", (), "long"), P_LIST,
                     ("recipientId", (), "str")],
    },
}

EMAIL_RE = re.compile(r"^[^@\s\"(),:;<>\[\]\\]+@[A-Za-z0-9](?:[A-Za-z0-9-]*"
                      r"[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*"
                      r"[A-Za-z0-9])?)*\.[A-Za-z]{2,}$")
SEP = "\x1f"     # joins stored attribute values
NIL = "\x1e"     # marks a nil attribute value inside the joined string

# sendMail return values (MailingWebservice docs).
SEND_CODE_NAMES = {0: "spooled", 1: "blacklisted", 2: "unsubscribed",
                   3: "not_found", 4: "list_invalid", 5: "target_group",
                   6: "bounce_overflowed"}

CODE_NAMES = {0: "inserted", 1: "validation_failed", 2: "unsubscribed",
              3: "blacklisted", 4: "bounce_overflowed", 5: "already_in_list",
              6: "filtered", 7: "general_error"}


class Fault(Exception):
    """A SOAP fault: HTTP 500 unless status says otherwise."""

    def __init__(self, faultstring, code="soapenv:Server.userException",
                 kind="service"):
        super().__init__(faultstring)
        self.faultstring = faultstring
        self.code = code
        self.kind = kind


_NONASCII = re.compile(r"[^\x00-\x7f]")


def esc(s, attr=False):
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if attr:
        s = s.replace('"', "&quot;")
    if not s.isascii():
        # Axis writes non-ASCII as hex character references (&#xe4;).
        s = _NONASCII.sub(lambda m: "&#x%x;" % ord(m.group(0)), s)
    return s


HEAD = ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
        'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        '<soapenv:Body>')
TAIL = '</soapenv:Body></soapenv:Envelope>'
ENC_STYLE = 'soapenv:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"'
XMLNS_ENC = 'xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/"'


def fault_xml(code, faultstring):
    return (HEAD + "<soapenv:Fault><faultcode>%s</faultcode><faultstring>%s"
            "</faultstring><detail><ns1:hostname xmlns:ns1=\"%s\">%s"
            "</ns1:hostname></detail></soapenv:Fault>" % (
                code, esc(faultstring), NS_AXIS, HOSTNAME) + TAIL)


def resp_open(service, op):
    return '<ns1:%sResponse %s xmlns:ns1="%s%s">' % (op, ENC_STYLE, URN,
                                                     service)


def resp_void(service, op):
    return HEAD + '<ns1:%sResponse %s xmlns:ns1="%s%s"/>' % (
        op, ENC_STYLE, URN, service) + TAIL


def resp_string(service, op, value):
    return (HEAD + resp_open(service, op) +
            '<%sReturn xsi:type="soapenc:string" %s>%s</%sReturn>' % (
                op, XMLNS_ENC, esc(value), op) +
            '</ns1:%sResponse>' % op + TAIL)


def multiref(i, xsd_type, value):
    return ('<multiRef id="id%d" soapenc:root="0" %s xsi:type="%s" %s>%s'
            '</multiRef>' % (i, ENC_STYLE, xsd_type, XMLNS_ENC, value))


def resp_int(service, op, value):
    """int return as recorded: <opReturn href="#id0"/> + multiRef."""
    return (HEAD + resp_open(service, op) + '<%sReturn href="#id0"/>' % op +
            '</ns1:%sResponse>' % op + multiref(0, "xsd:int", int(value)) +
            TAIL)


def resp_int_array(service, op, values, order):
    """int[] as Axis sends a boxed array: soapenc:Array of href items, the
    multiRef elements after the response element in `order`."""
    n = len(values)
    out = [HEAD, resp_open(service, op),
           '<%sReturn soapenc:arrayType="xsd:int[%d]" xsi:type="soapenc:Array"'
           ' %s>' % (op, n, XMLNS_ENC)]
    item = '<%sReturn href="#id' % op
    out.extend('%s%d"/>' % (item, i) for i in range(n))
    out.append('</%sReturn></ns1:%sResponse>' % (op, op))
    out.extend(multiref(i, "xsd:int", values[i]) for i in order)
    out.append(TAIL)
    return "".join(out)


def _str_item(tag, v):
    if v is None:
        return '<%s xsi:type="soapenc:string" xsi:nil="true"/>' % tag
    return '<%s xsi:type="soapenc:string">%s</%s>' % (tag, esc(v), tag)


def resp_string_matrix(service, op, rows, width):
    """String[][] as recorded for getAll: nested soapenc:Arrays, every
    element named like the return part, nil as xsi:nil."""
    tag = op + "Return"
    out = [HEAD, resp_open(service, op),
           '<%s soapenc:arrayType="soapenc:string[][%d]" '
           'xsi:type="soapenc:Array" %s>' % (tag, len(rows), XMLNS_ENC)]
    inner = '<%s soapenc:arrayType="soapenc:string[%d]" ' \
            'xsi:type="soapenc:Array">' % (tag, width)
    for row in rows:
        out.append(inner)
        out.extend(_str_item(tag, v) for v in row)
        out.append('</%s>' % tag)
    out.append('</%s></ns1:%sResponse>' % (tag, op))
    out.append(TAIL)
    return "".join(out)


def resp_string_array(service, op, values):
    tag = op + "Return"
    out = [HEAD, resp_open(service, op),
           '<%s soapenc:arrayType="soapenc:string[%d]" '
           'xsi:type="soapenc:Array" %s>' % (tag, len(values), XMLNS_ENC)]
    out.extend(_str_item(tag, v) for v in values)
    out.append('</%s></ns1:%sResponse>' % (tag, op))
    out.append(TAIL)
    return "".join(out)


# ---------------------------------------------------------------------------
# Request parsing

def _local(tag):
    return tag.rpartition("}")[2]


class Decoder:
    """Turns part elements into Python values, following href="#id"."""

    def __init__(self, body, has_refs):
        self.ids = {}
        if has_refs:
            for el in body.iter():
                i = el.get("id")
                if i is not None:
                    self.ids[i] = el

    def deref(self, el):
        seen = 0
        while True:
            h = el.get("href")
            if h is None or not h.startswith("#") or seen > 16:
                return el
            t = self.ids.get(h[1:])
            if t is None:
                raise Fault("org.xml.sax.SAXException: No deserializer for "
                            "href %s" % h)
            el = t
            seen += 1

    def scalar(self, el):
        if self.ids:
            el = self.deref(el)
        if el.get(XSI_NIL) in ("true", "1"):
            return None
        return el.text or ""

    def array(self, el):
        if self.ids:
            el = self.deref(el)
        if el.get(XSI_NIL) in ("true", "1"):
            return None
        if self.ids:
            return [self.scalar(c) for c in el]
        nil = XSI_NIL
        return [None if c.get(nil) in ("true", "1") else (c.text or "")
                for c in el]

    def array2(self, el):
        if self.ids:
            el = self.deref(el)
        if el.get(XSI_NIL) in ("true", "1"):
            return None
        return [self.array(c) for c in el]


def _to_long(name, v):
    if v is None:
        return 0
    try:
        return int(v.strip())
    except ValueError:
        raise Fault('java.lang.NumberFormatException: For input string: "%s"'
                    % v) from None


def parse_request(service, raw):
    """Returns (operation, {param: value}).  Raises Fault."""
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as e:
        raise Fault("org.xml.sax.SAXParseException: %s" % e,
                    kind="client") from None
    body = root.find("{%s}Body" % NS_ENV)
    if body is None or len(body) == 0:
        raise Fault("No SOAP Body found in the request.",
                    code="soapenv:Client", kind="client")
    op_el = body[0]
    op = _local(op_el.tag)
    spec = OPS.get(service, {}).get(op)
    if spec is None:
        raise Fault("No such operation '%s'" % op, code="soapenv:Client",
                    kind="client")
    dec = Decoder(body, b"href=" in raw)
    slots = [None] * len(spec)
    byname = {}
    for i, (name, aliases, _) in enumerate(spec):
        byname[name] = i
        for a in aliases:
            byname[a] = i
    leftovers = []
    for child in op_el:
        ln = _local(child.tag)
        if len(ln) > 2 and ln[:2] == "in" and ln[2:].isdigit():
            idx = int(ln[2:])
        else:
            idx = byname.get(ln)
        if idx is None or idx >= len(spec) or slots[idx] is not None:
            leftovers.append(child)
            continue
        slots[idx] = child
    # Parts with unknown names fill the remaining slots in WSDL order.
    for child in leftovers:
        for i in range(len(slots)):
            if slots[i] is None:
                slots[i] = child
                break
    args = {}
    for (name, _, kind), el in zip(spec, slots):
        if el is None:
            args[name] = None
        elif kind == "array":
            args[name] = dec.array(el)
        elif kind == "array2":
            args[name] = dec.array2(el)
        else:
            args[name] = dec.scalar(el)
    for name, _, kind in spec:
        if kind == "long" and name != "mandatorId":
            args[name] = _to_long(name, args[name])
    return op, args


# ---------------------------------------------------------------------------
# State

class RecipientList:
    """One recipient list: recipientId -> (names tuple, joined values)."""

    __slots__ = ("rows", "names_cache")

    def __init__(self):
        self.rows = {}
        self.names_cache = {}

    def intern_names(self, names):
        t = tuple(names)
        return self.names_cache.setdefault(t, t)


def _join(email, values):
    parts = [email]
    for v in values:
        parts.append(NIL if v is None else v)
    return SEP.join(parts)


def _split(joined, names):
    parts = joined.split(SEP)
    attrs = {}
    for n, v in zip(names, parts[1:]):
        attrs[n] = None if v == NIL else v
    return parts[0], attrs


class Mailing:
    """A mailing sendMail can use: assigned list ids, type ("event" for
    transactional sends), and the recipient ids / addresses outside its
    target group (lower-cased)."""

    __slots__ = ("lists", "type", "excluded")

    def __init__(self, lists, mtype="event", excluded=()):
        self.lists = set(lists)
        self.type = mtype
        self.excluded = {str(x).strip().lower() for x in excluded}

    def to_json(self, mid):
        return {"id": str(mid), "lists": [str(x) for x in sorted(self.lists)],
                "type": self.type, "excluded": sorted(self.excluded)}


def parse_mailing_json(d):
    """{"id", "lists", "type"?, "excluded"?} -> (id, Mailing); ValueError."""
    if not isinstance(d, dict) or "id" not in d:
        raise ValueError("expected {\"id\": ..., \"lists\": [...]}")
    mid = int(str(d["id"]).strip())
    lists = d.get("lists") or []
    if not isinstance(lists, list):
        raise ValueError("lists must be an array")
    excluded = d.get("excluded") or []
    if not isinstance(excluded, list):
        raise ValueError("excluded must be an array")
    mtype = str(d.get("type") or "event")
    return mid, Mailing([int(str(x).strip()) for x in lists], mtype, excluded)


def parse_mailings_arg(text):
    """--mailings "1001:2001,2002;1002:2003:regular" -> {id: Mailing}."""
    out = {}
    for item in text.split(";"):
        item = item.strip()
        if not item:
            continue
        parts = item.split(":")
        if len(parts) not in (2, 3):
            raise ValueError("bad mailing %r (ID:LIST,LIST[:TYPE])" % item)
        lists = [int(x) for x in parts[1].split(",") if x.strip()]
        out[int(parts[0])] = Mailing(lists, parts[2] if len(parts) == 3
                                     else "event")
    return out


class Emulator:
    def __init__(self, mandator, user, password, ttl, max_batch, lists,
                 mr_order, quiet, mailings=None):
        self.mandator = str(mandator)
        self.user = user
        self.password = password
        self.ttl = ttl
        self.max_batch = max_batch
        self.allowed_lists = lists      # None = any list id exists
        self.mr_order = mr_order
        self.quiet = quiet
        self.cli_mailings = mailings or {}  # restored by reset()
        self.lock = threading.Lock()
        self.sessions = {}              # sid -> expiry (monotonic)
        self.rng = random.Random(4711)
        self.reset()

    def reset(self):
        with self.lock:
            self.lists = {}
            self.unsubscribes = set()
            self.blacklist = set()
            self.blacklist_patterns = []
            self.bounced = set()
            self.filtered = set()
            self.faults = {}
            self.script = collections.deque()
            self.mailings = {k: Mailing(v.lists, v.type, v.excluded)
                             for k, v in self.cli_mailings.items()}
            self.mails = []
            self.inflight = 0
            self.stats = {"requests": 0, "calls": {}, "logins": 0,
                          "login_failures": 0, "logouts": 0,
                          "session_faults": 0, "faults": 0,
                          "faults_injected": 0, "faults_by_kind": {},
                          "codes": {str(c): 0 for c in CODE_NAMES},
                          "send_codes": {str(c): 0 for c in SEND_CODE_NAMES},
                          "mails_sent": 0,
                          "recipients_sent": 0, "max_batch_seen": 0,
                          "max_concurrent": 0, "wsdl_requests": 0}

    # -- sessions ------------------------------------------------------------
    def login(self, args):
        m = (args.get("mandatorId") or "").strip()
        if (m != self.mandator or args.get("user") != self.user
                or args.get("password") != self.password):
            with self.lock:
                self.stats["login_failures"] += 1
            raise Fault(EXC + "Invalid credentials.", kind="credentials")
        sid = secrets.token_hex(8)
        now = time.monotonic()
        with self.lock:
            if len(self.sessions) > 10000:
                self.sessions = {s: e for s, e in self.sessions.items()
                                 if e > now}
            self.sessions[sid] = now + self.ttl
            self.stats["logins"] += 1
        return sid

    def check_session(self, sid):
        with self.lock:
            exp = self.sessions.get(sid or "")
            ok = exp is not None and time.monotonic() < exp
            if not ok:
                self.stats["session_faults"] += 1
        if not ok:
            raise Fault(SESSION_EXC + (sid or ""), kind="session")

    def expire_sessions(self):
        with self.lock:
            n = len(self.sessions)
            self.sessions.clear()
        return n

    def sessions_active(self):
        now = time.monotonic()
        return sum(1 for e in self.sessions.values() if e > now)

    # -- faults --------------------------------------------------------------
    def set_faults(self, cfg):
        with self.lock:
            for k in ("error_rate", "fault", "latency_ms", "status",
                      "message"):
                if k in cfg:
                    self.faults[k] = cfg[k]
            if "script" in cfg:
                self.script = collections.deque(
                    dict(e, count=int(e.get("count", 1)))
                    for e in cfg["script"] or [])

    def clear_faults(self):
        with self.lock:
            self.faults = {}
            self.script = collections.deque()

    def faults_snapshot(self):
        with self.lock:
            return {"faults": dict(self.faults), "script": list(self.script)}

    def pick_fault(self, op):
        """Called before processing a SOAP call: None or a fault entry."""
        with self.lock:
            if self.script:
                e = self.script[0]
                want = e.get("operation")
                if not want or want == op:
                    e["count"] -= 1
                    if e["count"] <= 0:
                        self.script.popleft()
                    self.stats["faults_injected"] += 1
                    return e
            rate = float(self.faults.get("error_rate") or 0)
            if rate and self.rng.random() < rate:
                self.stats["faults_injected"] += 1
                return {"fault": self.faults.get("fault", "server"),
                        "status": self.faults.get("status"),
                        "message": self.faults.get("message")}
        return None

    # -- suppression sets ------------------------------------------------------
    def add_suppressions(self, which, addresses):
        with self.lock:
            target = getattr(self, which)
            n = 0
            for a in addresses:
                a = str(a).strip().lower()
                if which == "blacklist" and ("*" in a or "?" in a):
                    if a not in self.blacklist_patterns:
                        self.blacklist_patterns.append(a)
                        n += 1
                    continue
                if a not in target:
                    target.add(a)
                    n += 1
            return n

    def list_suppressions(self, which):
        with self.lock:
            out = sorted(getattr(self, which))
            if which == "blacklist":
                out += self.blacklist_patterns
            return out

    def clear_suppressions(self, which):
        with self.lock:
            n = len(getattr(self, which))
            getattr(self, which).clear()
            if which == "blacklist":
                n += len(self.blacklist_patterns)
                self.blacklist_patterns = []
            return n

    # -- lists -----------------------------------------------------------------
    def get_list(self, list_id, sid=None, call=""):
        """Caller holds self.lock."""
        lst = self.lists.get(list_id)
        if lst is None:
            if (self.allowed_lists is not None
                    and list_id not in self.allowed_lists):
                raise Fault(EXC + "[%s,%s,%s] Recipient list does not exist "
                            "for call: recipientListId='%d'%s" % (
                                sid, self.mandator, self.user, list_id, call),
                            kind="no_list")
            lst = self.lists[list_id] = RecipientList()
        return lst

    def _blacklisted(self, email_l):
        if email_l in self.blacklist:
            return True
        for p in self.blacklist_patterns:
            if fnmatch.fnmatchcase(email_l, p):
                return True
        return False

    def _add_one(self, lst, optin, rid, email, names, values):
        """Per-recipient addAll3/add2 logic.  Caller holds self.lock."""
        if rid is None or rid == "":
            return 7
        if (values is None and names) or (values is not None
                                          and len(values) != len(names)):
            return 7
        if email is None or not EMAIL_RE.match(email):
            return 1
        if rid in lst.rows:
            return 5
        el = email.lower()
        if self._blacklisted(el):
            return 3
        if el in self.bounced:
            return 4
        rl = rid.lower()
        if el in self.unsubscribes or rl in self.unsubscribes:
            if not optin:
                return 2
            # Opt-in list: addAll3 re-activates and resets the unsubscribe.
            self.unsubscribes.discard(el)
            self.unsubscribes.discard(rl)
        if el in self.filtered:
            return 6
        lst.rows[rid] = (names, _join(email, values or ()))
        return 0

    def add_all3(self, sid, a):
        rids = a["recipientIds"] or []
        emails = a["emailAddresses"] or []
        names = a["attributeNames"] or []
        values = a["attributeValues"]
        list_id = a["recipientListId"]
        n = len(rids)
        call = (" for call: recipientListId='%d', optinProcessId='%d', "
                "recipientIdsSize=%d" % (list_id, a["optinProcessId"], n))
        prefix = "[%s,%s,%s] " % (sid, self.mandator, self.user)
        if n > self.max_batch:
            raise Fault(EXC + prefix + "too many recipients: %d > %d (maximum"
                        " per call)%s" % (n, self.max_batch, call),
                        kind="batch")
        if values is None:
            values = [[] for _ in range(n)] if not names else None
        if (len(emails) != n or values is None or len(values) != n
                or any(x is None for x in names)):
            raise Fault(EXC + prefix + "Illegal arguments: recipientIds, "
                        "emailAddresses and attributeValues must have the "
                        "same size (%d, %d, %s)%s" % (
                            n, len(emails),
                            "null" if values is None else len(values), call),
                        kind="arguments")
        codes = [0] * n
        with self.lock:
            lst = self.get_list(list_id, sid, call)
            tnames = lst.intern_names(names)
            optin = a["optinProcessId"] != 0
            for i in range(n):
                codes[i] = self._add_one(lst, optin, rids[i], emails[i],
                                         tnames, values[i])
            st = self.stats
            st["recipients_sent"] += n
            if n > st["max_batch_seen"]:
                st["max_batch_seen"] = n
            sc = st["codes"]
            for c in codes:
                sc[str(c)] += 1
        return codes

    def add2(self, sid, a):
        names = a["attributeNames"] or []
        values = a["attributeValues"] or []
        list_id = a["recipientListId"]
        with self.lock:
            lst = self.get_list(list_id, sid)
            code = self._add_one(lst, a["optinProcessId"] != 0,
                                 a["recipientId"], a["address"],
                                 lst.intern_names(names), values)
            self.stats["codes"][str(code)] += 1
            self.stats["recipients_sent"] += 1
        return code

    def remove(self, sid, a):
        with self.lock:
            lst = self.get_list(a["recipientListId"], sid)
            if lst.rows.pop(a["recipientId"], None) is None:
                raise Fault(EXC + "[%s,%s,%s] Recipient does not exist for "
                            "call: recipientListId='%d', recipientId='%s'" % (
                                sid, self.mandator, self.user,
                                a["recipientListId"], a["recipientId"]),
                            kind="no_recipient")

    def clear(self, sid, a):
        with self.lock:
            self.get_list(a["recipientListId"], sid).rows = {}

    def count(self, sid, a):
        with self.lock:
            return len(self.get_list(a["recipientListId"], sid).rows)

    def get_all(self, sid, a):
        want = a["attributeNames"] or []
        rows = []
        with self.lock:
            lst = self.get_list(a["recipientListId"], sid)
            items = list(lst.rows.items())
        for rid, (names, joined) in items:
            email, attrs = _split(joined, names)
            row = []
            for w in want:
                if w in attrs:
                    row.append(attrs[w])
                elif w == "email":
                    row.append(email)
                elif w == "recipientId":
                    row.append(rid)
                else:
                    row.append(None)
            rows.append(row)
        return rows

    def dump_list(self, list_id, offset=0, limit=None):
        with self.lock:
            lst = self.lists.get(list_id)
            if lst is None:
                return {"id": list_id, "count": 0, "recipients": []}
            total = len(lst.rows)
            items = list(lst.rows.items())
        if offset or limit is not None:
            items = items[offset:None if limit is None else offset + limit]
        recs = []
        for rid, (names, joined) in items:
            email, attrs = _split(joined, names)
            recs.append({"id": rid, "email": email, "attributes": attrs})
        return {"id": list_id, "count": total, "recipients": recs}

    def seed_list(self, list_id, recipients):
        with self.lock:
            lst = self.get_list(list_id)
            for r in recipients:
                attrs = r.get("attributes") or {}
                names = lst.intern_names(list(attrs))
                lst.rows[str(r["id"])] = (names, _join(
                    str(r.get("email") or ""), list(attrs.values())))
            return len(lst.rows)

    # -- mailings ----------------------------------------------------------------
    def send_mail(self, sid, a):
        """MailingWebservice.sendMail: the documented return codes 0..6 (see
        README for the check order).  Unknown or non-event mailing: fault."""
        mid = a["mailingId"]
        lid = a["recipientListId"]
        rid = a["recipientId"]
        call = (" for call: mailingId='%d', recipientListId='%d', "
                "recipientId='%s'" % (mid, lid, rid))
        prefix = "[%s,%s,%s] " % (sid, self.mandator, self.user)
        with self.lock:
            m = self.mailings.get(mid)
            if m is None:
                raise Fault(EXC + prefix + "Mailing does not exist" + call,
                            kind="no_mailing")
            if m.type != "event":
                raise Fault(EXC + prefix + "Mailing is not an event mailing "
                            "(type '%s')%s" % (m.type, call),
                            kind="not_event_mailing")
            email = None
            if lid not in m.lists:
                code = 4
            else:
                lst = self.lists.get(lid)
                row = lst.rows.get(rid or "") if lst is not None else None
                if row is None:
                    code = 3
                else:
                    email = _split(row[1], row[0])[0]
                    el = email.strip().lower()
                    rl = (rid or "").strip().lower()
                    if self._blacklisted(el):
                        code = 1
                    elif el in self.unsubscribes or rl in self.unsubscribes:
                        code = 2
                    elif el in self.bounced:
                        code = 6
                    elif el in m.excluded or rl in m.excluded:
                        code = 5
                    else:
                        code = 0
            self.stats["send_codes"][str(code)] += 1
            if code == 0:
                self.mails.append({"mailing_id": str(mid), "list_id": str(lid),
                                   "recipient_id": rid, "email": email,
                                   "t": time.time()})
                self.stats["mails_sent"] += 1
        return code

    def set_mailing(self, mid, m):
        with self.lock:
            self.mailings[mid] = m

    def mailings_snapshot(self):
        with self.lock:
            return [self.mailings[k].to_json(k) for k in sorted(self.mailings)]

    def mails_snapshot(self):
        with self.lock:
            return [dict(x) for x in self.mails]

    def stats_snapshot(self):
        with self.lock:
            s = json.loads(json.dumps(self.stats))
            s["inflight"] = self.inflight
            s["sessions_active"] = self.sessions_active()
            s["lists"] = {str(k): len(v.rows) for k, v in self.lists.items()}
            s["suppressions"] = {"unsubscribes": len(self.unsubscribes),
                                 "blacklist": len(self.blacklist) +
                                 len(self.blacklist_patterns),
                                 "bounced": len(self.bounced),
                                 "filtered": len(self.filtered)}
            return s

    def multiref_order(self, n):
        order = list(range(n))
        if self.mr_order == "shuffled" and n > 1:
            # Axis lists multiRefs in hash order (recorded: id2,id3,id0,...);
            # a fixed permutation keeps runs reproducible.
            random.Random(n).shuffle(order)
        return order


# ---------------------------------------------------------------------------
# HTTP

def _wsdl_text(service, base):
    for d in GOLDEN_WSDL_DIRS:
        p = os.path.join(d, service + ".wsdl")
        if os.path.isfile(p):
            with open(p, encoding="utf-8") as f:
                return f.read().replace("https://api.broadmail.de", base)
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "OptimizelyEmulator/1.0"
    emu = None  # set by main()

    def setup(self):
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY,
                                       1)
        except OSError:
            pass

    def log_message(self, fmt, *args):
        if not self.emu.quiet:
            sys.stderr.write("optimizely-emulator: %s - %s\n" % (
                self.address_string(), fmt % args))

    def read_body(self):
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n",
                                                             b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def send(self, status, ctype, body, reason=None):
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.send_response(status, reason)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status, obj):
        self.send(status, "application/json",
                  json.dumps(obj, separators=(",", ":")))

    def send_soap(self, status, xml):
        self.send(status, "text/xml;charset=utf-8", xml)

    def send_fault(self, f):
        emu = self.emu
        with emu.lock:
            emu.stats["faults"] += 1
            fk = emu.stats["faults_by_kind"]
            fk[f.kind] = fk.get(f.kind, 0) + 1
        self.send_soap(500, fault_xml(f.code, f.faultstring))

    def do_GET(self):
        self.dispatch()

    do_POST = do_PUT = do_DELETE = do_GET

    def dispatch(self):
        try:
            body = self.read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return self.send(400, "text/plain", b"bad request body")
        path = self.path
        if "://" in path:
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        try:
            if path.startswith("/_admin/"):
                return self.admin(path, body)
            if path.startswith("/soap11/Rpc"):
                return self.soap(path, body)
        except Exception as e:  # emulator bug: say so, keep serving
            import traceback
            traceback.print_exc()
            return self.send_soap(500, fault_xml(
                "soapenv:Server", "Emulator error: %r" % (e,)))
        self.send(404, "text/html", "<html><body>404 Not Found</body></html>")

    # -- SOAP ------------------------------------------------------------------
    def soap(self, path, body):
        emu = self.emu
        short, _, query = path.partition("?")
        service = short[len("/soap11/"):].strip("/")
        if service not in OPS and not (self.command == "GET"
                                       and query.lower().startswith("wsdl")):
            return self.send(404, "text/html",
                             "<html><body>404 Not Found</body></html>")
        if self.command == "GET":
            if query.lower().startswith("wsdl"):
                host = self.headers.get("Host") or "127.0.0.1"
                text = _wsdl_text(service, "http://" + host)
                if text is not None:
                    with emu.lock:
                        emu.stats["wsdl_requests"] += 1
                    return self.send(200, "text/xml;charset=utf-8", text)
            return self.send(404, "text/html",
                             "<html><body>404 Not Found</body></html>")
        if self.command != "POST":
            return self.send(405, "text/plain", "method not allowed")
        with emu.lock:
            emu.stats["requests"] += 1
            emu.inflight += 1
            if emu.inflight > emu.stats["max_concurrent"]:
                emu.stats["max_concurrent"] = emu.inflight
        try:
            try:
                op, args = parse_request(service, body)
            except Fault as f:
                return self.send_fault(f)
            with emu.lock:
                c = emu.stats["calls"]
                key = "%s.%s" % (service, op)
                c[key] = c.get(key, 0) + 1
            inj = emu.pick_fault(op)
            if inj is not None:
                return self.injected(inj, args, op)
            lat = emu.faults.get("latency_ms")
            if lat:
                time.sleep(float(lat) / 1000.0)
            try:
                return self.call(service, op, args)
            except Fault as f:
                return self.send_fault(f)
        finally:
            with emu.lock:
                emu.inflight -= 1

    def injected(self, e, args, op):
        kind = e.get("fault") or "server"
        sid = args.get("sessionId") or ""
        if kind == "drop" or e.get("drop"):
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return None
        if kind == "http":
            status = int(e.get("status") or 503)
            return self.send(status, "text/html", e.get("message") or (
                "<html><body><h1>%d Service Unavailable</h1></body></html>"
                % status))
        if kind == "session":
            f = Fault(SESSION_EXC + sid, kind="injected_session")
        elif kind == "batch":
            n = len(args.get("recipientIds") or [])
            f = Fault(EXC + "[%s,%s,%s] too many recipients: %d > %d "
                      "(maximum per call) (injected)" % (
                          sid, self.emu.mandator, self.emu.user, n,
                          max(0, n - 1)), kind="injected_batch")
        else:
            f = Fault(e.get("message") or (
                EXC + "[%s,%s,%s] Injected fault (server) for call: %s" % (
                    sid, self.emu.mandator, self.emu.user, op)),
                kind="injected_server")
        return self.send_fault(f)

    def call(self, service, op, a):
        emu = self.emu
        if op == "login":
            return self.send_soap(200, resp_string(service, op,
                                                   emu.login(a)))
        sid = a.get("sessionId")
        emu.check_session(sid)
        if op == "logout":
            with emu.lock:
                emu.sessions.pop(sid, None)
                emu.stats["logouts"] += 1
            return self.send_soap(200, resp_void(service, op))
        if op == "clear":
            emu.clear(sid, a)
            return self.send_soap(200, resp_void(service, op))
        if op == "addAll3":
            codes = emu.add_all3(sid, a)
            return self.send_soap(200, resp_int_array(
                service, op, codes, emu.multiref_order(len(codes))))
        if op == "add2":
            return self.send_soap(200, resp_int(service, op, emu.add2(sid, a)))
        if op == "remove":
            emu.remove(sid, a)
            return self.send_soap(200, resp_void(service, op))
        if op == "getCount":
            return self.send_soap(200, resp_int(service, op,
                                                emu.count(sid, a)))
        if op == "getAll":
            want = a["attributeNames"] or []
            return self.send_soap(200, resp_string_matrix(
                service, op, emu.get_all(sid, a), len(want)))
        if op == "getAllFlat":
            flat = [v for row in emu.get_all(sid, a) for v in row]
            return self.send_soap(200, resp_string_array(service, op, flat))
        if op == "sendMail":
            return self.send_soap(200, resp_int(service, op,
                                                emu.send_mail(sid, a)))
        raise Fault("No such operation '%s'" % op, code="soapenv:Client",
                    kind="client")

    # -- admin -----------------------------------------------------------------
    SUPPRESSION = {"unsubscribes": "unsubscribes", "blacklist": "blacklist",
                   "bounced": "bounced", "filtered": "filtered"}

    def admin(self, path, body):
        emu = self.emu
        p, _, q = path[len("/_admin/"):].partition("?")
        p = p.strip("/")
        params = dict(kv.partition("=")[::2] for kv in q.split("&") if kv)
        m = self.command
        try:
            data = json.loads(body) if body.strip() else None
        except ValueError as e:
            return self.send_json(400, {"error": "invalid JSON: %s" % e})
        if p == "stats" and m == "GET":
            return self.send_json(200, emu.stats_snapshot())
        if p == "reset" and m == "POST":
            emu.reset()
            return self.send_json(200, {"ok": True})
        if p == "expire-sessions" and m == "POST":
            return self.send_json(200, {"expired": emu.expire_sessions()})
        if p == "ping":
            return self.send_json(200, {"ok": True, "port": emu.port})
        if p == "faults":
            if m == "POST":
                if not isinstance(data, dict):
                    return self.send_json(400, {"error": "expected an object"})
                emu.set_faults(data)
                return self.send_json(200, emu.faults_snapshot())
            if m == "DELETE":
                emu.clear_faults()
                return self.send_json(200, {"ok": True})
            if m == "GET":
                return self.send_json(200, emu.faults_snapshot())
        if p in self.SUPPRESSION:
            which = self.SUPPRESSION[p]
            if m == "POST":
                addrs = data.get("addresses") if isinstance(data, dict) \
                    else data
                if not isinstance(addrs, list):
                    return self.send_json(400, {"error": "expected "
                                                "{\"addresses\": [...]}"})
                n = emu.add_suppressions(which, addrs)
                return self.send_json(200, {"added": n})
            if m == "GET":
                a = emu.list_suppressions(which)
                return self.send_json(200, {"addresses": a, "count": len(a)})
            if m == "DELETE":
                return self.send_json(200, {"deleted":
                                            emu.clear_suppressions(which)})
        if p == "mailings":
            if m == "GET":
                return self.send_json(200, emu.mailings_snapshot())
            if m == "POST":
                items = data if isinstance(data, list) else [data]
                try:
                    parsed = [parse_mailing_json(d) for d in items]
                except (ValueError, TypeError) as e:
                    return self.send_json(400, {"error": str(e)})
                for mid, mailing in parsed:
                    emu.set_mailing(mid, mailing)
                return self.send_json(200, [mailing.to_json(mid)
                                            for mid, mailing in parsed])
            if m == "DELETE":
                with emu.lock:
                    n = len(emu.mailings)
                    emu.mailings = {}
                return self.send_json(200, {"deleted": n})
        if p.startswith("mailings/"):
            try:
                mid = int(p[len("mailings/"):])
            except ValueError:
                return self.send_json(400, {"error": "mailing id must be an "
                                            "integer"})
            with emu.lock:
                mailing = emu.mailings.get(mid)
                if m == "DELETE" and mailing is not None:
                    del emu.mailings[mid]
            if mailing is None:
                return self.send_json(404, {"error": "no mailing %d" % mid})
            if m in ("GET", "DELETE"):
                return self.send_json(200, mailing.to_json(mid))
        if p == "mails":
            if m == "GET":
                return self.send_json(200, emu.mails_snapshot())
            if m == "DELETE":
                with emu.lock:
                    n = len(emu.mails)
                    emu.mails = []
                return self.send_json(200, {"deleted": n})
        if p == "lists" and m == "GET":
            with emu.lock:
                return self.send_json(200, {str(k): len(v.rows)
                                            for k, v in emu.lists.items()})
        if p.startswith("lists/"):
            try:
                lid = int(p[len("lists/"):])
            except ValueError:
                return self.send_json(400, {"error": "list id must be an "
                                            "integer"})
            if m == "GET":
                try:
                    off = int(params.get("offset") or 0)
                    lim = params.get("limit")
                    lim = int(lim) if lim else None
                except ValueError:
                    return self.send_json(400, {"error": "bad offset/limit"})
                return self.send_json(200, emu.dump_list(lid, off, lim))
            if m == "POST":
                recs = data.get("recipients") if isinstance(data, dict) \
                    else data
                if not isinstance(recs, list):
                    return self.send_json(400, {"error": "expected "
                                                "{\"recipients\": [...]}"})
                try:
                    n = emu.seed_list(lid, recs)
                except (KeyError, TypeError, AttributeError) as e:
                    return self.send_json(400, {"error": "bad recipient: %r"
                                                % (e,)})
                except Fault as f:
                    return self.send_json(404, {"error": f.faultstring})
                return self.send_json(200, {"count": n})
            if m == "DELETE":
                with emu.lock:
                    lst = emu.lists.pop(lid, None)
                return self.send_json(200, {"deleted": len(lst.rows)
                                            if lst else 0})
        return self.send_json(404, {"error": "unknown admin endpoint %s %s"
                                    % (m, path)})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Optimizely Campaign SOAP 1.1 emulator")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--mandator", default=DEFAULT_MANDATOR,
                    help="accepted mandatorId (client id)")
    ap.add_argument("--user", default=DEFAULT_USER)
    ap.add_argument("--password", default=DEFAULT_PASSWORD)
    ap.add_argument("--session-ttl", type=float, default=DEFAULT_TTL,
                    help="seconds a session lives after login (default 1200)")
    ap.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                    help="max recipients per addAll3 call (default 1000)")
    ap.add_argument("--lists", help="comma-separated list ids that exist "
                    "(default: any id exists)")
    ap.add_argument("--multiref-order", choices=("shuffled", "sequential"),
                    default="shuffled")
    ap.add_argument("--mailings", help="mailings sendMail knows, restored by "
                    "/_admin/reset: ID:LIST,LIST[:TYPE];... (TYPE default "
                    "event)")
    args = ap.parse_args(argv)
    mailings = None
    if args.mailings:
        try:
            mailings = parse_mailings_arg(args.mailings)
        except ValueError as e:
            ap.error("--mailings: %s" % e)
    lists = None
    if args.lists:
        try:
            lists = {int(x) for x in args.lists.split(",") if x.strip()}
        except ValueError:
            ap.error("--lists expects integers")
    emu = Emulator(args.mandator, args.user, args.password, args.session_ttl,
                   args.max_batch, lists, args.multiref_order, args.quiet,
                   mailings)
    emu.port = 0
    Handler.emu = emu
    srv = Server(("127.0.0.1", args.port), Handler)
    emu.port = srv.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % emu.port)
        os.replace(tmp, args.port_file)
    if not args.quiet:
        sys.stderr.write("optimizely-emulator: listening on "
                         "http://127.0.0.1:%d\n" % emu.port)

    def stop(signum, frame):
        threading.Thread(target=srv.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        srv.serve_forever(poll_interval=0.2)
    finally:
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
