#!/usr/bin/env python3
"""Integration tests for tests/emulators/dataverse_emulator.py.

Starts the emulator as a subprocess on a free port and checks it against
/work/shared/reference/dataverse.md and the golden $batch examples.
Run: python3 tests/integration/test_dataverse_emulator.py
Prints "N passed, M failed" last and exits 1 when M > 0.
"""

import base64
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from urllib.parse import quote, unquote, urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("CRMSYNC_SOURCE_DIR") or os.path.abspath(
    os.path.join(HERE, "..", ".."))
EMULATOR = os.path.join(SRC, "tests", "emulators", "dataverse_emulator.py")
GOLDEN_CANDIDATES = [
    os.path.join(SRC, "..", "shared", "reference", "golden", "dataverse"),
    "/work/shared/reference/golden/dataverse",
    os.path.join(SRC, "docs", "reference", "golden", "dataverse"),
]
GOLDEN = next((p for p in GOLDEN_CANDIDATES if os.path.isdir(p)), None)

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT_A = ("client-a", "secret/A+=&")  # characters that need URL-encoding
CLIENT_B = ("client-b", "secretB")
ACCOUNT1 = "00000000-0000-0000-0000-000000000001"

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def check(cond, msg="check failed"):
    if not cond:
        raise AssertionError(msg)


def eq(a, b, msg=""):
    if a != b:
        raise AssertionError("%s: expected %r, got %r" % (msg, b, a))


# ---------------------------------------------------------------------------
# Emulator process + HTTP helpers

class Emu:
    def __init__(self, *extra):
        self.dir = tempfile.mkdtemp(prefix="dvemu-")
        pf = os.path.join(self.dir, "port")
        args = [sys.executable, EMULATOR, "--port", "0", "--port-file", pf,
                "--tenant", TENANT, "--client", "%s:%s" % CLIENT_A,
                "--client", "%s:%s" % CLIENT_B, "--quiet"] + list(extra)
        self.proc = subprocess.Popen(args)
        deadline = time.time() + 15
        while not os.path.exists(pf):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("emulator did not start")
            time.sleep(0.02)
        with open(pf) as f:
            self.port = int(f.read().strip())
        self.base = "http://127.0.0.1:%d" % self.port
        self.conns = {}
        self.tokens = {}

    def stop(self):
        for c in self.conns.values():
            c.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def conn(self, name="default"):
        c = self.conns.get(name)
        if c is None:
            c = self.conns[name] = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=60)
        return c

    def raw(self, method, path, body=None, headers=None, conn="default"):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        h = dict(headers or {})
        c = self.conn(conn)
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
        except (http.client.HTTPException, OSError):
            c.close()
            self.conns.pop(conn, None)
            raise
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        return r.status, hdrs, data

    def token(self, client=CLIENT_A, fresh=False):
        if fresh or client[0] not in self.tokens:
            st, _, body = self.raw(
                "POST", "/%s/oauth2/v2.0/token" % TENANT,
                "client_id=%s&client_secret=%s&scope=%s&grant_type="
                "client_credentials" % (quote(client[0]), quote(client[1],
                                                                safe=""),
                                        quote(self.base + "/.default")),
                {"Content-Type": "application/x-www-form-urlencoded"})
            eq(st, 200, "token status")
            self.tokens[client[0]] = json.loads(body)["access_token"]
        return self.tokens[client[0]]

    def api(self, method, path, body=None, headers=None, client=CLIENT_A,
            conn="default"):
        h = {"Accept": "application/json", "OData-MaxVersion": "4.0",
             "OData-Version": "4.0", "If-None-Match": "null"}
        if body is not None:
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        if client is not None:
            h["Authorization"] = "Bearer " + self.token(client)
        if not path.startswith("/"):
            path = "/api/data/v9.2/" + path
        st, hdrs, data = self.raw(method, path, body, h, conn)
        js = None
        if data and hdrs.get("content-type", "").startswith("application/json"):
            js = json.loads(data)
        return st, hdrs, js if js is not None else data

    def admin(self, method, path, body=None):
        st, _, data = self.raw(method, "/_admin/" + path, body,
                               {"Content-Type": "application/json"},
                               conn="admin")
        check(st == 200, "admin %s %s -> %d %s" % (method, path, st, data[:200]))
        return json.loads(data)

    def reset(self):
        self.admin("POST", "reset")
        self.admin("POST", "records/accounts",
                   [{"accountid": ACCOUNT1, "name": "Golden account"}])


def error_of(body):
    check(isinstance(body, dict) and "error" in body, "no error body: %r" % body)
    return body["error"]["code"], body["error"]["message"]


# ---------------------------------------------------------------------------
# $batch helpers: build and parse multipart

def build_batch(items, boundary=None, nl="\r\n"):
    """items: list of dicts {method, url, body?, headers?} or
    {"changeset": [ops with optional content_id]}."""
    boundary = boundary or "batch_" + str(uuid.uuid4())
    out = []

    def part(op):
        lines = ["Content-Type: application/http",
                 "Content-Transfer-Encoding: binary"]
        if op.get("content_id"):
            lines.append("Content-ID: %s" % op["content_id"])
        lines.append("")
        lines.append("%s %s HTTP/1.1" % (op["method"], op["url"]))
        body = op.get("body")
        hdrs = dict(op.get("headers") or {})
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json; type=entry")
        for k, v in hdrs.items():
            lines.append("%s: %s" % (k, v))
        lines.append("")
        lines.append(json.dumps(body) if body is not None else "")
        return nl.join(lines)

    for it in items:
        if "changeset" in it:
            cb = "changeset_" + str(uuid.uuid4())
            out.append("--" + boundary)
            out.append("Content-Type: multipart/mixed; boundary=\"%s\"" % cb)
            out.append("")
            for op in it["changeset"]:
                out.append("--" + cb)
                out.append(part(op))
            out.append("--" + cb + "--")
        else:
            out.append("--" + boundary)
            out.append(part(it))
    out.append("--" + boundary + "--")
    out.append("")
    return boundary, nl.join(out).encode()


def send_batch(emu, items, prefer=None, conn="default", nl="\r\n"):
    boundary, body = build_batch(items, nl=nl)
    h = {"Content-Type": "multipart/mixed; boundary=\"%s\"" % boundary}
    if prefer:
        h["Prefer"] = prefer
    return emu_batch_raw(emu, body, h, conn)


def emu_batch_raw(emu, body, headers, conn="default", client=CLIENT_A):
    h = {"Accept": "application/json", "OData-MaxVersion": "4.0",
         "OData-Version": "4.0", "If-None-Match": "null",
         "Authorization": "Bearer " + emu.token(client)}
    h.update(headers)
    return emu.raw("POST", "/api/data/v9.2/$batch", body, h, conn)


def _boundary(ct):
    m = re.search(r'boundary="?([^";]+)"?', ct)
    return m.group(1) if m else None


def _split_head(buf):
    buf = buf.replace("\r\n", "\n")
    head, _, rest = buf.partition("\n\n")
    return head, rest


def parse_multipart(text, boundary):
    """Parse a batch response into a list of part dicts."""
    text = text.replace("\r\n", "\n")
    chunks = ("\n" + text).split("\n--" + boundary)
    check(any(c.startswith("--") for c in chunks[1:]),
          "missing closing boundary --%s--" % boundary)
    parts = []
    for c in chunks[1:]:
        if c.startswith("--"):
            break
        c = c.split("\n", 1)[1] if "\n" in c else ""
        mime_head, rest = _split_head(c)
        mime = {}
        for line in mime_head.split("\n"):
            k, _, v = line.partition(":")
            mime[k.strip().lower()] = v.strip()
        ct = mime.get("content-type", "")
        if ct.startswith("multipart/mixed"):
            parts.append({"kind": "changeset",
                          "parts": parse_multipart(rest, _boundary(ct))})
            continue
        http_head, body = _split_head(rest)
        lines = http_head.split("\n")
        m = re.match(r"HTTP/1\.1 (\d+)", lines[0])
        check(m, "bad status line %r" % lines[0])
        hdrs = []
        for line in lines[1:]:
            if not line.strip():
                continue  # the docs are inconsistent about blank lines
            k, _, v = line.partition(":")
            hdrs.append((k.strip(), v.strip()))
        body = body.strip()
        parts.append({"kind": "http", "content_type": ct,
                      "cte": mime.get("content-transfer-encoding"),
                      "content_id": mime.get("content-id"),
                      "status": int(m.group(1)), "headers": hdrs,
                      "json": json.loads(body) if body else None})
    return parts


def structure(parts):
    """Shape of a parsed response, for comparison with golden responses."""
    out = []
    for p in parts:
        if p["kind"] == "changeset":
            out.append(("changeset", tuple(structure(p["parts"]))))
            continue
        js = p["json"]
        shape = None
        if isinstance(js, dict) and "value" in js:
            shape = ("collection", len(js["value"]),
                     tuple(sorted(set(k for v in js["value"] for k in v))))
        elif isinstance(js, dict) and "error" in js:
            shape = ("error", js["error"]["code"], js["error"]["message"])
        out.append(("http", p["content_type"], p["cte"], p["content_id"],
                    p["status"], tuple(k for k, _ in p["headers"]), shape))
    return out


def load_golden(name, base):
    with open(os.path.join(GOLDEN, name), encoding="utf-8") as f:
        text = f.read()
    return re.sub(r"\[Organization U[Rr][Ii]\]", base, text)


def golden_request(name, base, nl="\r\n"):
    text = load_golden(name, base)
    head, _, body = text.partition("\n\n")
    headers = {}
    for line in head.split("\n")[1:]:
        k, _, v = line.partition(":")
        if k.lower() in ("content-type", "prefer"):
            headers[k.strip()] = v.strip()
    if nl == "\r\n":
        body = body.replace("\n", "\r\n")
    return headers, body.encode()


def golden_response(name, base):
    text = load_golden(name, base)
    head, _, body = text.partition("\n\n")
    status = int(head.split("\n")[0].split()[1])
    return status, parse_multipart(body, re.search(
        r"--(batchresponse_[0-9a-f-]+)", body).group(1))


def run_golden(emu, req_name, resp_name, nl="\r\n"):
    headers, body = golden_request(req_name, emu.base, nl)
    st, hdrs, data = emu_batch_raw(emu, body, headers)
    ct = hdrs.get("content-type", "")
    check(ct.startswith("multipart/mixed; boundary=batchresponse_"),
          "response content type %r: %r" % (ct, data[:300]))
    parts = parse_multipart(data.decode(), _boundary(ct))
    gst, gparts = golden_response(resp_name, emu.base)
    eq(st, gst, "%s batch status" % req_name)
    eq(structure(parts), structure(gparts), "%s structure" % req_name)
    return parts


# ---------------------------------------------------------------------------
# Tests

@test
def token_flow(emu):
    st, hdrs, body = emu.raw(
        "POST", "/%s/oauth2/v2.0/token" % TENANT,
        "client_id=client-a&client_secret=%s&scope=https%%3A%%2F%%2Forg.crm."
        "dynamics.com%%2F.default&grant_type=client_credentials"
        % quote(CLIENT_A[1], safe=""),
        {"Content-Type": "application/x-www-form-urlencoded"})
    eq(st, 200, "token")
    tok = json.loads(body)
    eq(tok["token_type"], "Bearer")
    eq(tok["expires_in"], 3599)
    eq(tok["ext_expires_in"], 3599)
    check(len(tok["access_token"]) > 20)
    # HTTP Basic client authentication
    basic = base64.b64encode(("client-b:%s" % CLIENT_B[1]).encode()).decode()
    st, _, body = emu.raw(
        "POST", "/%s/oauth2/v2.0/token" % TENANT,
        "scope=x%2F.default&grant_type=client_credentials",
        {"Authorization": "Basic " + basic,
         "Content-Type": "application/x-www-form-urlencoded"})
    eq(st, 200, "basic auth token")
    # bad secret -> 401 invalid_client / AADSTS7000215
    st, _, body = emu.raw(
        "POST", "/%s/oauth2/v2.0/token" % TENANT,
        "client_id=client-a&client_secret=wrong&scope=x%2F.default"
        "&grant_type=client_credentials",
        {"Content-Type": "application/x-www-form-urlencoded"})
    eq(st, 401, "bad secret")
    err = json.loads(body)
    eq(err["error"], "invalid_client")
    eq(err["error_codes"], [7000215])
    check(err["error_description"].startswith("AADSTS7000215: Invalid client "
                                              "secret provided"))
    for k in ("timestamp", "trace_id", "correlation_id"):
        check(k in err, "missing %s" % k)
    check("wrong" not in body.decode(), "secret echoed in error")
    # bad scope, bad grant, unknown client, wrong tenant
    cases = [("client_id=client-a&client_secret=secretB&scope=x%2Fuser_imp"
              "&grant_type=client_credentials", 400, "invalid_scope"),
             ("client_id=client-a&client_secret=x&scope=x%2F.default"
              "&grant_type=password", 400, "unsupported_grant_type"),
             ("client_id=nobody&client_secret=x&scope=x%2F.default"
              "&grant_type=client_credentials", 400, "unauthorized_client")]
    for form, want_st, want_err in cases:
        st, _, body = emu.raw("POST", "/%s/oauth2/v2.0/token" % TENANT, form,
                              {"Content-Type":
                               "application/x-www-form-urlencoded"})
        eq(st, want_st, form)
        eq(json.loads(body)["error"], want_err, form)
    st, _, body = emu.raw("POST", "/other-tenant/oauth2/v2.0/token",
                          "client_id=client-a&client_secret=x&scope=x%2F."
                          "default&grant_type=client_credentials")
    eq(st, 400, "wrong tenant")
    # issued token works
    st, _, js = emu.raw("GET", "/api/data/v9.2/WhoAmI", None,
                        {"Authorization": "Bearer " + tok["access_token"]})
    eq(st, 200, "WhoAmI")
    check({"BusinessUnitId", "UserId", "OrganizationId"} <= set(json.loads(js)))


@test
def unauthorized(emu):
    want = ("Bearer authorization_uri=https://login.microsoftonline.com/%s/"
            "oauth2/authorize, resource_id=%s/" % (TENANT, emu.base))
    st, hdrs, body = emu.api("GET", "contacts", client=None)
    eq(st, 401, "no token")
    eq(hdrs.get("www-authenticate"), want, "challenge")
    error_of(body)
    st, hdrs, _ = emu.api("GET", "contacts", client=None,
                          headers={"Authorization": "Bearer nope"})
    eq(st, 401, "unknown token")
    eq(hdrs.get("www-authenticate"), want)
    st, _, _ = emu.api("GET", "contacts")
    eq(st, 200, "valid token")
    emu.admin("POST", "expire-tokens")
    st, hdrs, body = emu.api("GET", "contacts")
    eq(st, 401, "expired via admin")
    eq(hdrs.get("www-authenticate"), want)
    emu.token(fresh=True)
    st, _, _ = emu.api("GET", "contacts")
    eq(st, 200, "after refresh")
    # real expiry with a short TTL
    short = Emu("--token-ttl", "1")
    try:
        st, _, body = short.raw(
            "POST", "/%s/oauth2/v2.0/token" % TENANT,
            "client_id=client-b&client_secret=secretB&scope=x%2F.default"
            "&grant_type=client_credentials")
        eq(json.loads(body)["expires_in"], 1)
        tok = json.loads(body)["access_token"]
        st, _, _ = short.raw("GET", "/api/data/v9.2/contacts", None,
                             {"Authorization": "Bearer " + tok})
        eq(st, 200)
        time.sleep(1.1)
        st, _, _ = short.raw("GET", "/api/data/v9.2/contacts", None,
                             {"Authorization": "Bearer " + tok})
        eq(st, 401, "expired by ttl")
    finally:
        short.stop()


