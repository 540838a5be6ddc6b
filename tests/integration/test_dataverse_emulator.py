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
from urllib.parse import quote, urlsplit

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
        for fn in TESTS:
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