@test
def crud_semantics(emu):
    emu.reset()
    st, hdrs, _ = emu.api("POST", "contacts", {"lastname": "One"})
    eq(st, 204, "create")
    eid = hdrs["odata-entityid"]
    m = re.fullmatch(re.escape(emu.base) + r"/api/data/v9\.2/contacts\(([0-9a-f-]{36})\)", eid)
    check(m, "OData-EntityId %r" % eid)
    cid = m.group(1)
    st, hdrs, js = emu.api("POST", "contacts?$select=lastname",
                           {"lastname": "Two"},
                           {"Prefer": "return=representation"})
    eq(st, 201, "create with representation")
    check("odata-entityid" not in hdrs, "no OData-EntityId with representation")
    eq(js["lastname"], "Two")
    check(js["@odata.etag"].startswith('W/"'))
    # explicit id + duplicate
    nid = str(uuid.uuid4())
    st, _, _ = emu.api("POST", "contacts", {"contactid": nid, "lastname": "X"})
    eq(st, 204)
    st, _, js = emu.api("POST", "contacts", {"contactid": nid, "lastname": "X"})
    eq(st, 412, "duplicate create")
    eq(error_of(js), ("0x80040237",
                      "A record with matching key values already exists."))
    # PATCH without If-Match = upsert (creates, then updates)
    uid = str(uuid.uuid4())
    st, hdrs, _ = emu.api("PATCH", "contacts(%s)" % uid, {"lastname": "U1"})
    eq(st, 204, "upsert create")
    check(hdrs["odata-entityid"].endswith("contacts(%s)" % uid))
    st, _, js = emu.api("GET", "contacts(%s)" % uid)
    eq(st, 200)
    etag1 = js["@odata.etag"]
    check(js["createdon"] and js["modifiedon"])
    st, _, _ = emu.api("PATCH", "contacts(%s)" % uid, {"firstname": "F"})
    eq(st, 204, "upsert update")
    st, hdrs, js = emu.api("GET", "contacts(%s)?$select=firstname,lastname"
                           % uid)
    eq((js["firstname"], js["lastname"], js["contactid"]), ("F", "U1", uid))
    check(js["@odata.etag"] != etag1, "etag changes on update")
    etag2 = js["@odata.etag"]
    eq(hdrs.get("etag"), etag2)
    # If-Match: * on a missing record -> 404
    mid = str(uuid.uuid4())
    st, _, js = emu.api("PATCH", "contacts(%s)" % mid, {"lastname": "M"},
                        {"If-Match": "*"})
    eq(st, 404, "If-Match * missing")
    eq(error_of(js), ("0x80040217", "contact With Id = %s Does Not Exist" % mid))
    eq(len([r for r in emu.admin("GET", "records/contacts")
            if r["contactid"] == mid]), 0, "nothing created")
    st, _, _ = emu.api("PATCH", "contacts(%s)" % uid, {"lastname": "U2"},
                       {"If-Match": "*"})
    eq(st, 204, "If-Match * existing")
    # If-None-Match: * create only
    st, _, js = emu.api("PATCH", "contacts(%s)" % uid, {"lastname": "U3"},
                        {"If-None-Match": "*"})
    eq(st, 412, "If-None-Match * existing")
    eq(error_of(js)[0], "0x80040237")
    st, _, _ = emu.api("PATCH", "contacts(%s)" % mid, {"lastname": "M"},
                       {"If-None-Match": "*"})
    eq(st, 204, "If-None-Match * new")
    # If-Match with etag
    st, _, js = emu.api("GET", "contacts(%s)" % uid)
    cur = js["@odata.etag"]
    eq(js["lastname"], "U2", "If-None-Match * left the record alone")
    st, _, js = emu.api("PATCH", "contacts(%s)" % uid, {"lastname": "E"},
                        {"If-Match": 'W/"1"'})
    eq(st, 412, "etag mismatch")
    eq(error_of(js)[0], "0x80060882")
    st, _, _ = emu.api("PATCH", "contacts(%s)" % uid, {"lastname": "E"},
                       {"If-Match": cur})
    eq(st, 204, "etag match")
    # PATCH upsert with representation: 201 created / 200 updated
    rid = str(uuid.uuid4())
    st, hdrs, js = emu.api("PATCH", "contacts(%s)" % rid, {"lastname": "R"},
                           {"Prefer": "return=representation"})
    eq(st, 201)
    check("etag" in hdrs)
    st, _, js = emu.api("PATCH", "contacts(%s)" % rid, {"lastname": "R2"},
                        {"Prefer": "return=representation"})
    eq((st, js["lastname"]), (200, "R2"))
    # conditional GET
    st, _, js = emu.api("GET", "contacts(%s)" % rid)
    st, _, _ = emu.api("GET", "contacts(%s)" % rid,
                       headers={"If-None-Match": js["@odata.etag"]})
    eq(st, 304, "If-None-Match etag on GET")
    # delete
    st, _, _ = emu.api("DELETE", "contacts(%s)" % cid)
    eq(st, 204)
    st, _, js = emu.api("GET", "contacts(%s)" % cid)
    eq(st, 404)
    eq(error_of(js)[0], "0x80040217")
    st, _, _ = emu.api("DELETE", "contacts(%s)" % cid)
    eq(st, 404, "delete missing")
    # unknown / wrongly cased entity set
    st, _, js = emu.api("GET", "Contacts")
    eq(st, 404)
    eq(js, {"error": {"code": "0x8006088a",
                      "message": "Resource not found for the segment "
                                 "'Contacts'."}})
    # lookup bind to a missing target
    st, _, js = emu.api("POST", "contacts", {
        "parentcustomerid_account@odata.bind": "/accounts(%s)" % uuid.uuid4()})
    eq(st, 404)
    check(error_of(js)[1].startswith("account With Id = "))


@test
def filters(emu):
    emu.reset()
    acc = str(uuid.uuid4())
    emu.admin("POST", "records/accounts", [{"accountid": acc, "name": "A"}])
    rows = [("O'Bryan", "ob+tag@example.com", 10, True, "alpha"),
            ("Smith", "smith@example.com", 20, False, "beta"),
            ("smithers", "s@example.org", 30, False, None),
            ("Jones", "j+x@example.com", 40, True, "gamma")]
    ids = []
    for last, mail, n, dnb, city in rows:
        body = {"lastname": last, "emailaddress1": mail, "numberofchildren": n,
                "donotbulkemail": dnb, "address1_city": city}
        if last == "Jones":
            body["parentcustomerid_account@odata.bind"] = \
                "%s/api/data/v9.2/accounts(%s)" % (emu.base, acc)
        st, hdrs, _ = emu.api("POST", "contacts", body)
        eq(st, 204)
        ids.append(hdrs["odata-entityid"][-37:-1])

    def names(flt, extra=""):
        st, _, js = emu.api("GET", "contacts?$select=lastname&$filter=" + flt
                            + extra)
        check(st == 200, "filter %r -> %d %r" % (flt, st, js))
        return sorted(r["lastname"] for r in js["value"])

    eq(names(quote("lastname eq 'O''Bryan'")), ["O'Bryan"], "doubled quote")
    st, _, js = emu.api("GET", "contacts?$filter=" +
                        quote("lastname eq 'O'Bryan'"))
    eq(st, 400, "unescaped quote")
    check("unterminated literal" in error_of(js)[1] or
          "Syntax error" in error_of(js)[1])
    eq(names(quote("emailaddress1 eq 'ob+tag@example.com'", safe="")),
       ["O'Bryan"], "+ percent-encoded")
    eq(names("emailaddress1%20eq%20'ob+tag@example.com'"), [],
       "raw + decodes to a space")
    eq(names(quote("contains(emailaddress1,'+')", safe="")),
       ["Jones", "O'Bryan"], "contains +")
    eq(names(quote("contains(lastname,'SMITH')")), ["Smith", "smithers"],
       "case-insensitive contains")
    eq(names(quote("startswith(lastname,'smith') and endswith(emailaddress1,"
                   "'.org')")), ["smithers"])
    eq(names(quote("lastname eq 'smith'")), ["Smith"], "case-insensitive eq")
    eq(names(quote("_parentcustomerid_value eq %s" % acc)), ["Jones"],
       "lookup guid")
    eq(names(quote("_parentcustomerid_value eq '%s'" % acc.upper())),
       ["Jones"], "lookup quoted guid")
    eq(names(quote("numberofchildren gt 10 and numberofchildren le 30")),
       ["Smith", "smithers"])
    eq(names(quote("numberofchildren lt 20 or numberofchildren ge 40")),
       ["Jones", "O'Bryan"])
    eq(names(quote("not (donotbulkemail eq true) and numberofchildren ne 20")),
       ["smithers"])
    eq(names(quote("address1_city eq null")), ["smithers"], "null")
    eq(names(quote("(lastname eq 'Jones' or lastname eq 'Smith') and "
                   "donotbulkemail eq false")), ["Smith"], "parentheses")
    eq(names(quote("Microsoft.Dynamics.CRM.In(PropertyName='lastname',"
                   "PropertyValues=['jones','Smith'])")), ["Jones", "Smith"])
    st, _, js = emu.api("GET", "contacts?$select=lastname&$orderby=" +
                        quote("numberofchildren desc") + "&$top=2&$count=true")
    eq([r["lastname"] for r in js["value"]], ["Jones", "smithers"], "orderby")
    eq(js["@odata.count"], 4, "$count")
    st, _, js = emu.api("GET", "contacts?$skip=1")
    eq(st, 400, "$skip unsupported")
    st, _, js = emu.api("GET", "contacts?$filter=" + quote("lastname eq"))
    eq(st, 400, "syntax error")
    # $select returns only the selected columns plus key and etag
    st, _, js = emu.api("GET", "contacts(%s)?$select=emailaddress1" % ids[0])
    eq(set(js), {"@odata.context", "@odata.etag", "emailaddress1", "contactid"})


@test
def paging(emu):
    emu.reset()
    recs = [{"contactid": str(uuid.UUID(int=i + 1)),
             "lastname": "P%05d" % i, "donotbulkemail": i % 3 == 0}
            for i in range(12000)]
    for i in range(0, 12000, 4000):
        emu.admin("POST", "records/contacts", recs[i:i + 4000])
    url = "contacts?$select=lastname,contactid"
    seen = []
    pages = []
    while url:
        st, hdrs, js = emu.api("GET", url,
                               headers={"Prefer": "odata.maxpagesize=5000"})
        eq(st, 200, "page")
        eq(hdrs.get("preference-applied"), "odata.maxpagesize=5000")
        pages.append(len(js["value"]))
        seen.extend(r["contactid"] for r in js["value"])
        nl = js.get("@odata.nextLink")
        if nl:
            check(nl.startswith(emu.base + "/api/data/v9.2/contacts?"))
            check("$skiptoken=" in nl)
            u = urlsplit(nl)
            url = u.path + "?" + u.query
        else:
            url = None
    eq(pages, [5000, 5000, 2000], "page sizes")
    eq(len(set(seen)), 12000, "every record once")
    eq(seen, sorted(seen), "ordered by primary key")
    # filtered paging with a small page size
    url = "contacts?$select=lastname&$filter=" + quote("donotbulkemail eq true")
    total = 0
    n = 0
    while url:
        st, _, js = emu.api("GET", url,
                            headers={"Prefer": "odata.maxpagesize=1500"})
        total += len(js["value"])
        n += 1
        nl = js.get("@odata.nextLink")
        url = (urlsplit(nl).path + "?" + urlsplit(nl).query) if nl else None
    eq(total, 4000, "filtered total")
    eq(n, 3, "filtered pages")
    # default page size is 5000 even without Prefer
    st, hdrs, js = emu.api("GET", "contacts?$select=lastname")
    eq(len(js["value"]), 5000)
    check("@odata.nextLink" in js)
    check("preference-applied" not in hdrs)


@test
def batch_golden_01_02(emu):
    emu.reset()
    parts = run_golden(emu, "01-batch-no-changeset.request.http",
                       "01-batch-no-changeset.response.http")
    tasks = emu.admin("GET", "records/tasks")
    eq(sorted(t["subject"] for t in tasks),
       ["Task 1 in batch", "Task 2 in batch", "Task 3 in batch"])
    check(all(t["_regardingobjectid_value"] == ACCOUNT1 for t in tasks))
    ids = {t["activityid"] for t in tasks}
    for p in parts[:3]:
        hd = dict(p["headers"])
        eq(hd["Location"], hd["OData-EntityId"])
        check(hd["OData-EntityId"].startswith(emu.base + "/api/data/v9.2/tasks("))
        check(hd["OData-EntityId"][-37:-1] in ids)
    eq({v["activityid"] for v in parts[3]["json"]["value"]}, ids)
    # the same request with LF line ends (as printed in the docs)
    emu.reset()
    run_golden(emu, "01-batch-no-changeset.request.http",
               "01-batch-no-changeset.response.http", nl="\n")
    emu.reset()
    parts = run_golden(emu, "02-batch-changeset.request.http",
                       "02-batch-changeset.response.http")
    eq([p["content_id"] for p in parts[0]["parts"]], ["1", "2", "3"])
    eq(len(emu.admin("GET", "records/tasks")), 3)


@test
def batch_golden_errors(emu):
    emu.reset()
    parts = run_golden(emu, "08-error-stop.request.http",
                       "08-error-stop.response.http")
    eq(len(emu.admin("GET", "records/tasks")), 0, "stop: nothing after error")
    emu.reset()
    parts = run_golden(emu, "09-error-continue.request.http",
                       "09-error-continue.response.http")
    eq(len(emu.admin("GET", "records/tasks")), 2, "continue: two tasks")
    check(any(k == "REQ_ID" for k, _ in parts[0]["headers"]))


@test
def batch_golden_references(emu):
    emu.reset()
    for req in ("03-ref-request-body", "04-ref-request-url",
                "05-ref-odata-id", "06-ref-navigation-property"):
        run_golden(emu, req + ".request.http", req + ".response.http")
    accounts = {a["name"]: a for a in emu.admin("GET", "records/accounts")}
    contacts = emu.admin("GET", "records/contacts")
    leads = emu.admin("GET", "records/leads")
    by_first = {c["firstname"]: c for c in contacts}
    eq(accounts["IcM Account"]["_originatingleadid_value"], leads[0]["leadid"])
    eq(accounts["IcM Account"]["_primarycontactid_value"],
       by_first["first name"]["contactid"])
    eq(by_first["First Name"]["lastname"], "BBBBB", "PUT $1/lastname")
    # 05 and 06 both create a contact "Contact first name"
    ref_contacts = {c["contactid"] for c in contacts
                    if c["firstname"] == "Contact first name"}
    eq(len(ref_contacts), 2)
    check(accounts["Account Name"]["_primarycontactid_value"] in ref_contacts,
          "PUT $1/primarycontactid/$ref")
    check(accounts["Account name"]["_primarycontactid_value"] in ref_contacts,
          "PATCH $1 with primarycontactid@odata.bind $2")
    check(accounts["Account Name"]["_primarycontactid_value"] !=
          accounts["Account name"]["_primarycontactid_value"])


@test
def batch_forward_reference(emu):
    emu.reset()
    body = load_golden("07-forward-reference.request-body.http", emu.base)
    st, hdrs, data = emu_batch_raw(
        emu, body.replace("\n", "\r\n").encode(),
        {"Content-Type": "multipart/mixed;boundary=batch_AAA123"})
    eq(st, 400, "forward reference")
    eq(json.loads(data)["error"]["message"],
       "Content-ID Reference: '$1' does not exist in the batch context.")
    eq(emu.admin("GET", "records")["accounts"], 1, "nothing written")


@test
def batch_changeset_rollback_and_refs(emu):
    emu.reset()
    a, b, missing = (str(uuid.uuid4()) for _ in range(3))
    cs = {"changeset": [
        {"method": "POST", "url": "/api/data/v9.2/contacts", "content_id": "1",
         "body": {"contactid": a, "lastname": "A"}},
        {"method": "PATCH", "url": "/api/data/v9.2/contacts(%s)" % b,
         "content_id": "2", "body": {"lastname": "B"}},
        {"method": "PATCH", "url": "/api/data/v9.2/contacts(%s)" % missing,
         "content_id": "3", "body": {"lastname": "C"},
         "headers": {"If-Match": "*"}}]}
    after = {"method": "POST", "url": "/api/data/v9.2/contacts",
             "body": {"lastname": "after"}}
    st, hdrs, data = send_batch(emu, [cs, after])
    eq(st, 400, "stop on error")
    parts = parse_multipart(data.decode(), _boundary(hdrs["content-type"]))
    eq(len(parts), 1, "one error part for the failed change set")
    eq((parts[0]["kind"], parts[0]["status"], parts[0]["content_id"]),
       ("http", 404, "3"))
    eq(emu.admin("GET", "records")["contacts"], 0, "rolled back, stopped")
    # continue-on-error: change set still rolled back, next part runs
    st, hdrs, data = send_batch(emu, [cs, after],
                                prefer="odata.continue-on-error")
    eq(st, 200)
    parts = parse_multipart(data.decode(), _boundary(hdrs["content-type"]))
    eq([p["status"] for p in parts], [404, 204])
    recs = emu.admin("GET", "records/contacts")
    eq([r["lastname"] for r in recs], ["after"])
    # a good change set with $n references in URL and body
    lead = str(uuid.uuid4())
    good = {"changeset": [
        {"method": "POST", "url": "/api/data/v9.2/leads", "content_id": "1",
         "body": {"leadid": lead, "lastname": "L"}},
        {"method": "POST", "url": "/api/data/v9.2/contacts", "content_id": "2",
         "body": {"lastname": "C2", "originatingleadid@odata.bind": "$1"}},
        {"method": "PATCH", "url": "$2", "content_id": "3",
         "body": {"firstname": "viaref"}},
        {"method": "DELETE", "url": "$1", "content_id": "4"}]}
    st, hdrs, data = send_batch(emu, [good])
    eq(st, 200, data[:300])
    parts = parse_multipart(data.decode(), _boundary(hdrs["content-type"]))
    eq(parts[0]["kind"], "changeset")
    eq([p["status"] for p in parts[0]["parts"]], [204, 204, 204, 204])
    c2 = [r for r in emu.admin("GET", "records/contacts") if r["lastname"] == "C2"]
    eq((c2[0]["firstname"], c2[0]["_originatingleadid_value"]), ("viaref", lead))
    eq(emu.admin("GET", "records")["leads"], 0)
    # GET inside a change set and >1000 operations are rejected
    st, _, data = send_batch(emu, [{"changeset": [
        {"method": "GET", "url": "/api/data/v9.2/contacts"}]}])
    eq(st, 400, "GET in change set")
    many = [{"method": "PATCH", "url": "contacts(%s)" % uuid.uuid4(),
             "body": {"lastname": "m"}} for _ in range(1001)]
    st, _, data = send_batch(emu, many)
    eq(st, 400, ">1000 ops")
    check("1000" in json.loads(data)["error"]["message"])
    eq(emu.admin("GET", "records")["contacts"], 2, "nothing from the big batch")
    st, _, data = send_batch(emu, many[:1000])
    eq(st, 200, "1000 ops accepted")


@test
def throttling(emu):
    emu.reset()
    emu.admin("POST", "faults", {"throttle": {"requests_per_window": 3,
                                              "window_s": 30,
                                              "retry_after_s": 1}})
    for _ in range(3):
        st, _, _ = emu.api("GET", "contacts?$top=1")
        eq(st, 200)
    st, hdrs, js = emu.api("GET", "contacts?$top=1")
    eq(st, 429, "over the limit")
    eq(hdrs.get("retry-after"), "1")
    eq(js["error"]["code"], "0x80072322")
    check("over time window of 30 seconds" in js["error"]["message"])
    eq(emu.admin("GET", "stats")["early_requests"], 0)
    # sent again before Retry-After: longer Retry-After, counted as early
    st, hdrs, _ = emu.api("GET", "contacts?$top=1")
    eq(st, 429)
    check(int(hdrs["retry-after"]) > 1, "longer Retry-After")
    s = emu.admin("GET", "stats")
    eq(s["early_requests"], 1)
    eq(s["per_client"]["client-a"]["early_requests"], 1)
    # client b has its own budget
    st, _, _ = emu.api("GET", "contacts?$top=1", client=CLIENT_B)
    eq(st, 200, "per-client limits")
    emu.admin("DELETE", "faults")
    # a batch counts as one request
    emu.admin("POST", "faults", {"throttle": {"requests_per_window": 2,
                                              "window_s": 30}})
    ops = [{"method": "PATCH", "url": "contacts(%s)" % uuid.uuid4(),
            "body": {"lastname": "t"}} for _ in range(50)]
    eq(send_batch(emu, ops)[0], 200)
    eq(send_batch(emu, ops)[0], 200)
    st, hdrs, _ = send_batch(emu, ops)
    eq(st, 429, "third batch throttled")
    check(int(hdrs["retry-after"]) >= 1)
    emu.admin("DELETE", "faults")
    # concurrency limit
    emu.admin("POST", "faults", {"latency_ms": 1500,
                                 "throttle": {"max_concurrent": 1,
                                              "retry_after_s": 1}})
    results = []
    slow = threading.Thread(target=lambda: results.append(
        emu.api("GET", "contacts?$top=1", conn="slow")[0]))
    slow.start()
    deadline = time.time() + 10
    while emu.admin("GET", "stats")["per_client"]["client-a"]["inflight"] < 1:
        check(time.time() < deadline, "first request never in flight")
        time.sleep(0.01)
    st, hdrs, js = emu.api("GET", "contacts?$top=1", conn="fast")
    slow.join()
    eq((st, js["error"]["code"], hdrs.get("retry-after")),
       (429, "0x80072326", "1"), "concurrent request rejected")
    eq(results, [200], "in-flight request completes")
    emu.admin("DELETE", "faults")


@test
def scripted_faults(emu):
    emu.reset()
    emu.admin("POST", "faults", {"script": [
        {"status": 429, "retry_after": 1, "count": 2},
        {"status": 503, "count": 1}]})
    rid = str(uuid.uuid4())
    ops = [{"method": "PATCH", "url": "contacts(%s)" % rid,
            "body": {"lastname": "S"}}]
    st, hdrs, data = send_batch(emu, ops)
    eq(st, 429)
    eq(hdrs.get("retry-after"), "1")
    eq(emu.admin("GET", "records")["contacts"], 0, "nothing written on 429")
    time.sleep(1.05)
    eq(send_batch(emu, ops)[0], 429)
    time.sleep(1.05)
    eq(send_batch(emu, ops)[0], 503)
    eq(emu.admin("GET", "records")["contacts"], 0, "nothing written on 503")
    eq(send_batch(emu, ops)[0], 200)
    eq(emu.admin("GET", "records")["contacts"], 1)
    s = emu.admin("GET", "stats")
    eq((s["faults_served"], s["early_requests"], s["throttled_429"]), (3, 0, 2))
    tail = [e["status"] for e in s["request_log_tail"]
            if e["path"].endswith("$batch")]
    eq(tail[-4:], [429, 429, 503, 200])
    # early retry after a scripted 429 is detected
    emu.admin("POST", "faults", {"script": [{"status": 429, "retry_after": 2,
                                             "count": 1}]})
    eq(send_batch(emu, ops)[0], 429)
    st, hdrs, _ = send_batch(emu, ops)
    eq(st, 429, "early")
    check(int(hdrs["retry-after"]) > 2)
    eq(emu.admin("GET", "stats")["early_requests"], 1)
    emu.admin("DELETE", "faults")
    emu.reset()
    # error_rate 1.0: every request fails, nothing written
    emu.admin("POST", "faults", {"error_rate": 1.0, "error_status": 502})
    st, _, _ = emu.api("PATCH", "contacts(%s)" % rid, {"lastname": "E"})
    eq(st, 502)
    eq(emu.admin("GET", "records")["contacts"], 0)
    emu.admin("DELETE", "faults")
    # latency
    emu.admin("POST", "faults", {"latency_ms": 200})
    t0 = time.time()
    st, _, _ = emu.api("GET", "contacts?$top=1")
    check(time.time() - t0 >= 0.19, "latency applied")
    emu.admin("DELETE", "faults")
    # dropped connection
    emu.admin("POST", "faults", {"script": [{"drop": True, "count": 1}]})
    try:
        emu.api("GET", "contacts?$top=1")
        check(False, "expected a dropped connection")
    except (http.client.HTTPException, OSError):
        pass
    eq(emu.api("GET", "contacts?$top=1")[0], 200)


@test
def campaignresponse_validation(emu):
    emu.reset()
    camp = str(uuid.uuid4())
    camp2 = str(uuid.uuid4())
    contact = str(uuid.uuid4())
    emu.admin("POST", "records/campaigns", [{"campaignid": camp, "name": "C"},
                                            {"campaignid": camp2, "name": "D"}])
    emu.admin("POST", "records/contacts", [{"contactid": contact}])
    good = {"subject": "Opened: Spring mailing",
            "regardingobjectid_campaign_campaignresponse@odata.bind":
                "/campaigns(%s)" % camp,
            "channeltypecode": 1, "responsecode": 1, "category": "open",
            "receivedon": "2024-05-01",
            "campaignresponse_activity_parties": [
                {"partyid_contact@odata.bind": "/contacts(%s)" % contact,
                 "participationtypemask": 11}]}

    def bad(change, status=400, code="0x80044331", needle=None, drop=None):
        body = dict(good)
        body.update(change)
        if drop:
            del body[drop]
        st, _, js = emu.api("PATCH", "campaignresponses(%s)" % uuid.uuid4(),
                            body)
        eq(st, status, "%r" % (change or drop))
        c, m = error_of(js)
        eq(c, code, "%r" % change)
        if needle:
            check(needle in m, "%r not in %r" % (needle, m))
        if status == 400 and code == "0x80044331":
            check(m.startswith("A validation error occurred."))

    bad({}, drop="subject", needle="'subject'")
    bad({"subject": "x" * 201}, needle="maximum allowed length of '200'")
    bad({}, drop="regardingobjectid_campaign_campaignresponse@odata.bind",
        needle="regardingobjectid")
    bad({"channeltypecode": 7}, code="0x8004431a", needle="channeltypecode")
    bad({"responsecode": 5}, code="0x8004431a", needle="responsecode")
    bad({"firstname": "f" * 51}, needle="'firstname'")
    bad({"emailaddress": "e" * 101}, needle="'emailaddress'")
    bad({"description": "d" * 2001}, needle="'description'")
    bad({"regardingobjectid_campaign_campaignresponse@odata.bind":
         "/campaigns(%s)" % uuid.uuid4()}, status=404, code="0x80040217",
        needle="campaign With Id = ")
    eq(emu.admin("GET", "records")["campaignresponses"], 0, "nothing stored")
    rid = str(uuid.uuid4())
    st, _, _ = emu.api("PATCH", "campaignresponses(%s)" % rid, good)
    eq(st, 204, "valid")
    rec = emu.admin("GET", "records/campaignresponses")[0]
    eq(rec["_regardingobjectid_value"], camp)
    parties = rec["campaignresponse_activity_parties"]
    eq((parties[0]["_partyid_value"], parties[0]["participationtypemask"]),
       (contact, 11))
    st, _, js = emu.api("GET", "campaignresponses(%s)?$expand="
                        "campaignresponse_activity_parties" % rid)
    eq(js["campaignresponse_activity_parties"][0]["_partyid_value"], contact)
    # replaying the same upsert is fine; moving it to another campaign is not
    st, _, _ = emu.api("PATCH", "campaignresponses(%s)" % rid, good)
    eq(st, 204, "replay")
    eq(emu.admin("GET", "records")["campaignresponses"], 1)
    body = dict(good)
    body["regardingobjectid_campaign_campaignresponse@odata.bind"] = \
        "/campaigns(%s)" % camp2
    st, _, js = emu.api("PATCH", "campaignresponses(%s)" % rid, body)
    eq(st, 400, "regarding not valid for update")
    check("not valid for update" in error_of(js)[1])
    # filter by lookup
    st, _, js = emu.api("GET", "campaignresponses?$filter=" +
                        quote("_regardingobjectid_value eq %s" % camp))
    eq(len(js["value"]), 1)


@test
def actions_lists_seed_and_stats(emu):
    emu.reset()
    st, _, _ = emu.api("POST", "msdynmkt_emailclicked",
                       {"msdynmkt_signaltimestamp": "2024-05-01T00:00:00Z",
                        "msdynmkt_profileid": "x"})
    eq(st, 204, "custom trigger")
    acts = emu.admin("GET", "actions")
    eq((acts[0]["action"], acts[0]["client"]), ("msdynmkt_emailclicked",
                                                "client-a"))
    eq(acts[0]["parameters"]["msdynmkt_profileid"], "x")
    st, _, js = emu.api("POST", "NoSuchAction", {})
    eq(st, 404)
    eq(error_of(js)[0], "0x8006088a")
    # static list membership through $ref and the association read
    lid, c1, c2 = (str(uuid.uuid4()) for _ in range(3))
    st, _, _ = emu.api("POST", "lists", {"listid": lid, "listname": "L",
                                         "createdfromcode": 2, "type": False})
    eq(st, 204)
    emu.admin("POST", "records/contacts", [
        {"contactid": c1, "emailaddress1": "a@x"},
        {"contactid": c2, "emailaddress1": "b@x"}])
    for c in (c1, c2):
        st, _, _ = emu.api("POST", "lists(%s)/listcontact_association/$ref"
                           % lid, {"@odata.id": "%s/api/data/v9.2/contacts(%s)"
                                   % (emu.base, c)})
        eq(st, 204)
    st, _, js = emu.api("GET", "lists(%s)/listcontact_association?$select="
                        "emailaddress1" % lid)
    eq(sorted(r["emailaddress1"] for r in js["value"]), ["a@x", "b@x"])
    st, _, js = emu.api("POST", "lists", {"listname": "bad",
                                          "createdfromcode": 3})
    eq(st, 400, "createdfromcode option set")
    # seed file at start-up
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"campaigns": [{"campaignid": ACCOUNT1, "name": "Seeded"}]}, f)
    e2 = Emu("--seed", f.name)
    try:
        recs = e2.admin("GET", "records/campaigns")
        eq([r["name"] for r in recs], ["Seeded"])
        check(recs[0]["versionnumber"] > 0)
    finally:
        e2.stop()
        os.unlink(f.name)
    s = emu.admin("GET", "stats")
    for k in ("requests", "batch_requests", "operations", "ops_by_status",
              "throttled_429", "early_requests", "faults_served",
              "tokens_issued", "per_client", "request_log_tail"):
        check(k in s, "stats.%s" % k)
    check(s["ops_by_status"].get("204", 0) >= 4)
    e = s["request_log_tail"][-1]
    check({"t", "client", "method", "path", "status"} <= set(e))


# ---------------------------------------------------------------------------
# Bounce / opt-out worker support (docs/bounce.md): crmsync solution tables,
# consent4 rules, bounce columns, equality index, GET and If-Match in $batch.

PURPOSE_COM = "5e000000-0000-0000-0000-0000000000c1"
PURPOSE_TRX = "5e000000-0000-0000-0000-0000000000c2"
TOPIC1 = "70000000-0000-0000-0000-0000000000a1"
ADV1 = "ad000000-0000-0000-0000-000000000001"
ISO_UTC_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def seed_consent_catalog(emu):
    emu.admin("POST", "records/msdynmkt_purposes", [
        {"msdynmkt_purposeid": PURPOSE_COM, "msdynmkt_name": "Newsletter",
         "msdynmkt_type": 534120000},
        {"msdynmkt_purposeid": PURPOSE_TRX, "msdynmkt_name": "Receipts",
         "msdynmkt_type": 534120001}])
    emu.admin("POST", "records/msdynmkt_topics", [
        {"msdynmkt_topicid": TOPIC1, "msdynmkt_name": "Offers",
         "msdynmkt_purposeid@odata.bind": "/msdynmkt_purposes(%s)"
                                          % PURPOSE_COM}])


def entity_id(hdrs):
    return hdrs["odata-entityid"].rsplit("(", 1)[1][:-1]


@test
def crmsync_solution_tables(emu):
    emu.reset()
    emu.admin("POST", "records/crmsync_advertisingconsents", [
        {"crmsync_advertisingconsentid": ADV1, "crmsync_name": "Ads",
         "crmsync_tenant": "t1"}])
    st, h, _ = emu.api("POST", "contacts", {"emailaddress1": "h@x.example"})
    eq(st, 204)
    contact = entity_id(h)
    st, h, _ = emu.api("POST", "leads", {"emailaddress1": "h@x.example"})
    lead = entity_id(h)
    st, h, _ = emu.api("POST", "accounts", {"name": "Acc"})
    account = entity_id(h)
    hid = str(uuid.uuid4())
    body = {"crmsync_name": "opt-out Ads 2024-05-01T10:00:00.123Z",
            "crmsync_optin": False,
            "crmsync_occurredon": "2024-05-01T12:00:00.123+02:00",
            "crmsync_source": "LINK", "crmsync_reason": "clicked",
            "crmsync_ConsentId@odata.bind":
                "/crmsync_advertisingconsents(%s)" % ADV1,
            "crmsync_ContactId@odata.bind": "/contacts(%s)" % contact,
            "crmsync_LeadId@odata.bind": "/leads(%s)" % lead,
            "crmsync_AccountId@odata.bind": "/accounts(%s)" % account}
    st, h, js = emu.api("PATCH", "crmsync_optinhistories(%s)" % hid, body,
                        {"If-None-Match": "*"})
    eq(st, 204, "create-only history entry: %r" % (js,))
    check(h["odata-entityid"].endswith("/crmsync_optinhistories(%s)" % hid))
    st, h, js = emu.api("PATCH", "crmsync_optinhistories(%s)" % hid, body,
                        {"If-None-Match": "*"})
    eq(st, 412, "same entry again")
    eq(error_of(js), ("0x80040237",
                      "A record with matching key values already exists."))
    st, _, js = emu.api(
        "GET", "crmsync_optinhistories(%s)?$select=crmsync_optin,"
        "crmsync_occurredon,_crmsync_consentid_value,_crmsync_contactid_value,"
        "_crmsync_leadid_value,_crmsync_accountid_value" % hid,
        headers={"Prefer": 'odata.include-annotations="*"'})
    eq(st, 200)
    eq((js["crmsync_optin"], js["crmsync_occurredon"]),
       (False, "2024-05-01T10:00:00Z"), "UTC, whole seconds")
    eq((js["_crmsync_consentid_value"], js["_crmsync_contactid_value"],
        js["_crmsync_leadid_value"], js["_crmsync_accountid_value"]),
       (ADV1, contact, lead, account))
    eq(js["_crmsync_consentid_value@Microsoft.Dynamics.CRM."
          "lookuplogicalname"], "crmsync_advertisingconsent")
    check(js["@odata.etag"].startswith('W/"'))
    # filter + order by the entry time: the newest entry decides
    older = dict(body, crmsync_optin=True,
                 crmsync_occurredon="2024-04-01T00:00:00Z")
    st, _, _ = emu.api("POST", "crmsync_optinhistories", older)
    eq(st, 204)
    st, _, js = emu.api("GET", "crmsync_optinhistories?$select=crmsync_optin"
                        "&$top=1&$orderby=" + quote("crmsync_occurredon desc")
                        + "&$filter=" + quote(
                            "_crmsync_contactid_value eq %s and "
                            "_crmsync_consentid_value eq %s" % (contact, ADV1)))
    eq(st, 200)
    eq([r["crmsync_optin"] for r in js["value"]], [False], "newest first")

    def bad(change, status, code, needle, drop=()):
        b = dict(body, **change)
        for k in drop:
            b.pop(k)
        st, _, js = emu.api("POST", "crmsync_optinhistories", b)
        eq(st, status, "%r -> %r" % (change, js))
        c, msg = error_of(js)
        eq(c, code, "code for %r" % (change,))
        check(needle in msg, "%r not in %r" % (needle, msg))

    n0 = emu.admin("GET", "records")["crmsync_optinhistories"]
    missing = str(uuid.uuid4())
    bad({"crmsync_ConsentId@odata.bind":
         "/crmsync_advertisingconsents(%s)" % missing}, 404, "0x80040217",
        "crmsync_advertisingconsent With Id = %s Does Not Exist" % missing)
    bad({"crmsync_ContactId@odata.bind": "/contacts(%s)" % missing}, 404,
        "0x80040217", "contact With Id = %s Does Not Exist" % missing)
    bad({"crmsync_consentid@odata.bind":
         "/crmsync_advertisingconsents(%s)" % ADV1}, 400, "0x0",
        "An undeclared property 'crmsync_consentid' which only has property "
        "annotations", drop=("crmsync_ConsentId@odata.bind",))
    bad({"crmsync_ContactId@odata.bind": "/leads(%s)" % lead}, 400, "0x0",
        "'Microsoft.Dynamics.CRM.lead' was found, but it is not assignable to "
        "the expected type 'Microsoft.Dynamics.CRM.contact'")
    bad({"crmsync_unknown": "x"}, 400, "0x0",
        "Invalid property 'crmsync_unknown' was found in entity "
        "'Microsoft.Dynamics.CRM.crmsync_optinhistory'")
    bad({"crmsync_name": "n" * 201}, 400, "0x80044331",
        "The length of the 'crmsync_name' attribute of the "
        "'crmsync_optinhistory' entity exceeded the maximum allowed length "
        "of '200'.")
    bad({"crmsync_reason": "r" * 501}, 400, "0x80044331",
        "maximum allowed length of '500'")
    bad({"crmsync_optin": "false"}, 400, "0x0",
        "Cannot convert the literal 'false' to the expected type "
        "'Edm.Boolean'.")
    bad({"crmsync_occurredon": "yesterday"}, 400, "0x0",
        "to the expected type 'Edm.DateTimeOffset'")
    eq(emu.admin("GET", "records")["crmsync_optinhistories"], n0,
       "no failed write stored anything")
    # the reason may be exactly 500 characters; the name exactly 200
    st, _, js = emu.api("POST", "crmsync_optinhistories",
                        dict(body, crmsync_reason="r" * 500,
                             crmsync_name="n" * 200))
    eq(st, 204, js)
    # more columns on a strict table: POST /_admin/columns/<set>
    st, _, js = emu.api("POST", "crmsync_optinhistories",
                        dict(body, new_extra="x"))
    eq(st, 400)
    cols = emu.admin("POST", "columns/crmsync_optinhistories",
                     {"new_extra": "string"})
    check("new_extra" in cols["columns"])
    st, _, js = emu.api("POST", "crmsync_optinhistories",
                        dict(body, new_extra="x"))
    eq(st, 204, js)
    # advertising consents: name + tenant, nothing else
    st, h, _ = emu.api("POST", "crmsync_advertisingconsents",
                       {"crmsync_name": "Partner ads", "crmsync_tenant": "t2"})
    eq(st, 204)
    st, _, js = emu.api("GET", "crmsync_advertisingconsents?$select="
                        "crmsync_name&$filter=" + quote("crmsync_tenant eq 'T2'"))
    eq([r["crmsync_name"] for r in js["value"]], ["Partner ads"])
    eq(js["value"][0]["crmsync_advertisingconsentid"], entity_id(h))
    st, _, js = emu.api("POST", "crmsync_advertisingconsents",
                        {"crmsync_name": "x", "msdynmkt_type": 534120000})
    eq(st, 400, "unknown column on the consent table")
    # single-property writes are typed and checked too
    st, _, _ = emu.api("PUT", "crmsync_optinhistories(%s)/crmsync_occurredon"
                       % hid, {"value": "2024-06-01T00:00:00.5Z"})
    eq(st, 204)
    st, _, js = emu.api("GET", "crmsync_optinhistories(%s)/crmsync_occurredon"
                        % hid)
    eq(js["value"], "2024-06-01T00:00:00Z")
    st, _, js = emu.api("PUT", "crmsync_optinhistories(%s)/crmsync_optin"
                        % hid, {"value": "no"})
    eq((st, error_of(js)[0]), (400, "0x0"), "PUT typed property")
    st, _, js = emu.api("PUT", "crmsync_optinhistories(%s)/crmsync_nope"
                        % hid, {"value": "x"})
    eq((st, error_of(js)[0]), (404, "0x8006088a"), "PUT unknown property")
    st, _, _ = emu.api("DELETE", "crmsync_optinhistories(%s)" % hid)
    eq(st, 204)


@test
def consent4_rules_and_filters(emu):
    emu.reset()
    seed_consent_catalog(emu)
    base = {"msdynmkt_contactpointvalue": "a@b.example",
            "msdynmkt_contactpointtype": 534120000,
            "msdynmkt_contactpointconsenttype": 534120000,
            "msdynmkt_value": 534120002, "msdynmkt_source": 534120007,
            "msdynmkt_logicalreason": 534120007,
            "msdynmkt_reason": "crmsync:t=2024-05-01T10:00:00.000Z;"
                               "k=UNSUBSCRIBE;s=LIST_UNSUBSCRIBE; ",
            "msdynmkt_purposeId@odata.bind": "/msdynmkt_purposes(%s)"
                                             % PURPOSE_COM}

    def create(change=None, drop=(), headers=None):
        b = dict(base, **(change or {}))
        for k in drop:
            b.pop(k)
        rid = str(uuid.uuid4())
        st, _, js = emu.api("PATCH", "msdynmkt_contactpointconsent4s(%s)"
                            % rid, b, dict({"If-None-Match": "*"},
                                           **(headers or {})))
        return st, js, rid

    for attr in ("msdynmkt_contactpointvalue", "msdynmkt_contactpointtype",
                 "msdynmkt_contactpointconsenttype"):
        st, js, _ = create(drop=(attr,))
        eq(st, 400, "without %s" % attr)
        eq(error_of(js), ("0x80044331", "A validation error occurred.  The "
                          "'%s' attribute of the 'msdynmkt_contactpointconsent4'"
                          " entity is required and cannot be empty." % attr))
    st, js, _ = create(drop=("msdynmkt_purposeId@odata.bind",))
    eq(st, 400, "without purpose")
    check("'msdynmkt_purposeid' attribute" in error_of(js)[1])
    missing = str(uuid.uuid4())
    st, js, _ = create({"msdynmkt_purposeId@odata.bind":
                        "/msdynmkt_purposes(%s)" % missing})
    eq((st, error_of(js)), (404, ("0x80040217", "msdynmkt_purpose With Id = "
                                  "%s Does Not Exist" % missing)))
    st, js, _ = create({"msdynmkt_topicId@odata.bind":
                        "/msdynmkt_topics(%s)" % missing,
                        "msdynmkt_contactpointconsenttype": 534120001})
    eq((st, error_of(js)[0]), (404, "0x80040217"), "missing topic")
    st, js, _ = create({"msdynmkt_purposeid@odata.bind":
                        "/msdynmkt_purposes(%s)" % PURPOSE_COM},
                       drop=("msdynmkt_purposeId@odata.bind",))
    eq((st, error_of(js)[0]), (400, "0x0"), "nav names are case-sensitive")
    check("undeclared property 'msdynmkt_purposeid'" in error_of(js)[1])
    st, js, _ = create({"msdynmkt_purposeId@odata.bind":
                        "/msdynmkt_topics(%s)" % TOPIC1})
    eq(st, 400, "purpose nav bound to a topic")
    st, js, _ = create({"msdynmkt_contactpointconsenttype": 534120002})
    eq((st, error_of(js)[0]), (400, "0x8004431a"), "consent type range")
    eq(emu.admin("GET", "records")["msdynmkt_contactpointconsent4s"], 0)
    # valid rows: purpose (mixed-case address), topic, other channel, other
    # purpose
    st, js, purpose_row = create({"msdynmkt_contactpointvalue": "A@b.Example"})
    eq(st, 204, js)
    st, js, topic_row = create({
        "msdynmkt_contactpointconsenttype": 534120001,
        "msdynmkt_topicId@odata.bind": "/msdynmkt_topics(%s)" % TOPIC1})
    eq(st, 204, js)
    st, js, _ = create({"msdynmkt_contactpointtype": 534120001})
    eq(st, 204, js)
    st, js, trx_row = create({"msdynmkt_purposeId@odata.bind":
                              "/msdynmkt_purposes(%s)" % PURPOSE_TRX})
    eq(st, 204, js)
    st, js, _ = create({"msdynmkt_contactpointvalue": "other@b.example"})
    eq(st, 204, js)
    st, js, dup = create()
    st2, js2 = emu.api("PATCH", "msdynmkt_contactpointconsent4s(%s)" % dup,
                       base, {"If-None-Match": "*"})[::2]
    eq((st2, error_of(js2)[0]), (412, "0x80040237"), "create-only twice")

    def rows(flt, sel="msdynmkt_contactpointconsent4id"):
        st, _, js = emu.api("GET", "msdynmkt_contactpointconsent4s?$select=%s"
                            "&$filter=%s" % (sel, quote(flt, safe="")))
        check(st == 200, "%r -> %r" % (flt, js))
        return js["value"]

    point = ("msdynmkt_contactpointvalue eq 'A@B.example' and "
             "msdynmkt_contactpointtype eq 534120000")
    got = {r["msdynmkt_contactpointconsent4id"] for r in rows(point)}
    eq(len(got), 4, "4 email rows of the address, any case")
    check(purpose_row in got and topic_row in got and trx_row in got)
    got = {r["msdynmkt_contactpointconsent4id"] for r in rows(
        point + " and _msdynmkt_purposeid_value eq %s and "
        "_msdynmkt_topicid_value eq null" % PURPOSE_COM)}
    eq(got, {purpose_row, dup}, "purpose rows without topic")
    got = [r["msdynmkt_contactpointconsent4id"] for r in rows(
        point + " and _msdynmkt_topicid_value eq %s" % TOPIC1.upper())]
    eq(got, [topic_row], "topic row")
    # rows carry modifiedon (ISO 8601 UTC) and @odata.etag
    r = rows("msdynmkt_contactpointconsent4id eq %s" % purpose_row,
             "msdynmkt_value,modifiedon,msdynmkt_reason,"
             "_msdynmkt_purposeid_value,_msdynmkt_topicid_value")[0]
    check(ISO_UTC_RE.fullmatch(r["modifiedon"]), r["modifiedon"])
    check(re.fullmatch(r'W/"\d+"', r["@odata.etag"]), r["@odata.etag"])
    eq((r["msdynmkt_value"], r["_msdynmkt_purposeid_value"],
        r["_msdynmkt_topicid_value"]), (534120002, PURPOSE_COM, None))
    # update with the etag read: ok once, then 412 (the row changed)
    etag = r["@odata.etag"]
    url = "msdynmkt_contactpointconsent4s(%s)" % purpose_row
    st, _, js = emu.api("PATCH", url, {"msdynmkt_value": 534120001},
                        {"If-Match": etag})
    eq(st, 204, js)
    st, _, js = emu.api("PATCH", url, {"msdynmkt_value": 534120002},
                        {"If-Match": etag})
    eq(st, 412, "stale etag")
    eq(error_of(js), ("0x80060882", "The version of the existing record "
                      "doesn't match the RowVersion property provided."))
    st, _, js = emu.api("GET", url + "?$select=msdynmkt_value")
    eq(js["msdynmkt_value"], 534120001, "stale write not applied")
    check(js["@odata.etag"] != etag)
    # modifiedon moves on every write (seeded row with an old modifiedon)
    old_id = str(uuid.uuid4())
    emu.admin("POST", "records/msdynmkt_contactpointconsent4s", [dict(
        {k: v for k, v in base.items() if "@" not in k},
        msdynmkt_contactpointconsent4id=old_id,
        _msdynmkt_purposeid_value=PURPOSE_COM,
        modifiedon="2020-01-01T00:00:00Z")])
    url = "msdynmkt_contactpointconsent4s(%s)" % old_id
    st, _, js = emu.api("GET", url + "?$select=modifiedon")
    eq(js["modifiedon"], "2020-01-01T00:00:00Z", "seeded modifiedon kept")
    st, _, _ = emu.api("PATCH", url, {"msdynmkt_value": 534120001},
                       {"If-Match": js["@odata.etag"]})
    eq(st, 204)
    st, _, js = emu.api("GET", url + "?$select=modifiedon")
    check(js["modifiedon"] > "2024", "modifiedon updated: %r"
          % js["modifiedon"])
    # clearing the required purpose on update is rejected
    st, _, js = emu.api("PATCH", url, {"msdynmkt_purposeId@odata.bind": None},
                        {"If-Match": "*"})
    eq(st, 400, "purpose cleared")


@test
def bounce_columns_on_people(emu):
    emu.reset()
    ids = {}
    for es in ("contacts", "accounts", "leads"):
        rid = str(uuid.uuid4())
        body = {"emailaddress1": "Mixed.Case@Example.com"}
        if es == "accounts":
            body["name"] = "A"
        st, _, js = emu.api("PATCH", "%s(%s)" % (es, rid), body)
        eq(st, 204, js)
        ids[es] = rid
        st, _, js = emu.api("PATCH", "%s(%s)" % (es, rid), {
            "crmsync_emailbounced": True,
            "crmsync_emailbouncedon": "2024-05-01T10:00:00.999Z",
            "donotbulkemail": True}, {"If-Match": "*"})
        eq(st, 204, js)
        st, _, js = emu.api(
            "GET", "%s?$select=emailaddress1,crmsync_emailbounced,"
            "crmsync_emailbouncedon,donotbulkemail&$filter=%s"
            % (es, quote("emailaddress1 eq 'mixed.case@example.COM'")))
        eq(st, 200)
        eq(len(js["value"]), 1, "%s by address, case-insensitive" % es)
        r = js["value"][0]
        eq((r["crmsync_emailbounced"], r["crmsync_emailbouncedon"],
            r["donotbulkemail"], r["emailaddress1"]),
           (True, "2024-05-01T10:00:00Z", True, "Mixed.Case@Example.com"),
           es)
        eq(set(r), {"@odata.etag", "emailaddress1", "crmsync_emailbounced",
                    "crmsync_emailbouncedon", "donotbulkemail",
                    es[:-1] + "id"}, "$select")
        for bad_body, edm in (({"crmsync_emailbounced": "true"},
                               "Edm.Boolean"),
                              ({"donotbulkemail": 1}, "Edm.Boolean"),
                              ({"crmsync_emailbouncedon": "2024-13-01"},
                               "Edm.DateTimeOffset"),
                              ({"emailaddress1": 5}, "Edm.String")):
            st, _, js = emu.api("PATCH", "%s(%s)" % (es, rid), bad_body,
                                {"If-Match": "*"})
            eq(st, 400, "%s %r" % (es, bad_body))
            check(edm in error_of(js)[1], error_of(js)[1])
        st, _, js = emu.api("PATCH", "%s(%s)" % (es, rid),
                            {"crmsync_emailbounced": False,
                             "crmsync_emailbouncedon": None},
                            {"If-Match": "*"})
        eq(st, 204, "reset to No")
        st, _, js = emu.api("GET", "%s(%s)?$select=crmsync_emailbounced,"
                            "crmsync_emailbouncedon" % (es, rid))
        eq((js["crmsync_emailbounced"], js["crmsync_emailbouncedon"]),
           (False, None))
    st, _, js = emu.api("PATCH", "leads(%s)" % ids["leads"],
                        {"statecode": 2, "statuscode": 6}, {"If-Match": "*"})
    eq(st, 204, "disqualified lead")
    st, _, js = emu.api("GET", "leads?$select=statecode&$filter=" +
                        quote("statecode eq 2"))
    eq([r["leadid"] for r in js["value"]], [ids["leads"]])
    st, _, js = emu.api("PATCH", "leads(%s)" % ids["leads"], {"statecode": 3},
                        {"If-Match": "*"})
    eq((st, error_of(js)[0]), (400, "0x8004431a"), "lead statecode 3")
    st, _, js = emu.api("POST", "contacts",
                        {"emailaddress1": "x" * 95 + "@e.example"})
    eq(st, 400, "emailaddress1 is String(100)")


@test
def email_index_stays_consistent(emu):
    """The emailaddress1 / contactpointvalue index must give the same
    answers as a full scan through every kind of write."""
    emu.reset()

    def found(addr, es="contacts"):
        st, _, js = emu.api("GET", "%s?$select=emailaddress1&$filter=%s" % (
            es, quote("emailaddress1 eq '%s'" % addr.replace("'", "''"),
                      safe="")))
        eq(st, 200, js)
        return sorted(r[es[:-1] + "id"] for r in js["value"])

    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    emu.admin("POST", "records/contacts", [
        {"contactid": a, "emailaddress1": "one@x.example"},
        {"contactid": b, "emailaddress1": "ONE@x.example"}])
    eq(found("One@X.example"), sorted([a, b]), "seeded, shared address")
    st, _, _ = emu.api("POST", "contacts", {"contactid": c,
                                            "emailaddress1": "o'ne@x.example"})
    eq(found("O'NE@x.example"), [c], "created, quote in address")
    st, _, _ = emu.api("PATCH", "contacts(%s)" % b,
                       {"emailaddress1": "two@x.example"}, {"If-Match": "*"})
    eq((found("one@x.example"), found("two@x.example")), ([a], [b]), "moved")
    st, _, _ = emu.api("PUT", "contacts(%s)/emailaddress1" % b,
                       {"value": "three@x.example"})
    eq((found("two@x.example"), found("three@x.example")), ([], [b]), "PUT")
    st, _, _ = emu.api("DELETE", "contacts(%s)/emailaddress1" % b)
    eq(found("three@x.example"), [], "property cleared")
    st, _, _ = emu.api("DELETE", "contacts(%s)" % a)
    eq(found("one@x.example"), [], "deleted")
    # a rolled-back change set restores the index
    cs = {"changeset": [
        {"method": "PATCH", "url": "contacts(%s)" % c,
         "body": {"emailaddress1": "moved@x.example"},
         "headers": {"If-Match": "*"}},
        {"method": "POST", "url": "contacts",
         "body": {"emailaddress1": "new@x.example"}},
        {"method": "PATCH", "url": "contacts(%s)" % uuid.uuid4(),
         "body": {"lastname": "x"}, "headers": {"If-Match": "*"}}]}
    st, _, _ = send_batch(emu, [cs])
    eq(st, 400)
    eq((found("o'ne@x.example"), found("moved@x.example"),
        found("new@x.example")), ([c], [], []), "rollback")
    # other filter shapes still scan: or / not / functions
    st, _, js = emu.api("GET", "contacts?$filter=" + quote(
        "emailaddress1 eq 'nobody@x.example' or startswith(emailaddress1,'o''')",
        safe=""))
    eq([r["contactid"] for r in js["value"]], [c], "or")
    st, _, js = emu.api("GET", "contacts?$filter=" + quote(
        "not (emailaddress1 eq 'nobody@x.example')", safe=""))
    eq(len(js["value"]), 2, "not")
    # admin DELETE clears the index
    emu.admin("DELETE", "records/contacts")
    eq(found("o'ne@x.example"), [], "cleared")
    emu.admin("POST", "records/leads", [{"emailaddress1": "l@x.example"}])
    eq(len(found("L@X.EXAMPLE", "leads")), 1, "leads indexed")
    # speed: 50k contacts; a lookup by address must not scan them all
    recs = [{"contactid": str(uuid.UUID(int=i + 1)),
             "emailaddress1": "user%d@bulk.example" % i,
             "lastname": "L%d" % i} for i in range(50000)]
    for i in range(0, len(recs), 25000):
        emu.admin("POST", "records/contacts", recs[i:i + 25000])
    n = 200
    t0 = time.perf_counter()
    for i in range(n):
        eq(len(found("USER%d@bulk.example" % (i * 37))), 1)
    ix = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for i in range(20):
        st, _, js = emu.api("GET", "contacts?$select=lastname&$filter=" + quote(
            "lastname eq 'L%d'" % (i * 37), safe=""))
        eq(len(js["value"]), 1)
    scan = (time.perf_counter() - t0) / 20
    print("  by-address lookup over 50k contacts: %.2f ms indexed, %.2f ms "
          "scan" % (ix * 1000, scan * 1000))
    check(ix < scan / 3, "index not used: %.2f ms vs %.2f ms scan"
          % (ix * 1000, scan * 1000))
    emu.reset()


def batch_parts(emu, items, prefer=None):
    st, hdrs, data = send_batch(emu, items, prefer=prefer)
    ct = hdrs.get("content-type", "")
    check(ct.startswith("multipart/mixed; boundary=batchresponse_"),
          "%d %r %r" % (st, ct, data[:300]))
    return st, parse_multipart(data.decode(), _boundary(ct))


@test
def batch_get_and_if_match(emu):
    emu.reset()
    a, b, missing = (str(uuid.uuid4()) for _ in range(3))
    emu.admin("POST", "records/contacts", [
        {"contactid": a, "emailaddress1": "x@y.example", "lastname": "A"},
        {"contactid": b, "emailaddress1": "X@Y.example", "lastname": "B"}])
    flt = "emailaddress1 eq 'x@y.example'"
    gets = [{"method": "GET", "url": "contacts?$select=contactid,emailaddress1"
             "&$filter=" + quote(flt, safe="'@")},
            {"method": "GET", "url": "/api/data/v9.2/contacts?$select="
             "contactid,emailaddress1&$filter=" + flt},  # raw spaces
            {"method": "GET", "url": "contacts(%s)?$select=emailaddress1" % a},
            {"method": "GET", "url": "contacts(%s)?$select=emailaddress1"
             % missing}]
    st, parts = batch_parts(emu, gets, prefer="odata.continue-on-error")
    eq(st, 200)
    eq([p["status"] for p in parts], [200, 200, 200, 404])
    # the collection part has the documented shape (golden 01, GET part)
    _, gparts = golden_response("01-batch-no-changeset.response.http", emu.base)
    gget = gparts[-1]
    for p in parts[:2]:
        eq((p["content_type"], p["cte"], p["status"],
            [k for k, _ in p["headers"]]),
           (gget["content_type"], gget["cte"], gget["status"],
            [k for k, _ in gget["headers"]]), "collection part layout")
        eq(dict(p["headers"])["Content-Type"],
           "application/json; odata.metadata=minimal; odata.streaming=true")
        eq(sorted(r["contactid"] for r in p["json"]["value"]), sorted([a, b]))
        for r in p["json"]["value"]:
            check(re.fullmatch(r'W/"\d+"', r["@odata.etag"]), r)
            eq(set(r), {"@odata.etag", "contactid", "emailaddress1"})
        check(p["json"]["@odata.context"].endswith(
            "$metadata#contacts(contactid,emailaddress1)"))
    one = parts[2]
    eq((one["json"]["contactid"], one["json"]["emailaddress1"]),
       (a, "x@y.example"))
    etag_a = one["json"]["@odata.etag"]
    eq(dict(one["headers"]).get("ETag"), etag_a, "ETag header on the part")
    eq(error_of(parts[3]["json"]),
       ("0x80040217", "contact With Id = %s Does Not Exist" % missing))
    check(any(k == "REQ_ID" for k, _ in parts[3]["headers"]))
    # without continue-on-error a failed GET stops the batch
    st, parts = batch_parts(emu, [gets[3], gets[2]])
    eq((st, [p["status"] for p in parts]), (400, [404]))
    # If-Match inside $batch: stale etag -> 412 and the change set rolls
    # back; current etag -> 204; If-Match * on a missing row -> 404;
    # If-None-Match * on an existing row -> 412
    stale = 'W/"1"'
    cs = {"changeset": [
        {"method": "PATCH", "url": "contacts(%s)" % b, "content_id": "1",
         "body": {"lastname": "B2"}, "headers": {"If-Match": "*"}},
        {"method": "PATCH", "url": "contacts(%s)" % a, "content_id": "2",
         "body": {"lastname": "A2"}, "headers": {"If-Match": stale}}]}
    st, parts = batch_parts(emu, [cs])
    eq((st, len(parts), parts[0]["status"], parts[0]["content_id"]),
       (400, 1, 412, "2"))
    eq(error_of(parts[0]["json"]),
       ("0x80060882", "The version of the existing record doesn't match the "
                      "RowVersion property provided."))
    recs = {r["contactid"]: r for r in emu.admin("GET", "records/contacts")}
    eq((recs[a]["lastname"], recs[b]["lastname"]), ("A", "B"), "rolled back")
    ops = [{"method": "PATCH", "url": "contacts(%s)" % a,
            "body": {"lastname": "A3"}, "headers": {"If-Match": etag_a}},
           {"method": "PATCH", "url": "contacts(%s)" % a,
            "body": {"lastname": "A4"}, "headers": {"If-Match": etag_a}},
           {"method": "PATCH", "url": "contacts(%s)" % missing,
            "body": {"lastname": "M"}, "headers": {"If-Match": "*"}},
           {"method": "PATCH", "url": "contacts(%s)" % b,
            "body": {"lastname": "B5"}, "headers": {"If-None-Match": "*"}},
           {"method": "GET", "url": "contacts(%s)?$select=lastname" % a}]
    st, parts = batch_parts(emu, ops, prefer="odata.continue-on-error")
    eq(st, 200)
    eq([p["status"] for p in parts], [204, 412, 404, 412, 200])
    eq(error_of(parts[2]["json"])[0], "0x80040217")
    eq(error_of(parts[3]["json"])[0], "0x80040237")
    eq(parts[4]["json"]["lastname"], "A3", "only the first etag write won")
    check(parts[4]["json"]["@odata.etag"] != etag_a)
    eq(len(emu.admin("GET", "records/contacts")), 2, "nothing created")


@test
def seed_consent_and_history_tables(emu):
    contact = str(uuid.uuid4())
    row = str(uuid.uuid4())
    seed = {
        "_columns": {"crmsync_optinhistories": {"new_channel": "string"}},
        "msdynmkt_purposes": [
            {"msdynmkt_purposeid": PURPOSE_COM, "msdynmkt_name": "News",
             "msdynmkt_type": 534120000},
            {"msdynmkt_purposeid": PURPOSE_TRX, "msdynmkt_name": "Receipts",
             "msdynmkt_type": 534120001}],
        "msdynmkt_topics": [
            {"msdynmkt_topicid": TOPIC1, "msdynmkt_name": "Offers",
             "msdynmkt_purposeid@odata.bind": "/msdynmkt_purposes(%s)"
                                              % PURPOSE_COM}],
        "msdynmkt_contactpointconsent4s": [
            {"msdynmkt_contactpointconsent4id": row,
             "msdynmkt_contactpointvalue": "Seed@X.example",
             "msdynmkt_contactpointtype": 534120000,
             "msdynmkt_contactpointconsenttype": 534120001,
             "msdynmkt_value": 534120001, "msdynmkt_source": 534120004,
             "modifiedon": "2024-03-01T09:00:00.250+01:00",
             "msdynmkt_purposeId@odata.bind": "/msdynmkt_purposes(%s)"
                                              % PURPOSE_COM,
             "msdynmkt_topicId@odata.bind": "/msdynmkt_topics(%s)" % TOPIC1}],
        "crmsync_advertisingconsents": [
            {"crmsync_advertisingconsentid": ADV1, "crmsync_name": "Ads",
             "crmsync_tenant": "t1"}],
        "contacts": [{"contactid": contact,
                      "emailaddress1": "seed@x.example",
                      "crmsync_emailbounced": True,
                      "crmsync_emailbouncedon": "2024-02-01T10:00:00.5+01:00"}],
        "crmsync_optinhistories": [
            {"crmsync_name": "seeded", "crmsync_optin": True,
             "crmsync_occurredon": "2024-01-01T00:00:00Z",
             "crmsync_ConsentId@odata.bind":
                 "/crmsync_advertisingconsents(%s)" % ADV1,
             "crmsync_ContactId@odata.bind": "/contacts(%s)" % contact}],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(seed, f)
    e2 = Emu("--seed", f.name)
    try:
        st, _, js = e2.api("GET", "msdynmkt_purposes?$select=msdynmkt_name"
                           "&$filter=" + quote("msdynmkt_type eq 534120000"))
        eq([p["msdynmkt_purposeid"] for p in js["value"]], [PURPOSE_COM])
        st, _, js = e2.api("GET", "msdynmkt_topics(%s)?$select="
                           "_msdynmkt_purposeid_value" % TOPIC1)
        eq(js["_msdynmkt_purposeid_value"], PURPOSE_COM)
        st, _, js = e2.api(
            "GET", "msdynmkt_contactpointconsent4s?$select=modifiedon,"
            "msdynmkt_value,_msdynmkt_purposeid_value,_msdynmkt_topicid_value"
            "&$filter=" + quote("msdynmkt_contactpointvalue eq 'seed@x.example'"
                                " and msdynmkt_contactpointtype eq 534120000",
                                safe=""))
        eq(len(js["value"]), 1, "seeded consent row found by address")
        r = js["value"][0]
        eq((r["msdynmkt_contactpointconsent4id"], r["modifiedon"],
            r["_msdynmkt_purposeid_value"], r["_msdynmkt_topicid_value"]),
           (row, "2024-03-01T08:00:00Z", PURPOSE_COM, TOPIC1))
        check(r["@odata.etag"].startswith('W/"'))
        st, _, js = e2.api("GET", "contacts?$select=crmsync_emailbouncedon"
                           "&$filter=" + quote("emailaddress1 eq "
                                               "'SEED@x.example'", safe=""))
        eq([c["crmsync_emailbouncedon"] for c in js["value"]],
           ["2024-02-01T09:00:00Z"], "seeded datetime normalised")
        st, _, js = e2.api("GET", "crmsync_optinhistories?$select="
                           "crmsync_name,_crmsync_consentid_value,"
                           "_crmsync_contactid_value")
        eq([(h["crmsync_name"], h["_crmsync_consentid_value"],
             h["_crmsync_contactid_value"]) for h in js["value"]],
           [("seeded", ADV1, contact)])
        st, _, js = e2.api("POST", "crmsync_optinhistories",
                           {"crmsync_name": "x", "new_channel": "email"})
        eq(st, 204, "column declared by the seed's _columns: %r" % (js,))
    finally:
        e2.stop()
        os.unlink(f.name)


@test
def throughput_and_memory(emu):
    emu.reset()
    camp = str(uuid.uuid4())
    emu.admin("POST", "records/campaigns", [{"campaignid": camp, "name": "B"}])
    contacts = [str(uuid.uuid4()) for _ in range(500)]
    emu.admin("POST", "records/contacts", [{"contactid": c} for c in contacts])
    batches = []
    for b in range(20):
        ops = []
        for i in range(500):
            ops.append({"method": "PATCH",
                        "url": "/api/data/v9.2/campaignresponses(%s)"
                               % uuid.uuid4(),
                        "body": {
                            "subject": "Clicked: https://example.com/%d" % i,
                            "regardingobjectid_campaign_campaignresponse"
                            "@odata.bind": "/campaigns(%s)" % camp,
                            "channeltypecode": 1, "responsecode": 1,
                            "category": "click", "receivedon": "2024-05-01",
                            "campaignresponse_activity_parties": [
                                {"partyid_contact@odata.bind":
                                 "/contacts(%s)" % contacts[i],
                                 "participationtypemask": 11}]}})
        batches.append(build_batch(ops))
    emu.token()
    t0 = time.perf_counter()
    for boundary, body in batches:
        st, hdrs, data = emu_batch_raw(
            emu, body, {"Content-Type": "multipart/mixed; boundary=\"%s\""
                        % boundary, "Prefer": "odata.continue-on-error"},
            conn="perf")
        eq(st, 200)
    dt = time.perf_counter() - t0
    rate = 10000 / dt
    print("  throughput: 10000 PATCH upserts in 20 $batch requests: %.2f s, "
          "%.0f ops/s" % (dt, rate))
    eq(emu.admin("GET", "records")["campaignresponses"], 10000)
    check(rate >= 2000, "throughput %.0f ops/s below 2000" % rate)
    # memory: 200k campaign responses
    rss0 = rss_kb(emu.proc.pid)
    chunk = []
    for i in range(200000):
        chunk.append({"activityid": str(uuid.uuid4()),
                      "subject": "Opened: mailing %d" % (i % 100),
                      "_regardingobjectid_value": camp,
                      "channeltypecode": 1, "responsecode": 1,
                      "category": "open", "receivedon": "2024-05-01",
                      "campaignresponse_activity_parties": [
                          {"activitypartyid": str(uuid.uuid4()),
                           "_partyid_value": contacts[i % 500],
                           "participationtypemask": 11}]})
        if len(chunk) == 20000:
            emu.admin("POST", "records/campaignresponses", chunk)
            chunk = []
    rss1 = rss_kb(emu.proc.pid)
    per = (rss1 - rss0) * 1024 / 200000
    print("  memory: RSS %d MB -> %d MB for 200k records (%.0f B/record)"
          % (rss0 // 1024, rss1 // 1024, per))
    check(per < 3000, "%.0f bytes per record" % per)
    check(rss1 < 1024 * 1024, "RSS above 1 GB")
    # a lookup filter over 210k records still answers promptly
    t0 = time.perf_counter()
    st, _, js = emu.api("GET", "campaignresponses?$select=subject&$top=5&$filter="
                        + quote("_regardingobjectid_value eq %s" % camp))
    eq((st, len(js["value"])), (200, 5))
    print("  filtered query over 210k records: %.2f s" % (time.perf_counter() - t0))
    emu.reset()


# ---------------------------------------------------------------------------
# List-sync worker support (docs/listsync.md): lists and members, paging a
# 1M-member list, FormattedValue, FetchXML, In() in $batch, enforcement
# model, list status columns.

FMT = "@OData.Community.Display.V1.FormattedValue"


def next_path(js):
    nl = js.get("@odata.nextLink")
    if not nl:
        return None
    u = urlsplit(nl)
    return u.path + "?" + u.query


@test
def listsync_million_member_list(emu):
    emu.reset()
    lid = str(uuid.uuid4())
    t0 = time.perf_counter()
    r = emu.admin("POST", "bulk-list", {
        "list_id": lid, "entity": "contact", "count": 1000000,
        "email_pattern": "user{n}@bench.example", "listname": "Bench",
        "fields": {"firstname": "F{n}", "lastname": "Bench"},
        "every": [{"n": 10, "offset": 3, "fields": {"statecode": 1,
                                                    "statuscode": 2}}]})
    seed_s = time.perf_counter() - t0
    print("  bulk-list: 1,000,000 contacts + memberships in %.1f s" % seed_s)
    eq((r["created"], r["membercount"], r["list_id"]), (1000000, 1000000, lid))
    check(seed_s < 30, "bulk seed took %.1f s" % seed_s)
    st, _, js = emu.api("GET", "lists(%s)?$select=listname,type,createdfromcode,"
                        "query,membercount" % lid)
    eq(st, 200)
    eq((js["listname"], js["type"], js["createdfromcode"], js["query"],
        js["membercount"]), ("Bench", False, 2, None, 1000000), "list record")
    # the email index covers bulk records
    st, _, js = emu.api("GET", "contacts?$select=firstname&$filter=" +
                        quote("emailaddress1 eq 'USER777@bench.example'"))
    eq([x["firstname"] for x in js["value"]], ["F777"], "indexed bulk record")
    # page through every member
    sel = "contactid,emailaddress1,statecode,firstname"
    url = "lists(%s)/listcontact_association?$select=%s" % (lid, sel)
    seen = set()
    prev = ""
    inactive = 0
    pages = 0
    times = []
    while url:
        t1 = time.perf_counter()
        st, hdrs, js = emu.api("GET", url,
                               headers={"Prefer": "odata.maxpagesize=5000"})
        times.append(time.perf_counter() - t1)
        eq(st, 200, "member page")
        pages += 1
        for row in js["value"]:
            cid = row["contactid"]
            check(cid > prev, "members in key order, no repeats")
            prev = cid
            seen.add(row["emailaddress1"])
            inactive += row["statecode"] == 1
        if pages == 1:
            eq(hdrs.get("preference-applied"), "odata.maxpagesize=5000")
            check(set(js["value"][0]) >= {"contactid", "emailaddress1",
                                          "statecode", "firstname"})
        url = next_path(js)
    eq((pages, len(seen), inactive), (200, 1000000, 100000), "full pass")
    print("  paged 1M members in 200 pages: %.1f s (first page %.0f ms, last "
          "page %.0f ms, slowest %.0f ms)" % (sum(times), times[0] * 1000,
                                              times[-1] * 1000,
                                              max(times) * 1000))
    check(times[-1] < max(0.5, 5 * times[1]), "last page O(page), not O(n)")
    # maxpagesize above 5000 is capped; default page size 5000
    st, hdrs, js = emu.api("GET", "lists(%s)/listcontact_association?$select="
                           "contactid" % lid,
                           headers={"Prefer": "odata.maxpagesize=9000"})
    eq((len(js["value"]), hdrs.get("preference-applied")),
       (5000, "odata.maxpagesize=5000"))
    st, _, js = emu.api("GET", "lists(%s)/listcontact_association?$select="
                        "contactid" % lid)
    eq(len(js["value"]), 5000)
    check("@odata.nextLink" in js)
    # a $filter on a member page still pages O(page)
    st, _, js = emu.api("GET", "lists(%s)/listcontact_association?$select="
                        "firstname&$filter=%s" % (lid, quote("statecode eq 1")),
                        headers={"Prefer": "odata.maxpagesize=10"})
    eq(len(js["value"]), 10)
    check(all(x["firstname"].endswith("3") for x in js["value"]))
    # membercount follows adds, removes and deletes
    c_new = str(uuid.uuid4())
    emu.api("POST", "contacts", {"contactid": c_new, "emailaddress1": "n@x"})
    st, _, _ = emu.api("POST", "lists(%s)/listcontact_association/$ref" % lid,
                       {"@odata.id": "%s/api/data/v9.2/contacts(%s)"
                        % (emu.base, c_new)})
    eq(st, 204)
    mc = lambda: emu.api("GET", "lists(%s)?$select=membercount" % lid)[2][
        "membercount"]  # noqa: E731
    eq(mc(), 1000001, "after add")
    st, _, _ = emu.api("DELETE", "lists(%s)/listcontact_association(%s)/$ref"
                       % (lid, c_new))
    eq(st, 204)
    eq(mc(), 1000000, "after remove")
    st, _, js = emu.api("GET", "lists(%s)/listcontact_association?$select="
                        "contactid" % lid, headers={"Prefer":
                                                    "odata.maxpagesize=1"})
    t1 = time.perf_counter()
    st, _, _ = emu.api("DELETE", "contacts(%s)" % js["value"][0]["contactid"])
    eq(st, 204)
    print("  delete of a member contact: %.1f ms"
          % ((time.perf_counter() - t1) * 1000))
    eq(mc(), 999999, "after deleting a member contact")
    emu.reset()


@test
def listsync_lists_by_type_and_states(emu):
    emu.reset()
    ll = str(uuid.uuid4())
    la = str(uuid.uuid4())
    r = emu.admin("POST", "bulk-list", {
        "list_id": ll, "entity": "lead", "count": 30, "start": 1,
        "email_pattern": "lead{n}@x.example",
        "every": [{"n": 3, "fields": {"statecode": 1, "statuscode": 3}},
                  {"n": 5, "fields": {"statecode": 2, "statuscode": 4}}]})
    eq(r["membercount"], 30)
    emu.admin("POST", "bulk-list", {"list_id": la, "entity": "accounts",
                                    "count": 7, "email_pattern": None,
                                    "fields": {"name": "Acc {n}"}})
    st, _, js = emu.api("GET", "lists(%s)?$select=createdfromcode,membercount"
                        % ll)
    eq((js["createdfromcode"], js["membercount"]), (4, 30))
    st, _, js = emu.api("GET", "lists(%s)/listlead_association?$select="
                        "emailaddress1,statecode" % ll,
                        headers={"Prefer": "odata.maxpagesize=7"})
    rows = []
    url = "lists(%s)/listlead_association?$select=emailaddress1,statecode" % ll
    while url:
        st, _, js = emu.api("GET", url, headers={"Prefer": "odata.maxpagesize=7"})
        rows.extend(js["value"])
        url = next_path(js)
    eq(len(rows), 30)
    states = {x["emailaddress1"]: x["statecode"] for x in rows}
    eq((states["lead3@x.example"], states["lead10@x.example"],
        states["lead15@x.example"], states["lead1@x.example"]), (1, 2, 2, 0))
    st, _, js = emu.api("GET", "lists(%s)/listaccount_association?$select=name"
                        % la)
    eq(sorted(x["name"] for x in js["value"]),
       sorted("Acc %d" % i for i in range(7)))
    # lead states 0/1/2, contacts 0/1
    lead = rows[0]["leadid"]
    eq(emu.api("PATCH", "leads(%s)" % lead, {"statecode": 2, "statuscode": 5},
               {"If-Match": "*"})[0], 204)
    st, _, js = emu.api("PATCH", "leads(%s)" % lead, {"statecode": 3},
                        {"If-Match": "*"})
    eq((st, error_of(js)[0]), (400, "0x8004431a"))
    st, _, js = emu.api("POST", "contacts", {"statecode": 2})
    eq((st, error_of(js)[0]), (400, "0x8004431a"))
    # deleting the list drops its memberships
    n0 = emu.admin("GET", "records")["listmembers"]
    eq(emu.api("DELETE", "lists(%s)" % la)[0], 204)
    eq(emu.admin("GET", "records")["listmembers"], n0 - 7)
    st, _, js = emu.admin_raw_bulk({"entity": "campaign", "count": 1})
    eq(st, 400, "bulk-list rejects other entities")


def _admin_raw_bulk(self, body):
    return self.raw("POST", "/_admin/bulk-list", body,
                    {"Content-Type": "application/json"}, conn="admin")


Emu.admin_raw_bulk = _admin_raw_bulk


@test
def listsync_formatted_values(emu):
    acc = str(uuid.uuid4())
    con = str(uuid.uuid4())
    seed = {"_optionsets": {"contacts": {
        "preferredcontactmethodcode": {"1": "Any", "2": "Email"},
        "crmsync_interests": {"1": "A", "2": "B", "3": "C"}}},
        "accounts": [{"accountid": acc, "name": "Contoso"}],
        "contacts": [{"contactid": con, "firstname": "Ann", "lastname": "Lee",
                      "preferredcontactmethodcode": 2, "statecode": 0,
                      "crmsync_interests": "1,3", "donotbulkemail": True,
                      "parentcustomerid_account@odata.bind":
                          "/accounts(%s)" % acc}]}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(seed, f)
    e2 = Emu("--seed", f.name)
    try:
        sel = ("contacts(%s)?$select=preferredcontactmethodcode,"
               "crmsync_interests,_parentcustomerid_value,statecode,"
               "donotbulkemail,firstname" % con)
        pf = 'odata.include-annotations="OData.Community.Display.V1.' \
             'FormattedValue"'
        st, hdrs, js = e2.api("GET", sel, headers={"Prefer": pf})
        eq(st, 200)
        eq(js["preferredcontactmethodcode" + FMT], "Email")
        eq(js["preferredcontactmethodcode"], 2)
        eq((js["crmsync_interests"], js["crmsync_interests" + FMT]),
           ("1,3", "A; C"), "multi-select")
        eq((js["_parentcustomerid_value"], js["_parentcustomerid_value" + FMT]),
           (acc, "Contoso"), "lookup")
        eq(js["statecode" + FMT], "Active")
        eq(js["donotbulkemail" + FMT], "Do Not Allow")
        check("firstname" + FMT not in js, "plain strings are not formatted")
        check(not any(k.endswith("lookuplogicalname") for k in js),
              "only the requested annotation")
        eq(hdrs.get("preference-applied"), pf)
        # without the preference: no annotations
        st, _, js = e2.api("GET", sel)
        check(not any("@OData.Community" in k for k in js), "no annotations")
        # "*" gives both; collections and $batch GETs too
        st, _, js = e2.api("GET", "contacts?$select=preferredcontactmethodcode,"
                           "_parentcustomerid_value",
                           headers={"Prefer": 'odata.include-annotations="*"'})
        row = js["value"][0]
        eq((row["preferredcontactmethodcode" + FMT],
            row["_parentcustomerid_value" + FMT],
            row["_parentcustomerid_value@Microsoft.Dynamics.CRM."
                "lookuplogicalname"]), ("Email", "Contoso", "account"))
        st, _, body = send_batch(e2, [{
            "method": "GET", "url": "contacts?$select=crmsync_interests",
            "headers": {"Prefer": pf}}])
        part = parse_multipart(body.decode(), _boundary(
            e2_last_ct(e2, body)))[0]
        eq(part["json"]["value"][0]["crmsync_interests" + FMT], "A; C")
        # labels configured at run time; built-in lead and purpose labels
        e2.admin("POST", "optionsets/contacts",
                 {"preferredcontactmethodcode": {"2": "E-mail"}})
        st, _, js = e2.api("GET", sel, headers={"Prefer": pf})
        eq(js["preferredcontactmethodcode" + FMT], "E-mail")
        e2.admin("POST", "records/leads", [{"leadid": ACCOUNT1,
                                            "statecode": 1, "statuscode": 3}])
        st, _, js = e2.api("GET", "leads(%s)?$select=statecode,statuscode"
                           % ACCOUNT1, headers={"Prefer": pf})
        eq((js["statecode" + FMT], js["statuscode" + FMT]),
           ("Qualified", "Qualified"))
        st, _, _ = e2.api("POST", "msdynmkt_purposes", {
            "msdynmkt_purposeid": PURPOSE_COM, "msdynmkt_name": "News",
            "msdynmkt_enforcementmodel": 534120001})
        eq(st, 204)
        st, _, js = e2.api("GET", "msdynmkt_purposes(%s)?$select="
                           "msdynmkt_enforcementmodel" % PURPOSE_COM,
                           headers={"Prefer": pf})
        eq(js["msdynmkt_enforcementmodel" + FMT], "Non-Restrictive")
    finally:
        e2.stop()
        os.unlink(f.name)


def e2_last_ct(emu, body):
    m = re.match(rb"--(batchresponse_[\w-]+)", body.lstrip())
    check(m, "batch response boundary")
    return 'multipart/mixed; boundary=%s' % m.group(1).decode()


def fetch_url(es, xml):
    return "%s?fetchXml=%s" % (es, quote(xml, safe=""))


FETCH_ANN = {"Prefer": 'odata.include-annotations="Microsoft.Dynamics.CRM.'
                       'fetchxmlpagingcookie,Microsoft.Dynamics.CRM.morerecords"'}


@test
def listsync_fetchxml(emu):
    emu.reset()
    recs = []
    for i in range(53):
        r = {"contactid": str(uuid.UUID(int=0xC0000 + i)),
             "emailaddress1": "f%02d@%s" % (i, "keep.example" if i % 2 else
                                            "drop.example"),
             "firstname": "N%d" % (i % 4), "statecode": 1 if i % 7 == 0 else 0}
        if i % 5 == 0:
            r["lastname"] = None
        else:
            r["lastname"] = "L%d" % i
        recs.append(r)
    emu.admin("POST", "records/contacts", recs)
    want = sorted(r["contactid"] for r in recs
                  if r["emailaddress1"].endswith("keep.example")
                  and r["statecode"] == 0 and r["firstname"] in ("N1", "N3"))
    cond = ('<filter type="and">'
            '<condition attribute="emailaddress1" operator="like" '
            'value="%keep.example" />'
            '<condition attribute="statecode" operator="eq" value="0" />'
            '<filter type="or"><condition attribute="firstname" operator="in">'
            '<value>n1</value><value>N3</value></condition>'
            '<condition attribute="firstname" operator="eq" value="none" />'
            '</filter></filter>')
    page = 1
    cookie = None
    got = []
    while True:
        attrs = ' page="%d"' % page
        if cookie:
            attrs += ' paging-cookie="%s"' % (cookie.replace("&", "&amp;")
                                              .replace('"', "&quot;")
                                              .replace("<", "&lt;")
                                              .replace(">", "&gt;"))
        xml = ('<fetch count="4"%s><entity name="contact">'
               '<attribute name="emailaddress1" /><attribute name="lastname" />'
               '<order attribute="lastname" />%s</entity></fetch>' % (attrs,
                                                                      cond))
        st, _, js = emu.api("GET", fetch_url("contacts", xml), headers=FETCH_ANN)
        eq(st, 200, "fetch page %d: %r" % (page, js))
        for row in js["value"]:
            got.append(row["contactid"])
            if row["contactid"] in [r["contactid"] for r in recs
                                    if r["lastname"] is None]:
                check("lastname" not in row, "null properties are omitted")
        more = js["@Microsoft.Dynamics.CRM.morerecords"]
        if not more:
            break
        pc = js["@Microsoft.Dynamics.CRM.fetchxmlpagingcookie"]
        m = re.match(r'<cookie pagenumber="(\d+)" pagingcookie="([^"]+)" '
                     r'istracking="False" />$', pc)
        check(m, "cookie annotation %r" % pc)
        eq(int(m.group(1)), page + 1)
        check("%253c" in m.group(2), "URL-encoded twice, lower-case hex")
        cookie = unquote(unquote(m.group(2)))
        m2 = re.fullmatch(r'<cookie page="(\d+)"><contactid last="\{([0-9A-F-]+)'
                          r'\}" first="\{([0-9A-F-]+)\}" /></cookie>', cookie)
        check(m2, "inner cookie %r" % cookie)
        eq((int(m2.group(1)), m2.group(2).lower(), m2.group(3).lower()),
           (page, js["value"][-1]["contactid"], js["value"][0]["contactid"]))
        page += 1
    eq(got, want, "FetchXML pages")
    check(page > 2, "several pages")
    # page without cookie skips rows; ne excludes nulls; top
    xml = ('<fetch count="4" page="2"><entity name="contact"><attribute '
           'name="emailaddress1" />%s</entity></fetch>' % cond)
    st, _, js = emu.api("GET", fetch_url("contacts", xml), headers=FETCH_ANN)
    eq([r["contactid"] for r in js["value"]], want[4:8])
    xml = ('<fetch><entity name="contact"><attribute name="lastname" />'
           '<filter><condition attribute="lastname" operator="ne" value="L1" />'
           '</filter></entity></fetch>')
    st, _, js = emu.api("GET", fetch_url("contacts", xml))
    eq(len(js["value"]), 53 - 11 - 1, "ne: not L1, not null")
    check("@Microsoft.Dynamics.CRM.morerecords" not in js,
          "annotations only when requested")
    xml = '<fetch top="3"><entity name="contact"><all-attributes /></entity></fetch>'
    st, _, js = emu.api("GET", fetch_url("contacts", xml), headers=FETCH_ANN)
    eq((len(js["value"]), js["@Microsoft.Dynamics.CRM.morerecords"]), (3, False))
    check("firstname" in js["value"][0])
    # errors
    for bad in ('<fetch><entity name="lead" /></fetch>',
                '<fetch><entity name="contact"><link-entity name="account" '
                'from="accountid" to="parentcustomerid" /></entity></fetch>',
                '<fetch count="6000"><entity name="contact" /></fetch>',
                '<fetch><entity name="contact"',
                '<fetch><entity name="contact"><filter><condition attribute='
                '"x" operator="above" value="1" /></filter></entity></fetch>'):
        st, _, js = emu.api("GET", fetch_url("contacts", bad))
        eq(st, 400, "bad FetchXML %s" % bad)
    # a dynamic list: query stored on the list, run against its entity
    lid = str(uuid.uuid4())
    q = ('<fetch><entity name="contact"><attribute name="emailaddress1" />'
         '<filter><condition attribute="firstname" operator="eq" value="N2" />'
         '</filter></entity></fetch>')
    eq(emu.api("POST", "lists", {"listid": lid, "listname": "Dyn",
                                 "createdfromcode": 2, "type": True,
                                 "query": q})[0], 204)
    st, _, js = emu.api("GET", "lists(%s)?$select=query,type,createdfromcode"
                        % lid)
    st, _, js = emu.api("GET", fetch_url("contacts", js["query"]))
    eq(len(js["value"]), len([r for r in recs if r["firstname"] == "N2"]))


@test
def listsync_in_filter_batch(emu):
    emu.reset()
    seed_consent_catalog(emu)
    rows = []
    for i in range(20000):
        rows.append({"msdynmkt_contactpointvalue": "c%05d@x.example" % i,
                     "msdynmkt_contactpointtype": 534120000,
                     "msdynmkt_contactpointconsenttype": 534120000,
                     "msdynmkt_value": 534120001 if i % 3 else 534120002,
                     "msdynmkt_purposeid@odata.bind": "/msdynmkt_purposes(%s)"
                     % (PURPOSE_COM if i % 2 else PURPOSE_TRX)})
    emu.admin("POST", "records/msdynmkt_contactpointconsent4s", rows)
    addrs = ["C%05d@x.example" % i for i in range(0, 20000, 50)]  # 400
    addrs.append("o'brien+1@x.example")
    inlist = ",".join("'%s'" % a.replace("'", "''") for a in addrs)
    flt = ("Microsoft.Dynamics.CRM.In(PropertyName='msdynmkt_contactpointvalue',"
           "PropertyValues=[%s]) and _msdynmkt_purposeid_value eq %s"
           % (inlist, PURPOSE_COM))
    url = ("msdynmkt_contactpointconsent4s?$select=msdynmkt_contactpointvalue,"
           "msdynmkt_value&$filter=" + quote(flt, safe="'(),=[]"))
    check(len(url) > 7000, "long URL")
    want = sorted("c%05d@x.example" % i for i in range(0, 20000, 50) if i % 2)
    t0 = time.perf_counter()
    st, _, js = emu.api("GET", url)
    dt = time.perf_counter() - t0
    eq(st, 200)
    eq(sorted(r["msdynmkt_contactpointvalue"] for r in js["value"]), want)
    # the same inside $batch, next to a plain In without the purpose
    flt2 = ("Microsoft.Dynamics.CRM.In(PropertyName='msdynmkt_contactpointvalue',"
            "PropertyValues=[%s])" % inlist)
    st, hdrs, body = send_batch(emu, [
        {"method": "GET", "url": "/api/data/v9.2/" + url},
        {"method": "GET", "url": "/api/data/v9.2/msdynmkt_contactpointconsent4s"
         "?$select=msdynmkt_contactpointvalue&$filter=" + quote(flt2, safe="'(),=[]")}])
    eq(st, 200)
    parts = parse_multipart(body.decode(), _boundary(hdrs["content-type"]))
    eq([p["status"] for p in parts], [200, 200])
    eq(sorted(r["msdynmkt_contactpointvalue"] for r in parts[0]["json"]["value"]),
       want)
    eq(len(parts[1]["json"]["value"]), 400)
    # a NotIn / or-combined In still scans and gives the same answer
    flt3 = ("(%s) or msdynmkt_contactpointvalue eq 'nobody'" % flt2)
    st, _, js = emu.api("GET", "msdynmkt_contactpointconsent4s?$select="
                        "msdynmkt_contactpointvalue&$filter="
                        + quote(flt3, safe="'(),=[]"))
    eq(len(js["value"]), 400)
    t0 = time.perf_counter()
    emu.api("GET", "msdynmkt_contactpointconsent4s?$select="
            "msdynmkt_contactpointvalue&$filter=" + quote(flt3, safe="'(),=[]"))
    scan = time.perf_counter() - t0
    print("  In() over 20k consent rows: %.1f ms indexed, %.1f ms scan"
          % (dt * 1000, scan * 1000))
    emu.reset()


@test
def listsync_purpose_and_list_status_columns(emu):
    emu.reset()
    for v in (534120000, 534120001, 534120002):
        st, _, _ = emu.api("POST", "msdynmkt_purposes",
                           {"msdynmkt_name": "P%d" % v,
                            "msdynmkt_enforcementmodel": v})
        eq(st, 204, "enforcement model %d" % v)
    st, _, js = emu.api("POST", "msdynmkt_purposes",
                        {"msdynmkt_name": "bad",
                         "msdynmkt_enforcementmodel": 534120003})
    eq((st, error_of(js)[0]), (400, "0x8004431a"))
    lid = str(uuid.uuid4())
    eq(emu.api("POST", "lists", {"listid": lid, "listname": "S",
                                 "createdfromcode": 2, "type": False})[0], 204)
    status = json.dumps({"state": "done", "counts": {"read": 3}})
    st, _, _ = emu.api("PATCH", "lists(%s)" % lid,
                       {"crmsync_syncstatus": status,
                        "crmsync_lastsyncon": "2024-05-01T12:00:00.123+02:00"},
                       {"If-Match": "*"})
    eq(st, 204)
    st, _, js = emu.api("GET", "lists(%s)?$select=crmsync_syncstatus,"
                        "crmsync_lastsyncon,membercount" % lid)
    eq((js["crmsync_syncstatus"], js["crmsync_lastsyncon"], js["membercount"]),
       (status, "2024-05-01T10:00:00Z", 0))
    st, _, js = emu.api("PATCH", "lists(%s)" % lid,
                        {"crmsync_syncstatus": "x" * 4001}, {"If-Match": "*"})
    eq((st, error_of(js)[0]), (400, "0x80044331"))
    eq(emu.api("PATCH", "lists(%s)" % lid, {"crmsync_syncstatus": "x" * 4000},
               {"If-Match": "*"})[0], 204)
    st, _, js = emu.api("PATCH", "lists(%s)" % lid,
                        {"crmsync_lastsyncon": "yesterday"}, {"If-Match": "*"})
    eq((st, error_of(js)[0]), (400, "0x0"))
    st, _, js = emu.api("PATCH", "lists(%s)" % lid,
                        {"crmsync_syncstatus": 5}, {"If-Match": "*"})
    eq(st, 400)
    # a change set that adds a member and fails rolls membercount back
    c = str(uuid.uuid4())
    emu.admin("POST", "records/contacts", [{"contactid": c}])
    st, _, _ = send_batch(emu, [{"changeset": [
        {"method": "POST", "url": "lists(%s)/listcontact_association/$ref" % lid,
         "body": {"@odata.id": "%s/api/data/v9.2/contacts(%s)" % (emu.base, c)},
         "content_id": "1"},
        {"method": "PATCH", "url": "lists(%s)" % lid,
         "body": {"createdfromcode": 1}, "content_id": "2"}]}])
    eq(st, 400)
    st, _, js = emu.api("GET", "lists(%s)?$select=membercount" % lid)
    eq(js["membercount"], 0, "rolled back")
    st, _, js = emu.api("GET", "lists(%s)/listcontact_association" % lid)
    eq(js["value"], [])


# ---------------------------------------------------------------------------
# Trigger worker support (issue 5): the crmsync_journeyactions ledger, the
# custom trigger catalog, exactly-once change sets and tasks with binds.

CART = "msdynmkt_cartreminder"
MANAGER = "5a000000-0000-0000-0000-000000000001"


def trigger_params(profile, **extra):
    p = {"msdynmkt_signaltimestamp": "2024-05-01T10:00:00.123Z",
         "msdynmkt_signalingestiontimestamp": "2024-05-01T10:00:01+02:00",
         "msdynmkt_signaluserauthid": profile, "msdynmkt_profileid": profile}
    p.update(extra)
    return p


def ledger_body(contact, name="cart/remind/1", action=CART):
    return {"crmsync_name": name, "crmsync_action": action,
            "crmsync_profile": "contact:" + contact,
            "crmsync_firedon": "2024-05-01T12:00:00.500+02:00"}


@test
def journey_ledger_create_only(emu):
    emu.reset()
    contact, rid = str(uuid.uuid4()), str(uuid.uuid4())
    path = "crmsync_journeyactions(%s)" % rid
    st, hdrs, _ = emu.api("PATCH", path, ledger_body(contact),
                          {"If-None-Match": "*"})
    eq(st, 204, "ledger create")
    check(hdrs["odata-entityid"].endswith(path), hdrs.get("odata-entityid"))
    recs = emu.admin("GET", "records/crmsync_journeyactions")
    eq(len(recs), 1)
    r = recs[0]
    eq((r["crmsync_journeyactionid"], r["crmsync_name"], r["crmsync_action"],
        r["crmsync_profile"], r["crmsync_firedon"]),
       (rid, "cart/remind/1", CART, "contact:" + contact,
        "2024-05-01T10:00:00Z"), "stored row (firedon in UTC seconds)")
    # second create-only PATCH: Dataverse's DuplicateRecord answer
    st, _, js = emu.api("PATCH", path, ledger_body(contact, "other/1/1"),
                        {"If-None-Match": "*"})
    eq(st, 412, "second create")
    eq(error_of(js), ("0x80040237",
                      "A record with matching key values already exists."))
    eq(emu.admin("GET", "records/crmsync_journeyactions")[0]["crmsync_name"],
       "cart/remind/1", "412 changed nothing")
    # POST with the same key is a duplicate too
    body = dict(ledger_body(contact), crmsync_journeyactionid=rid)
    st, _, js = emu.api("POST", "crmsync_journeyactions", body)
    eq((st, error_of(js)[0]), (412, "0x80040237"))
    # strict table: unknown column, wrong type, too long
    rid2 = str(uuid.uuid4())
    path2 = "crmsync_journeyactions(%s)" % rid2
    st, _, js = emu.api("PATCH", path2, dict(ledger_body(contact),
                                              crmsync_journey="x"),
                        {"If-None-Match": "*"})
    eq(st, 400, "unknown column")
    check("Invalid property 'crmsync_journey'" in error_of(js)[1], js)
    st, _, js = emu.api("PATCH", path2, dict(ledger_body(contact),
                                              crmsync_firedon="noon"),
                        {"If-None-Match": "*"})
    eq((st, error_of(js)[0]), (400, "0x0"), "firedon type")
    st, _, js = emu.api("PATCH", path2, ledger_body(contact, "j" * 201),
                        {"If-None-Match": "*"})
    eq((st, error_of(js)[0]), (400, "0x80044331"), "crmsync_name length")
    eq(len(emu.admin("GET", "records/crmsync_journeyactions")), 1)
    # readable by the worker: GET by key and by name
    st, _, js = emu.api("GET", path + "?$select=crmsync_name")
    eq((st, js["crmsync_name"]), (200, "cart/remind/1"))
    st, _, js = emu.api("GET", "crmsync_journeyactions?$filter=crmsync_name eq "
                        "'cart/remind/1'".replace(" ", "%20"))
    eq([x["crmsync_journeyactionid"] for x in js["value"]], [rid])


@test
def custom_trigger_catalog(emu):
    emu.reset()
    contact, lead = str(uuid.uuid4()), str(uuid.uuid4())
    emu.admin("POST", "records/contacts", [{"contactid": contact}])
    emu.admin("POST", "records/leads", [{"leadid": lead}])
    eq(emu.admin("GET", "custom-triggers"), {}, "empty catalog after reset")
    # empty catalog: anything msdynmkt_* goes, as before
    st, _, _ = emu.api("POST", "msdynmkt_anything", {"x": 1})
    eq(st, 204, "no catalog: accepted")
    cat = emu.admin("POST", "custom-triggers",
                    {"name": CART, "attributes": ["msdynmkt_textvariable1"]})
    eq(cat, {CART: ["msdynmkt_textvariable1"]})
    emu.admin("POST", "custom-triggers", [{"name": "msdynmkt_other"}])
    eq(sorted(emu.admin("GET", "custom-triggers")), [CART, "msdynmkt_other"])
    n0 = len(emu.admin("GET", "actions"))
    # unregistered: exactly Dataverse's unknown segment
    st, _, js = emu.api("POST", "msdynmkt_anything", trigger_params(contact))
    eq(st, 404, "unregistered trigger")
    eq(error_of(js), ("0x8006088a", "Resource not found for the segment "
                                    "'msdynmkt_anything'."))
    # missing required parameters, named
    p = trigger_params(contact)
    del p["msdynmkt_profileid"]
    st, _, js = emu.api("POST", CART, p)
    eq(st, 400, "missing profileid")
    code, msg = error_of(js)
    eq(code, "0x80040203")
    check("'%s'" % CART in msg and msg.endswith(
        "The missing parameters are: msdynmkt_profileid."), msg)
    st, _, js = emu.api("POST", CART, {})
    eq(st, 400, "no parameters")
    check("msdynmkt_signaltimestamp, msdynmkt_signalingestiontimestamp, "
          "msdynmkt_signaluserauthid, msdynmkt_profileid" in error_of(js)[1])
    st, _, js = emu.api("POST", CART, None)
    eq(st, 400, "empty body")
    # timestamps must be ISO 8601 date-times with an offset
    for bad in ("yesterday", "2024-05-01", "2024-05-01T10:00:00",
                "2024-13-01T10:00:00Z", 1714557600):
        st, _, js = emu.api("POST", CART, trigger_params(
            contact, msdynmkt_signaltimestamp=bad))
        eq(st, 400, "timestamp %r" % (bad,))
        code, msg = error_of(js)
        eq(code, "0x0")
        check("Edm.DateTimeOffset" in msg, msg)
    st, _, js = emu.api("POST", CART, trigger_params(
        contact, msdynmkt_signalingestiontimestamp="soon"))
    eq(st, 400, "ingestion timestamp")
    # ids: GUIDs of an existing contact or lead
    for field in ("msdynmkt_signaluserauthid", "msdynmkt_profileid"):
        for bad in ("x", str(uuid.uuid4())):
            p = trigger_params(contact)
            p[field] = bad
            st, _, js = emu.api("POST", CART, p)
            eq(st, 400, "%s=%s" % (field, bad))
            code, msg = error_of(js)
            eq(code, "0x80040203")
            check(field in msg and bad in msg, msg)
    st, _, js = emu.api("POST", CART, trigger_params(contact,
                                                     msdynmkt_profileid=7))
    eq((st, error_of(js)[0]), (400, "0x0"), "non-string id")
    # parameters outside the registered attribute list
    st, _, js = emu.api("POST", CART, trigger_params(
        contact, msdynmkt_textvariable2="x"))
    eq(st, 400, "unknown parameter")
    eq(error_of(js)[1], "An error occurred while validating input parameters: "
       "Microsoft.OData.ODataException: The parameter 'msdynmkt_textvariable2' "
       "in the request payload is not a valid parameter for the operation "
       "'msdynmkt_cartreminder'.")
    st, _, js = emu.api("POST", "msdynmkt_other", trigger_params(
        contact, msdynmkt_textvariable1="x"))
    eq(st, 400, "attribute of another trigger")
    eq(len(emu.admin("GET", "actions")), n0, "no rejected call recorded")
    # accepted calls: contact, lead, upper-case id, custom attribute
    for prof, extra in ((contact, {"msdynmkt_textvariable1": "cart-42"}),
                        (contact, {}), (lead, {}),
                        (contact.upper(), {})):
        st, hdrs, body = emu.api("POST", CART, trigger_params(prof, **extra))
        eq((st, body), (204, b""), "accepted %s" % prof)
    st, _, _ = emu.api("POST", "msdynmkt_other", trigger_params(contact))
    eq(st, 204)
    acts = emu.admin("GET", "actions?action=%s&profile=%s" % (CART, contact))
    eq(len(acts), 3, "per-profile count (case-insensitive)")
    eq(acts[0]["parameters"], trigger_params(
        contact, msdynmkt_textvariable1="cart-42"), "parameters as sent")
    eq(acts[0]["client"], "client-a")
    eq(len(emu.admin("GET", "actions?profile=%s" % lead)), 1)
    eq(len(emu.admin("GET", "actions?action=msdynmkt_other")), 1)
    eq(len(emu.admin("GET", "actions")), n0 + 5)
    # re-registering replaces the attribute list; DELETE one / all
    emu.admin("POST", "custom-triggers", {"name": CART, "attributes": []})
    st, _, _ = emu.api("POST", CART, trigger_params(
        contact, msdynmkt_textvariable1="x"))
    eq(st, 400, "attribute no longer registered")
    eq(emu.admin("DELETE", "custom-triggers/msdynmkt_other"), {CART: []})
    st, _, _ = emu.api("POST", "msdynmkt_other", trigger_params(contact))
    eq(st, 404, "deleted trigger")
    st, _, data = emu.raw("POST", "/_admin/custom-triggers",
                          {"name": "cartreminder"})
    eq(st, 400, "bad trigger name")
    st, _, data = emu.raw("POST", "/_admin/custom-triggers",
                          {"name": CART, "attributes": "x"})
    eq(st, 400, "bad attribute list")
    eq(emu.admin("DELETE", "custom-triggers"), {})
    st, _, _ = emu.api("POST", "msdynmkt_other", {"x": 1})
    eq(st, 204, "catalog cleared: any trigger again")
    emu.admin("POST", "custom-triggers", {"name": CART})
    emu.reset()
    eq(emu.admin("GET", "custom-triggers"), {}, "reset restores the CLI catalog")


@test
def custom_trigger_command_line(emu):
    contact = str(uuid.uuid4())
    e2 = Emu("--custom-trigger", CART + ":msdynmkt_textvariable1,msdynmkt_cartid",
             "--custom-trigger", "msdynmkt_plain")
    try:
        want = {CART: ["msdynmkt_cartid", "msdynmkt_textvariable1"],
                "msdynmkt_plain": []}
        eq(e2.admin("GET", "custom-triggers"), want)
        e2.admin("POST", "records/contacts", [{"contactid": contact}])
        st, _, _ = e2.api("POST", CART, trigger_params(
            contact, msdynmkt_cartid="c1", msdynmkt_textvariable1="t"))
        eq(st, 204)
        st, _, _ = e2.api("POST", "msdynmkt_plain", trigger_params(
            contact, msdynmkt_cartid="c1"))
        eq(st, 400, "attribute of the other trigger")
        st, _, _ = e2.api("POST", "msdynmkt_unknown", trigger_params(contact))
        eq(st, 404)
        e2.admin("DELETE", "custom-triggers")
        e2.admin("POST", "reset")
        eq(e2.admin("GET", "custom-triggers"), want, "reset restores")
    finally:
        e2.stop()
    p = subprocess.run([sys.executable, EMULATOR, "--custom-trigger",
                        "cartreminder"], capture_output=True, timeout=30)
    check(p.returncode != 0 and b"--custom-trigger" in p.stderr, p.stderr)


def trigger_changeset(rid, contact, action=CART, **extra):
    return {"changeset": [
        {"method": "PATCH", "url": "/api/data/v9.2/crmsync_journeyactions(%s)"
         % rid, "content_id": "1", "headers": {"If-None-Match": "*"},
         "body": ledger_body(contact, action=action)},
        {"method": "POST", "url": "/api/data/v9.2/" + action,
         "content_id": "2", "body": trigger_params(contact, **extra)}]}


@test
def trigger_changeset_exactly_once(emu):
    emu.reset()
    contact = str(uuid.uuid4())
    emu.admin("POST", "records/contacts", [{"contactid": contact}])
    emu.admin("POST", "custom-triggers",
              {"name": CART, "attributes": ["msdynmkt_textvariable1"]})
    rid = str(uuid.uuid4())
    cs = trigger_changeset(rid, contact, msdynmkt_textvariable1="cart-1")
    st, parts = batch_parts(emu, [cs])
    eq(st, 200, "first firing")
    eq(len(parts), 1)
    eq(parts[0]["kind"], "changeset")
    eq([(p["content_id"], p["status"]) for p in parts[0]["parts"]],
       [("1", 204), ("2", 204)])
    hd = dict(parts[0]["parts"][0]["headers"])
    check(hd["OData-EntityId"].endswith("crmsync_journeyactions(%s)" % rid))
    eq([k for k, _ in parts[0]["parts"][1]["headers"]], ["OData-Version"],
       "the action's 204 has no OData-EntityId")
    # the re-fired timer: same change set again
    for prefer, want_st in ((None, 400), ("odata.continue-on-error", 200)):
        st, parts = batch_parts(emu, [cs], prefer=prefer)
        eq(st, want_st, "second firing (%s)" % prefer)
        eq(len(parts), 1, "one part for the failed change set")
        p = parts[0]
        eq((p["kind"], p["status"], p["content_id"]), ("http", 412, "1"))
        eq((p["json"]["error"]["code"], p["json"]["error"]["message"]),
           ("0x80040237", "A record with matching key values already exists."))
    eq(len(emu.admin("GET", "records/crmsync_journeyactions")), 1, "one row")
    acts = emu.admin("GET", "actions?profile=" + contact)
    eq(len(acts), 1, "action executed exactly once")
    eq(acts[0]["parameters"]["msdynmkt_textvariable1"], "cart-1")
    # relative URLs, as a client may send them, behave the same
    cs_rel = trigger_changeset(rid, contact)
    for op in cs_rel["changeset"]:
        op["url"] = op["url"][len("/api/data/v9.2/"):]
    st, parts = batch_parts(emu, [cs_rel])
    eq((st, parts[0]["status"]), (400, 412))
    # the other direction: the action fails -> the ledger row rolls back
    rid2 = str(uuid.uuid4())
    st, parts = batch_parts(emu, [trigger_changeset(
        rid2, contact, msdynmkt_textvariable9="x")])
    eq((st, len(parts), parts[0]["status"], parts[0]["content_id"]),
       (400, 1, 400, "2"), "invalid action")
    st, parts = batch_parts(emu, [trigger_changeset(
        str(uuid.uuid4()), contact, action="msdynmkt_unregistered")])
    eq((st, parts[0]["status"], parts[0]["content_id"]), (400, 404, "2"))
    eq(len(emu.admin("GET", "records/crmsync_journeyactions")), 1,
       "ledger rows of failed change sets rolled back")
    st, _, js = emu.api("GET", "crmsync_journeyactions(%s)" % rid2)
    eq(st, 404)
    # once fixed, the same ledger id fires (it was never created)
    st, parts = batch_parts(emu, [trigger_changeset(rid2, contact)])
    eq((st, [p["status"] for p in parts[0]["parts"]]), (200, [204, 204]))
    eq(len(emu.admin("GET", "actions?profile=" + contact)), 2)
    # several firings in one batch, one of them a replay: continue-on-error
    rid3 = str(uuid.uuid4())
    st, parts = batch_parts(emu, [trigger_changeset(rid, contact),
                                  trigger_changeset(rid3, contact)],
                            prefer="odata.continue-on-error")
    eq(st, 200)
    eq([p["kind"] for p in parts], ["http", "changeset"])
    eq(parts[0]["status"], 412)
    eq(len(emu.admin("GET", "actions?profile=" + contact)), 3)
    eq(len(emu.admin("GET", "records/crmsync_journeyactions")), 3)
    # an action that ran before the failing request is rolled back too
    rev = trigger_changeset(rid, contact)
    rev["changeset"].reverse()
    st, parts = batch_parts(emu, [rev])
    eq((st, len(parts), parts[0]["status"], parts[0]["content_id"]),
       (400, 1, 412, "1"), "action first, then the duplicate ledger row")
    eq(len(emu.admin("GET", "actions?profile=" + contact)), 3,
       "the executed action was rolled back with its change set")


@test
def tasks_with_binds(emu):
    emu.reset()
    contact, lead = str(uuid.uuid4()), str(uuid.uuid4())
    emu.admin("POST", "records/contacts", [{"contactid": contact,
                                            "fullname": "Cat Buyer"}])
    emu.admin("POST", "records/leads", [{"leadid": lead}])
    # seeded users: two named ones plus each client's application user
    st, _, js = emu.api("GET", "systemusers?$select=fullname")
    names = {u["systemuserid"]: u["fullname"] for u in js["value"]}
    eq(names[MANAGER], "Sales Manager")
    st, _, who = emu.api("GET", "WhoAmI")
    eq(names[who["UserId"]], "# client-a", "WhoAmI user is a systemuser")
    tid = str(uuid.uuid4())
    body = {"subject": "Call about the cart",
            "description": "Cart 42 was abandoned",
            "scheduledend": "2024-05-02T12:00:00.250+02:00",
            "regardingobjectid_contact_task@odata.bind": "/contacts(%s)"
            % contact,
            "ownerid@odata.bind": "/systemusers(%s)" % MANAGER}
    st, hdrs, _ = emu.api("PATCH", "tasks(%s)" % tid, body,
                          {"If-None-Match": "*"})
    eq(st, 204, "create-only task")
    st, _, js = emu.api("PATCH", "tasks(%s)" % tid, body,
                        {"If-None-Match": "*"})
    eq((st, error_of(js)[0]), (412, "0x80040237"), "replayed task")
    st, _, js = emu.api("POST", "tasks", dict(body, activityid=tid))
    eq((st, error_of(js)[0]), (412, "0x80040237"), "POST with same key")
    st, _, js = emu.api(
        "GET", "tasks(%s)?$select=subject,description,scheduledend,"
        "_regardingobjectid_value,_ownerid_value" % tid,
        headers={"Prefer": 'odata.include-annotations="*"'})
    eq(st, 200)
    eq((js["subject"], js["description"], js["scheduledend"],
        js["_regardingobjectid_value"], js["_ownerid_value"]),
       (body["subject"], body["description"], "2024-05-02T10:00:00Z",
        contact, MANAGER))
    eq(js["_regardingobjectid_value" + "@Microsoft.Dynamics.CRM."
          "lookuplogicalname"], "contact")
    eq(js["_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"],
       "systemuser")
    eq(js["_ownerid_value@OData.Community.Display.V1.FormattedValue"],
       "Sales Manager")
    # a lead as regarding object, created with POST and a client key
    t2 = str(uuid.uuid4())
    st, _, _ = emu.api("POST", "tasks", {
        "activityid": t2, "subject": "Lead follow-up",
        "regardingobjectid_lead_task@odata.bind": "/leads(%s)" % lead,
        "ownerid@odata.bind": "/systemusers(%s)" % who["UserId"]})
    eq(st, 204)
    flt = quote("_regardingobjectid_value eq %s" % contact)
    st, _, js = emu.api("GET", "tasks?$select=subject&$filter=" + flt)
    eq([t["activityid"] for t in js["value"]], [tid], "filter by regarding")
    flt = quote("_regardingobjectid_value eq '%s'" % lead)
    st, _, js = emu.api("GET", "tasks?$select=subject&$filter=" + flt)
    eq([t["subject"] for t in js["value"]], ["Lead follow-up"])
    # what real Dataverse rejects
    t3 = "tasks(%s)" % uuid.uuid4()
    st, _, js = emu.api("PATCH", t3, {
        "subject": "s", "regardingobjectid_contact@odata.bind":
        "/contacts(%s)" % contact}, {"If-None-Match": "*"})
    eq((st, error_of(js)[0]), (400, "0x0"), "nav without _task suffix")
    check("undeclared property 'regardingobjectid_contact'" in error_of(js)[1])
    st, _, js = emu.api("PATCH", t3, {
        "subject": "s", "regardingobjectid_contact_task@odata.bind":
        "/leads(%s)" % lead}, {"If-None-Match": "*"})
    eq(st, 400, "contact nav bound to a lead")
    check("not assignable" in error_of(js)[1])
    st, _, js = emu.api("PATCH", t3, {
        "subject": "s", "ownerid@odata.bind": "/systemusers(%s)"
        % uuid.uuid4()}, {"If-None-Match": "*"})
    eq((st, error_of(js)[0]), (404, "0x80040217"), "unknown owner")
    check(error_of(js)[1].startswith("systemuser With Id = "))
    st, _, js = emu.api("PATCH", t3, {"subject": "s" * 201},
                        {"If-None-Match": "*"})
    eq((st, error_of(js)[0]), (400, "0x80044331"), "subject length")
    st, _, js = emu.api("PATCH", t3, {"subject": "s",
                                      "description": "d" * 2001},
                        {"If-None-Match": "*"})
    eq((st, error_of(js)[0]), (400, "0x80044331"), "description length")
    st, _, js = emu.api("PATCH", t3, {"subject": "s",
                                      "scheduledend": "tomorrow"},
                        {"If-None-Match": "*"})
    eq((st, error_of(js)[0]), (400, "0x0"), "scheduledend type")
    eq(len(emu.admin("GET", "records/tasks")), 2, "nothing from rejects")
    # extra users through the admin API
    uid = str(uuid.uuid4())
    emu.admin("POST", "records/systemusers", [{"systemuserid": uid,
                                               "fullname": "Extra"}])
    st, _, _ = emu.api("PATCH", "tasks(%s)" % tid,
                       {"ownerid@odata.bind": "/systemusers(%s)" % uid},
                       {"If-Match": "*"})
    eq(st, 204, "reassign")
    eq([t["_ownerid_value"] for t in emu.admin("GET", "records/tasks")
        if t["activityid"] == tid], [uid])
    emu.reset()
    eq(len(emu.admin("GET", "records/systemusers")), 4,
       "reset: two seeded users + one per client")


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    if GOLDEN is None:
        print("golden files not found")
        print("0 passed, 1 failed")
        return 1
    emu = Emu()
    passed = failed = 0
    try:
        only = os.environ.get("DVEMU_TESTS")  # e.g. "listsync" (substring)
        for fn in TESTS:
            if only and only not in fn.__name__:
                continue
            t0 = time.time()
            try:
                fn(emu)
                passed += 1
                print("PASS %s (%.1fs)" % (fn.__name__, time.time() - t0))
            except Exception:
                failed += 1
                print("FAIL %s" % fn.__name__)
                traceback.print_exc(file=sys.stdout)
            finally:
                try:
                    emu.admin("DELETE", "faults")
                except Exception:
                    pass
            sys.stdout.flush()
    finally:
        emu.stop()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
