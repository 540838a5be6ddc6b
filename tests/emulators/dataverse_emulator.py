#!/usr/bin/env python3
"""Dataverse Web API emulator for crmsync tests and benchmarks.

Python 3 standard library only.  Emulates the subset of Microsoft Dataverse
described in /work/shared/reference/dataverse.md: the Entra ID client
credentials token endpoint, entity-set CRUD with upsert / If-Match /
If-None-Match semantics, the $filter subset, paging with @odata.nextLink,
$batch (multipart/mixed, change sets, Content-ID references,
continue-on-error), service protection (429 + Retry-After) and fault
injection.  A test/admin API under /_admin exposes records and statistics.

Customer Insights - Journeys custom triggers are unbound actions
POST msdynmkt_<name> (answered 204, recorded in GET /_admin/actions and
rolled back with their change set).  With no trigger registered any
msdynmkt_* name is accepted as sent; once triggers are registered
(--custom-trigger or POST /_admin/custom-triggers) other names get 404 and
a registered one checks its parameters (the four signal/profile ones
required, ISO 8601 timestamps, ids of an existing contact or lead, no
parameter outside its attribute list).  The crmsync_journeyactions ledger
table and systemusers (task owners) serve the trigger worker.

Usage:
  dataverse_emulator.py --port 0 --port-file FILE [--tenant T]
      [--client-id ID --client-secret S] [--client ID:SECRET ...]
      [--token-ttl SECONDS] [--seed seed.json] [--quiet]
      [--requests-per-window N --window-s S --max-concurrent N
       --retry-after-s S] [--custom-trigger NAME[:ATTR,ATTR...] ...]

See tests/emulators/README.md for the API and fidelity notes.
"""

import argparse
import bisect
import base64
import collections
import datetime
import functools
import itertools
import json
import math
import os
import random
import re
import secrets
import signal
import socket
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, unquote_plus

DEFAULT_TENANT = "00000000-0000-0000-0000-0000000000e1"
DEFAULT_CLIENT_ID = "emulator-client"
DEFAULT_CLIENT_SECRET = "emulator-secret"
MAX_PAGE = 5000
MAX_BATCH_OPS = 1000
EARLY_GRACE_S = 0.05  # tolerance when judging "sent before Retry-After"

# entity set -> (logical name, primary key)
ENTITY_SETS = {
    "campaigns": ("campaign", "campaignid"),
    "campaignactivities": ("campaignactivity", "activityid"),
    "campaignresponses": ("campaignresponse", "activityid"),
    "contacts": ("contact", "contactid"),
    "leads": ("lead", "leadid"),
    "accounts": ("account", "accountid"),
    "lists": ("list", "listid"),
    "listmembers": ("listmember", "listmemberid"),
    "msdynmkt_contactpointconsent4s": ("msdynmkt_contactpointconsent4",
                                       "msdynmkt_contactpointconsent4id"),
    "msdynmkt_purposes": ("msdynmkt_purpose", "msdynmkt_purposeid"),
    "msdynmkt_topics": ("msdynmkt_topic", "msdynmkt_topicid"),
    "tasks": ("task", "activityid"),
    "phonecalls": ("phonecall", "activityid"),
    # Tables of the crmsync solution (custom, publisher prefix crmsync_).
    "crmsync_optinhistories": ("crmsync_optinhistory", "crmsync_optinhistoryid"),
    "crmsync_advertisingconsents": ("crmsync_advertisingconsent",
                                    "crmsync_advertisingconsentid"),
    # Ledger of journey actions fired by crmsync-trigger (docs: issue 5):
    # one row per (journey, step, iteration, profile), created with
    # If-None-Match: * in the same change set as the action it guards.
    "crmsync_journeyactions": ("crmsync_journeyaction",
                               "crmsync_journeyactionid"),
    # Users, so that "ownerid@odata.bind": "/systemusers(<id>)" resolves.
    # Seeded at start and on reset (SEEDED_USERS plus one application user
    # per accepted client, with WhoAmI's UserId).
    "systemusers": ("systemuser", "systemuserid"),
}
LOGICAL_TO_SET = {v[0]: k for k, v in ENTITY_SETS.items()}
NO_STATE_SETS = ("listmembers",)

# Collection-valued navigation properties readable with GET <set>(id)/<nav>.
# (set, nav) -> (target set, kind, attribute)
NAV_COLLECTIONS = {
    ("accounts", "Account_Tasks"): ("tasks", "lookup", "_regardingobjectid_value"),
    ("campaigns", "Campaign_CampaignResponses"):
        ("campaignresponses", "lookup", "_regardingobjectid_value"),
    ("lists", "listcontact_association"): ("contacts", "member", None),
    ("lists", "listaccount_association"): ("accounts", "member", None),
    ("lists", "listlead_association"): ("leads", "member", None),
}

_rng = range  # shorthand for option sets below

# Typed columns of contact / account / lead: the standard Yes/No columns and
# the bounce columns an org adds (docs/bounce.md: crmsync_emailbounced,
# crmsync_emailbouncedon).
_PERSON_TYPES = {"emailaddress1": "string", "donotbulkemail": "bool",
                 "donotemail": "bool", "crmsync_emailbounced": "bool",
                 "crmsync_emailbouncedon": "datetime"}
VALIDATION = {
    "campaignresponses": {
        "required": ("subject",),
        "required_lookups": ("regardingobjectid",),
        "max_len": {"subject": 200, "firstname": 50, "lastname": 50,
                    "emailaddress": 100, "companyname": 100, "telephone": 50,
                    "fax": 50, "promotioncodename": 250, "category": 250,
                    "subcategory": 250, "description": 2000},
        "options": {"channeltypecode": tuple(_rng(1, 7)),
                    "responsecode": tuple(_rng(1, 5)),
                    "statecode": (0, 1, 2), "statuscode": (1, 2, 3)},
        "fixed_lookups": ("regardingobjectid",),
    },
    "campaignactivities": {
        "max_len": {"subject": 200},
        "options": {"channeltypecode": tuple(_rng(1, 10))},
    },
    # task.description is a 2,000-character memo; scheduledend is the due
    # date (date and time, stored as UTC seconds like every datetime here).
    "tasks": {"max_len": {"subject": 200, "description": 2000},
              "types": {"subject": "string", "description": "string",
                        "scheduledend": "datetime"}},
    "phonecalls": {"max_len": {"subject": 200}},
    "lists": {
        "required": ("listname", "createdfromcode"),
        "max_len": {"listname": 128, "crmsync_syncstatus": 4000},
        "options": {"createdfromcode": (1, 2, 4), "statecode": (0, 1)},
        "fixed": ("createdfromcode", "type"),
        # job status the list-sync worker writes back (docs/listsync.md)
        "types": {"crmsync_syncstatus": "string",
                  "crmsync_lastsyncon": "datetime", "listname": "string"},
    },
    "contacts": {"options": {"statecode": (0, 1), "statuscode": (1, 2)},
                 "max_len": {"emailaddress1": 100},
                 "types": dict(_PERSON_TYPES)},
    "accounts": {"options": {"statecode": (0, 1), "statuscode": (1, 2)},
                 "max_len": {"emailaddress1": 100},
                 "types": dict(_PERSON_TYPES)},
    "leads": {"options": {"statecode": (0, 1, 2),
                          "statuscode": tuple(_rng(1, 8))},
              "max_len": {"emailaddress1": 100},
              "types": dict(_PERSON_TYPES)},
    "msdynmkt_purposes": {"options": {
        "msdynmkt_type": (534120000, 534120001, 534120002),
        # 534120000 Restrictive, 534120001 Non-Restrictive, 534120002 Disabled
        "msdynmkt_enforcementmodel": (534120000, 534120001, 534120002)}},
    "crmsync_optinhistories": {
        "max_len": {"crmsync_name": 200, "crmsync_reason": 500,
                    "crmsync_source": 100},
        "options": {"statecode": (0, 1), "statuscode": (1, 2)},
        "types": {"crmsync_name": "string", "crmsync_optin": "bool",
                  "crmsync_occurredon": "datetime", "crmsync_source": "string",
                  "crmsync_reason": "string"},
    },
    "crmsync_advertisingconsents": {
        "max_len": {"crmsync_name": 200, "crmsync_tenant": 100},
        "options": {"statecode": (0, 1), "statuscode": (1, 2)},
        "types": {"crmsync_name": "string", "crmsync_tenant": "string"},
    },
    "crmsync_journeyactions": {
        # crmsync_name "<journey>/<step>/<iteration>", crmsync_action the
        # action's unique name (Custom API names are at most 128 chars),
        # crmsync_profile "contact:<guid>" / "lead:<guid>".
        "max_len": {"crmsync_name": 200, "crmsync_action": 128,
                    "crmsync_profile": 100},
        "options": {"statecode": (0, 1), "statuscode": (1, 2)},
        "types": {"crmsync_name": "string", "crmsync_action": "string",
                  "crmsync_profile": "string", "crmsync_firedon": "datetime"},
    },
    "msdynmkt_contactpointconsent4s": {
        # Consent type is mandatory since June 2023 (CI release notes); the
        # purpose lookup is required (dataverse.md, Consent).
        "required": ("msdynmkt_contactpointvalue", "msdynmkt_contactpointtype",
                     "msdynmkt_contactpointconsenttype"),
        "required_lookups": ("msdynmkt_purposeid",),
        "types": {"msdynmkt_contactpointvalue": "string",
                  "msdynmkt_reason": "string"},
        "max_len": {"msdynmkt_contactpointvalue": 400,
                    "msdynmkt_reason": 500},
        "options": {
            "msdynmkt_contactpointtype": tuple(_rng(534120000, 534120004)),
            "msdynmkt_value": tuple(_rng(534120000, 534120003)),
            "msdynmkt_contactpointconsenttype": (534120000, 534120001),
            "msdynmkt_source": tuple(_rng(534120000, 534120008)),
            "msdynmkt_logicalreason": tuple(_rng(534119999, 534120008)),
        },
    },
}



# Declared single-valued navigation properties (names are case-sensitive,
# as in Dataverse): set -> {navigation property: target set}.  A bind through
# one of these must name the declared target; a bind that differs only in
# case is an undeclared property.  Other navigation properties are not
# checked (the emulator has no full metadata).
NAV_TARGETS = {
    "crmsync_optinhistories": {
        "crmsync_ConsentId": "crmsync_advertisingconsents",
        "crmsync_ContactId": "contacts",
        "crmsync_LeadId": "leads",
        "crmsync_AccountId": "accounts",
    },
    "msdynmkt_contactpointconsent4s": {
        "msdynmkt_purposeId": "msdynmkt_purposes",
        "msdynmkt_topicId": "msdynmkt_topics",
    },
    # Activities name their regarding navigation properties
    # regardingobjectid_<target>_<activity> (the golden examples bind
    # regardingobjectid_account_task); ownerid takes a systemuser (or a
    # team, not emulated).
    "tasks": {
        "regardingobjectid_account_task": "accounts",
        "regardingobjectid_contact_task": "contacts",
        "regardingobjectid_lead_task": "leads",
        "regardingobjectid_campaign_task": "campaigns",
        "ownerid": "systemusers",
    },
}
# Sets on which a bind through an undeclared navigation property is
# rejected (400 0x0 "An undeclared property ..."), as Dataverse does for
# every table; elsewhere the emulator lacks the metadata to do so.
NAV_STRICT_SETS = ("tasks",)

# Tables whose columns are known completely (the crmsync solution): any
# other property in a write body is rejected like Dataverse rejects a
# property that is not in $metadata.  More columns: seed key "_columns" or
# POST /_admin/columns/<set>.
_SYSTEM_COLUMNS = ("statecode", "statuscode", "overriddencreatedon",
                   "importsequencenumber", "timezoneruleversionnumber",
                   "utcconversiontimezonecode", "createdon", "modifiedon")
STRICT_SETS = ("crmsync_optinhistories", "crmsync_advertisingconsents",
               "crmsync_journeyactions")

# Users present after start and after /_admin/reset (besides one application
# user per client).  Any other user: POST /_admin/records/systemusers.
SEEDED_USERS = (
    {"systemuserid": "5a000000-0000-0000-0000-000000000001",
     "fullname": "Sales Manager", "internalemailaddress": "manager@crm.example",
     "isdisabled": False},
    {"systemuserid": "5a000000-0000-0000-0000-000000000002",
     "fullname": "Sales Rep", "internalemailaddress": "rep@crm.example",
     "isdisabled": False},
)

# Customer Insights - Journeys custom triggers: the parameters every
# msdynmkt_<name> action requires (dataverse.md, "Custom triggers").
TRIGGER_TIMESTAMPS = ("msdynmkt_signaltimestamp",
                      "msdynmkt_signalingestiontimestamp")
TRIGGER_PROFILE_IDS = ("msdynmkt_signaluserauthid", "msdynmkt_profileid")
TRIGGER_PARAMS = TRIGGER_TIMESTAMPS + TRIGGER_PROFILE_IDS
_DTO_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,7})?)?"
                     r"(?:Z|[+-]\d{2}:\d{2})")

# Columns with an equality index (lower-cased string value -> keys), used by
# $filter conjuncts "<col> eq '<literal>'".
INDEXED = {
    "contacts": ("emailaddress1",),
    "accounts": ("emailaddress1",),
    "leads": ("emailaddress1",),
    "msdynmkt_contactpointconsent4s": ("msdynmkt_contactpointvalue",),
}

_EDM = {"bool": "Edm.Boolean", "string": "Edm.String",
        "datetime": "Edm.DateTimeOffset", "int": "Edm.Int32"}


class Rules:
    """One entry of VALIDATION as tuples, in the order they are checked."""
    __slots__ = ("max_len", "options", "required", "required_lookups",
                 "fixed_lookups", "fixed", "types", "strict", "navs",
                 "navs_lower", "navs_strict")

    def __init__(self, r, es=None):
        self.types = tuple(r.get("types", {}).items())
        navs = NAV_TARGETS.get(es, {})
        self.navs = dict(navs)
        self.navs_lower = {n.lower(): n for n in navs}
        self.navs_strict = es in NAV_STRICT_SETS
        self.strict = None
        if es in STRICT_SETS:
            self.strict = set(_SYSTEM_COLUMNS) | set(r.get("types", {})) | \
                {ENTITY_SETS[es][1]}
        self.max_len = tuple(r.get("max_len", {}).items())
        self.options = tuple((attr, allowed, ",".join(map(str, allowed)))
                             for attr, allowed in r.get("options", {}).items())
        self.required = tuple(r.get("required", ()))
        self.required_lookups = tuple((a, "_%s_value" % a)
                                      for a in r.get("required_lookups", ()))
        self.fixed_lookups = tuple((a, "_%s_value" % a)
                                   for a in r.get("fixed_lookups", ()))
        self.fixed = tuple(r.get("fixed", ()))


RULES = {es: Rules(VALIDATION.get(es, {}), es)
         for es in set(VALIDATION) | set(NAV_TARGETS)}

REASONS = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified",
           400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed",
           412: "Precondition Failed", 413: "Payload Too Large",
           429: "Too Many Requests", 500: "Internal Server Error",
           501: "Not Implemented", 502: "Bad Gateway",
           503: "Service Unavailable", 504: "Gateway Timeout"}

GUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
VERSION_RE = re.compile(r"v\d+\.\d+")

JSON_CT = "application/json; odata.metadata=minimal"
ANNOT_LOOKUP = "@Microsoft.Dynamics.CRM.lookuplogicalname"
ANNOT_FMT = "@OData.Community.Display.V1.FormattedValue"

# FormattedValue labels.  Built in: the option sets of dataverse.md.  More
# (or other labels) per set and column: seed key "_optionsets" or
# POST /_admin/optionsets/<set>; these win over the built-in ones.
# Labels are keyed by the option value as a string.
_ACTIVE = {"0": "Active", "1": "Inactive"}
_ACTIVE_STATUS = {"1": "Active", "2": "Inactive"}
BUILTIN_OPTIONSETS = {
    "contacts": {"statecode": _ACTIVE, "statuscode": _ACTIVE_STATUS},
    "accounts": {"statecode": _ACTIVE, "statuscode": _ACTIVE_STATUS},
    "leads": {"statecode": {"0": "Open", "1": "Qualified", "2": "Disqualified"},
              "statuscode": {"1": "New", "2": "Contacted", "3": "Qualified",
                             "4": "Lost", "5": "Cannot Contact",
                             "6": "No Longer Interested", "7": "Canceled"}},
    "lists": {"createdfromcode": {"1": "Account", "2": "Contact", "4": "Lead"},
              "statecode": _ACTIVE, "statuscode": _ACTIVE_STATUS},
    "msdynmkt_purposes": {
        "msdynmkt_enforcementmodel": {"534120000": "Restrictive",
                                      "534120001": "Non-Restrictive",
                                      "534120002": "Disabled"},
        "msdynmkt_type": {"534120000": "Commercial",
                          "534120001": "Transactional",
                          "534120002": "Tracking"}},
    "msdynmkt_contactpointconsent4s": {
        "msdynmkt_value": {"534120000": "Not Set", "534120001": "Opted In",
                           "534120002": "Opted Out"},
        "msdynmkt_contactpointtype": {"534120000": "Email",
                                      "534120001": "Text Message",
                                      "534120002": "Custom",
                                      "534120003": "Voice"},
        "msdynmkt_contactpointconsenttype": {"534120000": "Purpose",
                                             "534120001": "Topic"}},
}
OPTIONSETS = {}  # set -> column -> {"<value>": "<label>"} (configured)
# Yes/No labels: (set, column) or column -> (label of false, label of true)
BOOL_LABELS = {"donotbulkemail": ("Allow", "Do Not Allow"),
               "donotemail": ("Allow", "Do Not Allow"),
               ("lists", "type"): ("Static", "Dynamic")}
# Primary name column per logical name (FormattedValue of a lookup).
PRIMARY_NAME = {"account": "name", "campaign": "name", "list": "listname",
                "msdynmkt_purpose": "msdynmkt_name",
                "msdynmkt_topic": "msdynmkt_name",
                "msdynmkt_contactpointconsent4": "msdynmkt_contactpointvalue",
                "crmsync_optinhistory": "crmsync_name",
                "crmsync_advertisingconsent": "crmsync_name",
                "crmsync_journeyaction": "crmsync_name",
                "systemuser": "fullname",
                "campaignactivity": "subject", "campaignresponse": "subject",
                "task": "subject", "phonecall": "subject"}


def primary_name(logical, rec):
    if logical in ("contact", "lead"):
        if rec.get("fullname"):
            return rec["fullname"]
        parts = [rec.get("firstname"), rec.get("lastname")]
        return " ".join(p for p in parts if p) or None
    col = PRIMARY_NAME.get(logical)
    return rec.get(col) if col else None


def add_optionsets(es, cfg):
    """Configure FormattedValue labels: {"<column>": {"<value>": "<label>"}}."""
    if es not in ENTITY_SETS:
        raise not_found_segment(es)
    if not isinstance(cfg, dict) or not all(
            isinstance(m, dict) and all(isinstance(x, str) for x in m.values())
            for m in cfg.values()):
        raise bad_request('Expected {"<column>": {"<value>": "<label>"}}.')
    cur = OPTIONSETS.setdefault(es, {})
    for col, m in cfg.items():
        cur[col] = {str(k): v for k, v in m.items()}
    return {c: dict(m) for c, m in cur.items()}

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _json_bytes(obj):
    return _dumps(obj).encode("utf-8")


class ApiError(Exception):
    """An OData error response: status, hex code, message."""

    def __init__(self, status, code, message, headers=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or []

    def body(self):
        return _json_bytes({"error": {"code": self.code,
                                      "message": self.message}})


def not_found_segment(name):
    return ApiError(404, "0x8006088a",
                    "Resource not found for the segment '%s'." % name)


def does_not_exist(logical, key):
    return ApiError(404, "0x80040217",
                    "%s With Id = %s Does Not Exist" % (logical, key))


def duplicate_record():
    return ApiError(412, "0x80040237",
                    "A record with matching key values already exists.")


def bad_request(message, code="0x80060888"):
    return ApiError(400, code, message)


def validation_error(message):
    return ApiError(400, "0x80044331", "A validation error occurred.  " + message)


_INPUT_ERROR = "An error occurred while validating input parameters: "


def invalid_property(prop, logical):
    # As in Microsoft's "Web API client errors" page (code 0x0).
    return ApiError(400, "0x0", _INPUT_ERROR + "Microsoft.Crm.CrmException: "
                    "Invalid property '%s' was found in entity "
                    "'Microsoft.Dynamics.CRM.%s'. ---> Microsoft.OData."
                    "ODataException: Does not support untyped value in "
                    "non-open type." % (prop, logical))


def invalid_parameter(param, action):
    # ODataLib's parameter reader, wrapped like the other input errors.
    return ApiError(400, "0x0", _INPUT_ERROR + "Microsoft.OData.ODataException: "
                    "The parameter '%s' in the request payload is not a valid "
                    "parameter for the operation '%s'." % (param, action))


def missing_parameters(action, names):
    # ODataLib's wording for non-nullable parameters missing from the
    # payload; the code is Dataverse's InvalidArgument (unconfirmed here).
    return ApiError(400, "0x80040203", "One or more parameters of the "
                    "operation '%s' are missing from the request payload. The "
                    "missing parameters are: %s." % (action, ", ".join(names)))


def undeclared_nav(nav):
    return ApiError(400, "0x0", _INPUT_ERROR + "Microsoft.OData.ODataException: "
                    "An undeclared property '%s' which only has property "
                    "annotations in the payload but no property value was "
                    "found in the payload. In OData, only declared navigation "
                    "properties and declared named streams can be represented "
                    "as properties without values." % nav)


def nav_type_mismatch(nav, got_logical, want_logical):
    return ApiError(400, "0x0", _INPUT_ERROR + "Microsoft.OData.ODataException: "
                    "A resource with type 'Microsoft.Dynamics.CRM.%s' was "
                    "found, but it is not assignable to the expected type "
                    "'Microsoft.Dynamics.CRM.%s' of the navigation property "
                    "'%s'." % (got_logical, want_logical, nav))


def type_error(value, edm):
    lit = json.dumps(value) if not isinstance(value, str) else value
    return ApiError(400, "0x0", _INPUT_ERROR + "Microsoft.OData.ODataException: "
                    "Cannot convert the literal '%s' to the expected type "
                    "'%s'." % (lit, edm))


_DT_RE = re.compile(r"\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,7})?)?"
                    r"(?:Z|[+-]\d{2}:\d{2})?)?")


def norm_datetime(v):
    """An ISO 8601 value of a DateTime column as Dataverse stores and returns
    it: UTC, whole seconds ("2024-05-01T10:00:00Z"), or None when invalid.
    A value without offset is taken as UTC; a date alone as midnight."""
    if not isinstance(v, str) or not _DT_RE.fullmatch(v):
        return None
    try:
        d = datetime.datetime.fromisoformat(v[:-1] + "+00:00"
                                            if v.endswith("Z") else v)
    except ValueError:
        return None
    if d.tzinfo is not None:
        d = d.astimezone(datetime.timezone.utc)
    if d.year < 1753:  # earliest value of any Dataverse date column
        return None
    return d.strftime("%Y-%m-%dT%H:%M:%SZ")


_ts_cache = [0, ""]


def now_iso():
    sec = int(time.time())
    if _ts_cache[0] != sec:
        _ts_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sec))
        _ts_cache[0] = sec
    return _ts_cache[1]


# Server-generated ids (activity parties, records created without a key,
# REQ_ID): a random version-4 prefix per process plus a sequence number, so
# they are unique, sorted by creation like Dataverse's sequential GUIDs, and
# ten times cheaper than uuid4().
_GUID_PREFIX = str(uuid.uuid4())[:24]
_guid_seq = itertools.count(random.getrandbits(40))


def new_guid():
    return "%s%012x" % (_GUID_PREFIX, next(_guid_seq))


# --------------------------------------------------------------------------
# $filter: tokenizer + recursive-descent parser compiled to closures.

_TOKEN_RE = re.compile(r"""\s*(?:
  (?P<str>'(?:[^']|'')*')
 |(?P<unterm>'.*)
 |(?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![\w-]))
 |(?P<dt>\d{4}-\d{2}-\d{2}(?:T[\d:.]+(?:Z|[+-]\d{2}:\d{2})?)?(?![\w-]))
 |(?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w.]))
 |(?P<id>[A-Za-z_][\w.]*(?:/[A-Za-z_][\w.]*)*)
 |(?P<punct>[(),\[\]=])
 |(?P<bad>\S)
)""", re.X)

_CMP_OPS = ("eq", "ne", "gt", "ge", "lt", "le")


def _norm(v):
    return v.lower() if isinstance(v, str) else v


def _cmp(op, a, b):
    if isinstance(a, str) and isinstance(b, str):
        a = a.lower()
        b = b.lower()
    if op == "eq":
        return a == b
    if op == "ne":
        return a != b
    if a is None or b is None:
        return False
    try:
        if op == "gt":
            return a > b
        if op == "ge":
            return a >= b
        if op == "lt":
            return a < b
        return a <= b
    except TypeError:
        return False


class FilterParser:
    def __init__(self, text):
        self.text = text
        self.toks = []
        pos = 0
        n = len(text)
        while pos < n:
            m = _TOKEN_RE.match(text, pos)
            if not m or m.end() == pos:
                break
            kind = m.lastgroup
            val = m.group(kind)
            start = m.start(kind)
            if kind == "unterm":
                raise bad_request("There is an unterminated literal at "
                                  "position %d in '%s'." % (start, text))
            if kind == "bad":
                raise bad_request("Syntax error: character '%s' is not valid "
                                  "at position %d in '%s'." % (val, start, text))
            self.toks.append((kind, val, start))
            pos = m.end()
            if text[pos:].strip() == "":
                break
        self.i = 0

    def error(self, what="Syntax error"):
        pos = self.toks[self.i][2] if self.i < len(self.toks) else len(self.text)
        return bad_request("%s at position %d in '%s'." % (what, pos, self.text))

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None, 0)

    def take(self, kind=None, val=None):
        t = self.peek()
        if t[0] is None or (kind and t[0] != kind) or (val and t[1] != val):
            raise self.error()
        self.i += 1
        return t

    def parse(self):
        if not self.toks:
            raise self.error("Expression expected")
        f = self.p_or()
        if self.i != len(self.toks):
            raise self.error()
        return f

    def p_or(self):
        left = self.p_and()
        while self.peek()[:2] == ("id", "or"):
            self.i += 1
            right = self.p_and()
            left = (lambda a, b: lambda r: a(r) or b(r))(left, right)
        return left

    def p_and(self):
        left = self.p_unary()
        while self.peek()[:2] == ("id", "and"):
            self.i += 1
            right = self.p_unary()
            hints = getattr(left, "hints", ()) + getattr(right, "hints", ())
            left = (lambda a, b: lambda r: a(r) and b(r))(left, right)
            if hints:
                left.hints = hints
        return left

    def p_unary(self):
        if self.peek()[:2] == ("id", "not"):
            self.i += 1
            inner = self.p_unary()
            return lambda r: not inner(r)
        return self.p_cmp()

    def p_cmp(self):
        t = self.peek()
        if t[0] == "punct" and t[1] == "(":
            self.i += 1
            inner = self.p_or()
            self.take("punct", ")")
            left = inner
        else:
            left = self.p_operand()
        t = self.peek()
        if t[0] == "id" and t[1] in _CMP_OPS:
            self.i += 1
            right = self.p_operand()
            op = t[1]
            fn = lambda r: _cmp(op, left(r), right(r))  # noqa: E731
            if op == "eq":
                # "<column> eq '<string>'": an index candidate (see query)
                attr = getattr(left, "attr", None)
                lit = getattr(right, "lit", None)
                if attr is None:
                    attr = getattr(right, "attr", None)
                    lit = getattr(left, "lit", None)
                if attr is not None and lit is not None:
                    fn.hints = ((attr, (lit.lower(),)),)
            return fn
        fn = lambda r: bool(left(r))  # noqa: E731
        hints = getattr(left, "hints", None)
        if hints:  # In(...) or a parenthesised "and" chain
            fn.hints = hints
        return fn

    def p_operand(self):
        kind, val, _ = self.take()
        if kind == "str":
            lit = val[1:-1].replace("''", "'")
            fn = lambda r: lit  # noqa: E731
            fn.lit = lit
            return fn
        if kind in ("guid", "dt"):
            return lambda r: val
        if kind == "num":
            num = float(val) if any(c in val for c in ".eE") else int(val)
            return lambda r: num
        if kind != "id":
            self.i -= 1
            raise self.error()
        if val == "true":
            return lambda r: True
        if val == "false":
            return lambda r: False
        if val == "null":
            return lambda r: None
        if self.peek()[:2] == ("punct", "("):
            return self.p_func(val)
        name = val
        fn = lambda r: r.get(name)  # noqa: E731
        fn.attr = name
        return fn

    def p_func(self, name):
        self.take("punct", "(")
        lname = name.lower()
        if lname in ("contains", "startswith", "endswith"):
            a = self.p_operand()
            self.take("punct", ",")
            b = self.p_operand()
            self.take("punct", ")")

            def fn(r, a=a, b=b, lname=lname):
                x, y = a(r), b(r)
                if not isinstance(x, str) or not isinstance(y, str):
                    return False
                x, y = x.lower(), y.lower()
                if lname == "contains":
                    return y in x
                if lname == "startswith":
                    return x.startswith(y)
                return x.endswith(y)
            return fn
        if lname in ("microsoft.dynamics.crm.in", "microsoft.dynamics.crm.notin"):
            args = {}
            while True:
                k = self.take("id")[1]
                self.take("punct", "=")
                if self.peek()[:2] == ("punct", "["):
                    self.i += 1
                    vals = []
                    while self.peek()[:2] != ("punct", "]"):
                        vals.append(_norm(self.p_operand()(None)))
                        if self.peek()[:2] == ("punct", ","):
                            self.i += 1
                    self.take("punct", "]")
                    args[k] = set(vals)
                else:
                    args[k] = self.p_operand()(None)
                if self.peek()[:2] == ("punct", ","):
                    self.i += 1
                    continue
                break
            self.take("punct", ")")
            prop = args.get("PropertyName")
            vals = args.get("PropertyValues", set())
            neg = lname.endswith("notin")
            fn = lambda r: (_norm(r.get(prop)) in vals) != neg  # noqa: E731
            if not neg and isinstance(prop, str) and \
                    all(isinstance(v, str) for v in vals):
                fn.hints = ((prop, tuple(vals)),)  # index candidates
            return fn
        raise bad_request("Unknown function '%s' in '%s'." % (name, self.text))


_filter_cache = {}
_filter_cache_lock = threading.Lock()


def compile_filter(text):
    with _filter_cache_lock:
        f = _filter_cache.get(text)
    if f is None:
        f = FilterParser(text).parse()
        # Top-level "and" conjuncts "<column> eq '<string>'" or In(...) on
        # strings, as ((column, (lower-cased literals...)), ...): query()
        # uses an index.
        f.eq_hints = getattr(f, "hints", ())
        with _filter_cache_lock:
            if len(_filter_cache) > 512:
                _filter_cache.clear()
            _filter_cache[text] = f
    return f


def _member_of(m):
    """(list id, member id) of a listmember record (or None)."""
    if m is None:
        return None, None
    lid = m.get("_listid_value", m.get("listid"))
    eid = m.get("_entityid_value", m.get("entityid"))
    return (lid.lower() if isinstance(lid, str) else None,
            eid.lower() if isinstance(eid, str) else None)


def _sort_key(v):
    if v is None:
        return (0, 0)
    if isinstance(v, bool):
        return (1, int(v))
    if isinstance(v, (int, float)):
        return (2, v)
    return (3, str(v).lower())


# --------------------------------------------------------------------------
# Multipart helpers

def _boundary_of(content_type):
    i = content_type.find("boundary=")
    if i < 0:
        return None
    b = content_type[i + 9:]
    if b.startswith('"'):
        b = b[1:]
        j = b.find('"')
        return b[:j] if j >= 0 else b
    j = b.find(";")
    return (b[:j] if j >= 0 else b).strip()


def _split_multipart(text, boundary):
    """Split a multipart body (str) into raw parts (headers + content)."""
    chunks = ("\n" + text).split("\n--" + boundary)
    parts = []
    closed = False
    for c in chunks[1:]:
        if c.startswith("--"):
            closed = True
            break
        nl = c.find("\n")
        if nl < 0:
            continue
        c = c[nl + 1:]
        if c.endswith("\r"):
            c = c[:-1]
        parts.append(c)
    if not closed:
        raise bad_request("Invalid multipart batch: missing closing boundary "
                          "'--%s--'." % boundary)
    return parts


_BLANK_LINE_RE = re.compile(r"\n\r?\n")  # CRLF and LF line ends


def _split_head(buf):
    """Split at the first blank line: (header lines, rest)."""
    m = _BLANK_LINE_RE.search(buf)
    if m is None:
        return buf, ""
    return buf[:m.start()], buf[m.end():]


@functools.lru_cache(maxsize=512)
def _parse_headers(text):
    """'Name: value' lines -> {lower-case name: value}.  Cached, because
    batch parts repeat the same few header blocks: treat the dict as
    read-only."""
    hdrs = {}
    for line in text.split("\n"):
        k, sep, v = line.partition(":")
        if sep:
            hdrs[k.strip().lower()] = v.strip()
    return hdrs


def _parse_part_head(raw):
    """One multipart part -> (MIME headers, content after the blank line)."""
    head, rest = _split_head(raw)
    return _parse_headers(head), rest


class Op:
    __slots__ = ("method", "url", "headers", "body", "content_id", "error",
                 "refs")

    def __init__(self, method, url, headers, body, content_id):
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.content_id = content_id
        self.error = None
        self.refs = ()  # Content-ID references ("1" for "$1"), see _refs_of


_json_decode = json.JSONDecoder().decode


def _parse_op(mime, content):
    """An application/http part (its MIME headers and content) -> Op."""
    http_head, body = _split_head(content)
    reqline, _, hdr_text = http_head.lstrip().partition("\n")
    if not reqline:
        raise bad_request("Invalid batch part: missing request line.")
    method, _, url = reqline.strip().partition(" ")
    k = url.rfind(" HTTP/")
    if k >= 0:
        url = url[:k]
    op = Op(method.upper(), url.strip(), _parse_headers(hdr_text), None,
            mime.get("content-id"))
    body = body.strip()
    if body:
        try:
            if not body.isascii():
                body.encode("utf-8")  # undecodable bytes (see batch) raise
                if body.startswith("\ufeff"):
                    body = body[1:]
            op.body = _json_decode(body)
        except ValueError as e:
            op.error = bad_request("Invalid JSON in request body: %s" % e)
    # A reference is a URL or a JSON string value starting with '$'; most
    # parts have neither, so skip the walk over the body for them.
    if op.url.startswith("$") or '"$' in body or "\\u0024" in body:
        op.refs = _refs_of(op)
    return op


# --------------------------------------------------------------------------
# Service state

_ANNOT_RE = re.compile(r'odata\.include-annotations\s*=\s*"?([^";]*)"?')


def _annot_match(patterns, name):
    """OData annotation filter: '*', 'Ns.*', exact names, '-' excludes."""
    hit = False
    for p in patterns:
        neg = p.startswith("-")
        q = p[1:] if neg else p
        if q == "*" or q == name or (q.endswith(".*") and
                                     name.startswith(q[:-1])):
            if neg:
                return False
            hit = True
    return hit


class Ctx:
    """Per-operation context.  annotations: any include-annotations sent
    (disables 304, echoed in Preference-Applied); lk / fmt / fx: the
    lookuplogicalname, FormattedValue and FetchXML paging annotations."""
    __slots__ = ("client", "base", "annotations", "undo", "in_batch", "lk",
                 "fmt", "fx", "annot_text")

    def __init__(self, client, base, annotations, in_batch):
        self.client = client
        self.base = base
        self.undo = None
        self.in_batch = in_batch
        self.set_prefer(annotations)

    def set_prefer(self, prefer):
        """prefer: the Prefer header (str), or a bool (old callers)."""
        if prefer is True:
            prefer = 'odata.include-annotations="*"'
        m = _ANNOT_RE.search(prefer) if isinstance(prefer, str) else None
        if m is None:
            self.annotations = self.lk = self.fmt = self.fx = False
            self.annot_text = None
            return
        pats = [x.strip() for x in m.group(1).split(",") if x.strip()]
        self.annotations = True
        self.annot_text = ",".join(pats)
        self.lk = _annot_match(pats, "Microsoft.Dynamics.CRM.lookuplogicalname")
        self.fmt = _annot_match(pats, "OData.Community.Display.V1.FormattedValue")
        self.fx = _annot_match(
            pats, "Microsoft.Dynamics.CRM.fetchxmlpagingcookie") or \
            _annot_match(pats, "Microsoft.Dynamics.CRM.morerecords")


class ClientState:
    __slots__ = ("window", "inflight", "blocked_until", "last_ra", "requests",
                 "operations", "batch_requests", "throttled_429",
                 "early_requests", "faults_served")

    def __init__(self):
        self.window = collections.deque()
        self.inflight = 0
        self.blocked_until = 0.0
        self.last_ra = 0
        self.requests = 0
        self.operations = 0
        self.batch_requests = 0
        self.throttled_429 = 0
        self.early_requests = 0
        self.faults_served = 0

    def as_dict(self):
        return {"requests": self.requests, "operations": self.operations,
                "batch_requests": self.batch_requests,
                "throttled_429": self.throttled_429,
                "early_requests": self.early_requests,
                "faults_served": self.faults_served,
                "inflight": self.inflight}


class Emulator:
    def __init__(self, tenant, clients, token_ttl, throttle_cfg, quiet,
                 triggers=None):
        self.tenant = tenant
        self.clients = dict(clients)
        self.token_ttl = token_ttl
        self.quiet = quiet
        self.port = 0
        self.base = "http://127.0.0.1"
        self.lock = threading.RLock()      # store + stats
        self.tlock = threading.Lock()      # tokens + throttling + faults
        self.tokens = {}
        self.default_throttle = dict(throttle_cfg)
        self.org_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "crmsync-emulator-org"))
        self.bu_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "crmsync-emulator-bu"))
        # custom trigger catalog from the command line: name -> frozenset of
        # custom attribute names; empty = every msdynmkt_* action accepted
        self.default_triggers = dict(triggers or {})
        self.reset()

    # -- state -------------------------------------------------------------
    def reset(self):
        with self.lock, self.tlock:
            self.store = {name: {} for name in ENTITY_SETS}
            # equality indexes: set -> column -> lower-cased value -> {keys}
            self.index = {es: {a: {} for a in cols}
                          for es, cols in INDEXED.items()}
            # list membership: list id -> {member id: listmember id}, in
            # insertion order; msorted: list id -> member ids sorted (the
            # paging order), rebuilt lazily; skeys: set -> sorted keys.
            self.members = {}
            self.msorted = {}
            self.skeys = {}
            self.version = 1000
            self.actions = []
            self.triggers = dict(self.default_triggers)
            self.faults = {}
            self.script = collections.deque()
            self.throttle = dict(self.default_throttle)
            self.cstate = {}
            self.stats = {"requests": 0, "batch_requests": 0, "operations": 0,
                          "ops_by_status": {}, "responses_by_status": {},
                          "tokens_issued": 0}
            # guarded by tlock (lock order is always lock -> tlock)
            self.tcount = {"throttled_429": 0, "early_requests": 0,
                           "faults_served": 0}
            self.log = collections.deque(maxlen=200)
        self.seed("systemusers", list(SEEDED_USERS) + [
            {"systemuserid": self.user_id(c), "fullname": "# " + c,
             "applicationid": c, "isdisabled": False} for c in self.clients])

    def user_id(self, client):
        """The systemuserid (and WhoAmI UserId) of a client's application
        user."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, "user:" + str(client)))

    # -- custom trigger catalog --------------------------------------------
    def register_trigger(self, cfg):
        """cfg: {"name": "msdynmkt_<x>", "attributes": [names]} or a list
        of them; a name registered again gets the new attribute list.
        Returns the catalog (as trigger_catalog)."""
        items = cfg if isinstance(cfg, list) else [cfg]
        parsed = []
        for it in items:
            if not isinstance(it, dict):
                raise bad_request('Expected {"name": "msdynmkt_<x>", '
                                  '"attributes": [...]}.')
            name = it.get("name")
            attrs = it.get("attributes", [])
            if not isinstance(name, str) or not name.startswith("msdynmkt_") \
                    or len(name) <= 9 or "/" in name or "(" in name:
                raise bad_request("A custom trigger name is msdynmkt_<name>.")
            if not isinstance(attrs, list) or \
                    not all(isinstance(a, str) and a for a in attrs):
                raise bad_request("attributes must be a list of names.")
            parsed.append((name, frozenset(attrs) - set(TRIGGER_PARAMS)))
        with self.lock:
            for name, attrs in parsed:
                self.triggers[name] = attrs
            return self.trigger_catalog()

    def trigger_catalog(self):
        with self.lock:
            return {n: sorted(a) for n, a in sorted(self.triggers.items())}

    def check_trigger(self, name, params):
        """Validate a custom trigger call against the catalog (when one is
        registered).  Caller holds self.lock.  Raises ApiError."""
        attrs = self.triggers.get(name)
        if attrs is None:
            raise not_found_segment(name)
        # ODataLib rejects an unknown parameter while reading the payload,
        # before it notices missing ones.
        for k in params:
            if "@" not in k and k not in attrs and k not in TRIGGER_PARAMS:
                raise invalid_parameter(k, name)
        missing = [p for p in TRIGGER_PARAMS if params.get(p) in (None, "")]
        if missing:
            raise missing_parameters(name, missing)
        for p in TRIGGER_TIMESTAMPS:
            v = params[p]
            if not isinstance(v, str) or not _DTO_RE.fullmatch(v) or \
                    norm_datetime(v) is None:
                raise type_error(v, "Edm.DateTimeOffset")
        for p in TRIGGER_PROFILE_IDS:
            v = params[p]
            if not isinstance(v, str):
                raise type_error(v, "Edm.String")
            k = v.strip("{}").lower()
            if not GUID_RE.fullmatch(k) or (
                    k not in self.store["contacts"] and
                    k not in self.store["leads"]):
                raise bad_request(
                    "The value '%s' of parameter '%s' of '%s' is not the id "
                    "of an existing contact or lead." % (v, p, name),
                    "0x80040203")

    def client_state(self, client):
        st = self.cstate.get(client)
        if st is None:
            st = self.cstate[client] = ClientState()
        return st

    def index_update(self, es, key, old, new):
        """Move key in the equality indexes of es from the values of record
        old to those of record new (either may be None).  Caller holds
        self.lock."""
        idx = self.index.get(es)
        if idx is None:
            return
        for attr, m in idx.items():
            ov = old.get(attr) if old is not None else None
            nv = new.get(attr) if new is not None else None
            if ov == nv:
                continue
            if isinstance(ov, str):
                lk = ov.lower()
                ks = m.get(lk)
                if ks is not None:
                    ks.discard(key)
                    if not ks:
                        del m[lk]
            if isinstance(nv, str):
                ks = m.get(nv.lower())
                if ks is None:
                    ks = m[nv.lower()] = set()
                ks.add(key)

    def track(self, es, key, old, new):
        """Keep every derived structure in step when the record stored
        under key changes from old to new (either may be None): equality
        indexes, sorted-key caches, list membership and membercount.
        Caller holds self.lock."""
        if es in self.index:
            self.index_update(es, key, old, new)
        if (old is None) != (new is None):
            self.skeys.pop(es, None)
        if es == "listmembers":
            self._member_track(key, old, new)
        elif es == "lists" and new is not None:
            new["membercount"] = len(self.members.get(key, ()))

    def _member_track(self, mk, old, new):
        ol, oe = _member_of(old)
        nl, ne = _member_of(new)
        if (ol, oe) == (nl, ne):
            return
        if ol and oe:
            d = self.members.get(ol)
            if d is not None and d.get(oe) == mk:
                del d[oe]
                srt = self.msorted.get(ol)
                if srt is not None:
                    i = bisect.bisect_left(srt, oe)
                    if i < len(srt) and srt[i] == oe:
                        del srt[i]
                self._sync_count(ol)
        if nl and ne:
            d = self.members.get(nl)
            if d is None:
                d = self.members[nl] = {}
            if ne not in d:
                srt = self.msorted.get(nl)
                if srt is not None:
                    bisect.insort(srt, ne)
            d[ne] = mk
            self._sync_count(nl)

    def _sync_count(self, lid):
        lrec = self.store["lists"].get(lid)
        if lrec is not None:
            lrec["membercount"] = len(self.members.get(lid, ()))

    def sorted_members(self, lid):
        """Member ids of a list in paging order (cached)."""
        srt = self.msorted.get(lid)
        if srt is None:
            srt = self.msorted[lid] = sorted(self.members.get(lid, ()))
        return srt

    def sorted_keys(self, es):
        """Primary keys of a set in paging order (cached until a record
        is added or removed)."""
        srt = self.skeys.get(es)
        if srt is None:
            srt = self.skeys[es] = sorted(self.store[es])
        return srt

    def clear_set(self, es):
        """Delete every record of one set (admin).  Returns the count."""
        with self.lock:
            n = len(self.store[es])
            self.store[es].clear()
            self.skeys.pop(es, None)
            if es == "listmembers":
                self.members.clear()
                self.msorted.clear()
                for lrec in self.store["lists"].values():
                    lrec["membercount"] = 0
            if es in self.index:
                self.index[es] = {a: {} for a in INDEXED[es]}
            return n

    def add_columns(self, es, cols):
        """Declare more typed columns on a set ({name: bool|string|datetime|
        int}); on a strict (crmsync) table this also allows them."""
        if es not in ENTITY_SETS:
            raise not_found_segment(es)
        if not isinstance(cols, dict) or any(t not in _EDM
                                             for t in cols.values()):
            raise bad_request("Expected {\"<column>\": \"bool|string|"
                              "datetime|int\"}.")
        with self.lock:
            r = VALIDATION.setdefault(es, {})
            r["types"] = dict(r.get("types", {}), **cols)
            RULES[es] = Rules(r, es)
        return sorted(r["types"])

    def next_version(self):
        self.version += 1
        return self.version

    def log_request(self, client, method, path, status):
        with self.lock:
            self.log.append({"t": time.time(), "client": client,
                             "method": method, "path": path, "status": status})
            rbs = self.stats["responses_by_status"]
            k = str(status)
            rbs[k] = rbs.get(k, 0) + 1

    def stats_snapshot(self):
        with self.lock, self.tlock:
            s = json.loads(json.dumps(self.stats))
            s.update(self.tcount)
            s["per_client"] = {c: st.as_dict() for c, st in self.cstate.items()}
            s["request_log_tail"] = list(self.log)
            s["records"] = {k: len(v) for k, v in self.store.items()}
            s["actions"] = len(self.actions)
            return s

    # -- tokens ------------------------------------------------------------
    def issue_token(self, client_id):
        tok = "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0." + secrets.token_urlsafe(32)
        with self.tlock:
            now = time.monotonic()
            if len(self.tokens) > 10000:
                self.tokens = {t: v for t, v in self.tokens.items() if v[1] > now}
            self.tokens[tok] = (client_id, now + self.token_ttl)
        with self.lock:
            self.stats["tokens_issued"] += 1
        return tok

    def check_token(self, tok):
        """Return (client_id, None) or (None, reason)."""
        with self.tlock:
            v = self.tokens.get(tok)
        if v is None:
            return None, "invalid"
        if time.monotonic() >= v[1]:
            return None, "expired"
        return v[0], None

    def expire_tokens(self):
        with self.tlock:
            n = len(self.tokens)
            self.tokens = {t: (v[0], 0.0) for t, v in self.tokens.items()}
        return n

    # -- admission: early requests, scripted faults, throttling -------------
    def admit(self, client):
        """Decide before processing.  Returns None (admitted; caller must call
        release) or a fault dict {status, code, message, retry_after, drop}."""
        now = time.monotonic()
        with self.tlock:
            st = self.client_state(client)
            st.requests += 1
            if now < st.blocked_until - EARLY_GRACE_S:
                # Sent before Retry-After elapsed: count and penalise.
                st.early_requests += 1
                ra = min(300, max(1, st.last_ra) * 2)
                st.last_ra = ra
                st.blocked_until = now + ra
                st.throttled_429 += 1
                self.tcount["early_requests"] += 1
                self.tcount["throttled_429"] += 1
                return self._throttle_fault("requests", ra)
            if self.script:
                entry = self.script[0]
                entry["count"] -= 1
                if entry["count"] <= 0:
                    self.script.popleft()
                st.faults_served += 1
                self.tcount["faults_served"] += 1
                return self._scripted_fault(entry, st, now)
            th = self.throttle
            maxc = th.get("max_concurrent") or 0
            if maxc and st.inflight >= maxc:
                ra = int(th.get("retry_after_s") or 1)
                return self._throttled(st, now, "concurrent", ra)
            rpw = th.get("requests_per_window") or 0
            if rpw:
                win = float(th.get("window_s") or 300)
                w = st.window
                while w and w[0] <= now - win:
                    w.popleft()
                if len(w) >= rpw:
                    ra = th.get("retry_after_s")
                    if not ra:
                        ra = max(1, int(math.ceil(w[0] + win - now)))
                    return self._throttled(st, now, "requests", int(ra))
                w.append(now)
            rate = float(self.faults.get("error_rate") or 0)
            if rate and random.random() < rate:
                st.faults_served += 1
                self.tcount["faults_served"] += 1
                status = int(self.faults.get("error_status") or 503)
                return {"status": status, "code": "",
                        "message": "Injected fault (error_rate).",
                        "retry_after": None, "drop": False}
            st.inflight += 1
            return None

    def release(self, client):
        with self.tlock:
            st = self.client_state(client)
            st.inflight -= 1

    def _throttled(self, st, now, kind, ra):
        st.last_ra = ra
        st.blocked_until = now + ra
        st.throttled_429 += 1
        self.tcount["throttled_429"] += 1
        return self._throttle_fault(kind, ra)

    def _throttle_fault(self, kind, ra):
        th = self.throttle
        if kind == "concurrent":
            code = "0x80072326"
            msg = ("Number of concurrent requests exceeded the limit of %d."
                   % int(th.get("max_concurrent") or 52))
        else:
            code = "0x80072322"
            msg = ("Number of requests exceeded the limit of %d over time "
                   "window of %d seconds."
                   % (int(th.get("requests_per_window") or 6000),
                      int(float(th.get("window_s") or 300))))
        return {"status": 429, "code": code, "message": msg,
                "retry_after": ra, "drop": False}

    def _scripted_fault(self, entry, st, now):
        status = int(entry.get("status", 503))
        ra = entry.get("retry_after")
        if entry.get("drop"):
            return {"drop": True, "status": 0}
        if status == 429:
            ra = int(ra if ra is not None else 1)
            st.last_ra = ra
            st.blocked_until = now + ra
            st.throttled_429 += 1
            self.tcount["throttled_429"] += 1
            f = self._throttle_fault(entry.get("kind", "requests"), ra)
            if "message" in entry:
                f["message"] = entry["message"]
            return f
        return {"status": status, "code": entry.get("code", ""),
                "message": entry.get("message",
                                     "Injected fault (script, status %d)." % status),
                "retry_after": ra, "drop": False}

    def set_faults(self, cfg):
        with self.tlock:
            self.faults.update({k: cfg[k] for k in ("error_rate",
                                                    "error_status",
                                                    "latency_ms") if k in cfg})
            if "throttle" in cfg:
                self.throttle = dict(cfg["throttle"] or {})
                for st in self.cstate.values():
                    st.window.clear()
            if "script" in cfg:
                self.script = collections.deque(
                    dict(e, count=int(e.get("count", 1)))
                    for e in cfg["script"] or [])

    def clear_faults(self):
        with self.tlock:
            self.faults = {}
            self.script = collections.deque()
            self.throttle = dict(self.default_throttle)
            for st in self.cstate.values():
                st.window.clear()
                st.blocked_until = 0.0

    def faults_snapshot(self):
        with self.tlock:
            return {"faults": dict(self.faults), "throttle": dict(self.throttle),
                    "script": list(self.script)}

    # -- records -----------------------------------------------------------
    def seed(self, set_name, records):
        if set_name not in ENTITY_SETS:
            raise not_found_segment(set_name)
        pkname = ENTITY_SETS[set_name][1]
        ts = now_iso()
        n = 0
        rules = RULES.get(set_name)
        types = rules.types if rules is not None else ()
        with self.lock:
            table = self.store[set_name]
            for r in records:
                rec = {sys.intern(k): v for k, v in r.items()
                       if not k.endswith("@odata.bind")}
                key = str(rec.get(pkname) or uuid.uuid4()).lower()
                rec[pkname] = key
                rec.setdefault("createdon", ts)
                rec.setdefault("modifiedon", ts)
                rec["versionnumber"] = self.next_version()
                for attr, typ in types:
                    if typ == "datetime" and attr in rec:
                        rec[attr] = norm_datetime(rec[attr]) or rec[attr]
                for attr in ("createdon", "modifiedon"):
                    if attr in r:  # given by the seed: as Dataverse keeps it
                        rec[attr] = norm_datetime(rec[attr]) or rec[attr]
                for k, v in r.items():
                    if k.endswith("@odata.bind") and isinstance(v, str):
                        tset, tkey = self.parse_entity_ref(v)
                        attr = lookup_attr(k[:-11], ENTITY_SETS[set_name][0],
                                           ENTITY_SETS[tset][0])
                        rec["_%s_value" % attr] = tkey
                        rec["_%s_value%s" % (attr, ANNOT_LOOKUP)] = ENTITY_SETS[tset][0]
                self.track(set_name, key, table.get(key), rec)
                table[key] = rec
                n += 1
        return n

    def parse_entity_ref(self, ref):
        return parse_entity_ref(ref)

    def bulk_list(self, cfg):
        """POST /_admin/bulk-list: create count records of one kind and make
        them members of a list (created if missing), in one pass without
        validation.  cfg: {list_id, entity: contact|account|lead (or the set
        name), count, email_pattern ("user{n}@bench.example"), start (first
        n, default 0), fields {col: value, "{n}" in strings replaced},
        every [{"n": k, "offset": o, "fields": {...}}] (records with
        n % k == o get these fields too), listname, type}."""
        if not isinstance(cfg, dict):
            raise bad_request("expected an object")
        ent = str(cfg.get("entity", "contact"))
        es = LOGICAL_TO_SET.get(ent, ent)
        if es not in ("contacts", "accounts", "leads"):
            raise bad_request("entity must be contact, account or lead")
        logical, pkname = ENTITY_SETS[es]
        try:
            count = int(cfg.get("count", 0))
            start = int(cfg.get("start", 0))
        except (TypeError, ValueError):
            raise bad_request("count and start must be integers")
        lid = str(cfg.get("list_id") or uuid.uuid4()).strip("{}").lower()
        if not GUID_RE.fullmatch(lid):
            raise bad_request("list_id must be a GUID")
        pattern = cfg.get("email_pattern", "user{n}@bench.example")
        fields = dict(cfg.get("fields") or {})
        every = [(int(e["n"]), int(e.get("offset", 0)), dict(e["fields"]))
                 for e in (cfg.get("every") or [])]
        intern = sys.intern
        const = {intern(k): v for k, v in fields.items()
                 if not (isinstance(v, str) and "{n}" in v)}
        const.setdefault("statecode", 0)
        const.setdefault("statuscode", 1)
        templ = [(intern(k), v) for k, v in fields.items()
                 if isinstance(v, str) and "{n}" in v]
        t0 = time.perf_counter()
        with self.lock:
            ts = now_iso()
            lists = self.store["lists"]
            if lid not in lists:
                code = {"accounts": 1, "contacts": 2, "leads": 4}[es]
                lrec = {"listid": lid,
                        "listname": cfg.get("listname", "bulk list"),
                        "createdfromcode": code,
                        "type": bool(cfg.get("type", False)),
                        "statecode": 0, "statuscode": 1,
                        "createdon": ts, "modifiedon": ts,
                        "versionnumber": self.next_version()}
                self.track("lists", lid, None, lrec)
                lists[lid] = lrec
            table = self.store[es]
            lm = self.store["listmembers"]
            eidx = self.index[es]["emailaddress1"]
            mem = self.members.setdefault(lid, {})
            self.msorted.pop(lid, None)
            self.skeys.pop(es, None)
            self.skeys.pop("listmembers", None)
            lmann = "_entityid_value" + ANNOT_LOOKUP
            first = None
            for n in range(start, start + count):
                key = new_guid()
                rec = dict(const)
                sn = str(n)
                for k, v in templ:
                    rec[k] = v.replace("{n}", sn)
                for k_, o_, fl in every:
                    if n % k_ == o_:
                        rec.update(fl)
                if pattern:
                    email = pattern.replace("{n}", sn)
                    rec["emailaddress1"] = email
                    lk = email.lower()
                    ks = eidx.get(lk)
                    if ks is None:
                        ks = eidx[lk] = set()
                    ks.add(key)
                rec[pkname] = key
                rec["createdon"] = ts
                rec["modifiedon"] = ts
                self.version += 1
                rec["versionnumber"] = self.version
                table[key] = rec
                mk = new_guid()
                lm[mk] = {"listmemberid": mk, "_listid_value": lid,
                          "_listid_value" + ANNOT_LOOKUP: "list",
                          "_entityid_value": key, lmann: logical,
                          "createdon": ts, "modifiedon": ts,
                          "versionnumber": self.version}
                mem[key] = mk
                if first is None:
                    first = key
            self._sync_count(lid)
            total = len(mem)
        return {"list_id": lid, "entity": logical, "created": count,
                "membercount": total, "first_id": first,
                "seconds": round(time.perf_counter() - t0, 3)}

    # -- Web API operation dispatch -----------------------------------------
    def execute(self, method, url, headers, body, ctx):
        """Run one operation.  Caller holds self.lock.
        Returns (status, headers, body bytes, (set, key) or None)."""
        path, _, query = url.partition("?")
        if "://" in path:
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        version = "v9.2"
        if path.startswith("/api/data/"):
            version, _, path = path[10:].partition("/")
            if not VERSION_RE.fullmatch(version):
                raise not_found_segment(version)
        path = path.lstrip("/")
        segs = path.split("/") if path else []
        if not segs:
            raise not_found_segment("")
        first = segs[0]
        key = None
        p = first.find("(")
        if p > 0 and first.endswith(")"):
            key = first[p + 1:-1]
            first = first[:p]
        if first == "WhoAmI" and key is None and len(segs) == 1:
            if method != "GET":
                raise ApiError(405, "", "The requested resource does not "
                                        "support http method '%s'." % method)
            return self.whoami(ctx, version)
        if first == "$batch":
            raise bad_request("Batch requests cannot be nested.")
        if first not in ENTITY_SETS:
            if key is None and len(segs) == 1 and first.startswith("msdynmkt_") \
                    and method == "POST":
                return self.action(first, body, ctx)
            raise not_found_segment(first)
        if key is not None:
            kk = key
            if kk.startswith("{") and kk.endswith("}"):
                kk = kk[1:-1]
            if not GUID_RE.fullmatch(kk):
                raise bad_request("Bad Request - Error in query syntax: "
                                  "invalid key '%s'." % key)
            key = kk.lower()
        params = parse_query(query)
        if "$skip" in params:
            raise bad_request("The query parameter $skip is not supported.",
                              "0x80060888")
        es = first
        if key is None:
            if len(segs) != 1:
                raise not_found_segment(segs[1])
            if method == "GET":
                if "fetchXml" in params:
                    return self.fetchxml(es, params["fetchXml"], ctx, version)
                return self.query(es, None, params, headers, ctx, version, es)
            if method == "POST":
                return self.create(es, body, params, headers, ctx, version)
            raise ApiError(405, "0x80060888", "The requested resource does not "
                                              "support http method '%s'." % method)
        if len(segs) == 1:
            if method == "GET":
                return self.retrieve(es, key, params, headers, ctx, version)
            if method == "PATCH":
                return self.upsert(es, key, body, params, headers, ctx, version)
            if method == "DELETE":
                return self.delete(es, key, headers, ctx)
            raise ApiError(405, "0x80060888", "The requested resource does not "
                                              "support http method '%s'." % method)
        return self.sub_resource(es, key, segs[1:], method, body, params,
                                 headers, ctx, version)

    def entity_url(self, ctx, version, es, key):
        return "%s/api/data/%s/%s(%s)" % (ctx.base, version, es, key)

    def whoami(self, ctx, version):
        uid = self.user_id(ctx.client)
        body = {"@odata.context": "%s/api/data/%s/$metadata#Microsoft.Dynamics."
                                  "CRM.WhoAmIResponse" % (ctx.base, version),
                "BusinessUnitId": self.bu_id, "UserId": uid,
                "OrganizationId": self.org_id}
        return 200, [("Content-Type", JSON_CT)], _json_bytes(body), None

    def action(self, name, body, ctx):
        if body is not None and not isinstance(body, dict):
            raise bad_request("Action parameters must be a JSON object.")
        if self.triggers:
            self.check_trigger(name, body or {})
        entry = {"t": time.time(), "client": ctx.client, "action": name,
                 "parameters": body or {}}
        self.actions.append(entry)
        if ctx.undo is not None:
            ctx.undo.append(("action", entry))
        return 204, [], b"", None

    # -- writes --------------------------------------------------------------
    def _write(self, es, key, new, old, ctx):
        table = self.store[es]
        if ctx.undo is not None:
            ctx.undo.append((es, key, old))
        self.track(es, key, table.get(key), new)
        table[key] = new

    def rollback(self, undo):
        for item in reversed(undo):
            if item[0] == "action":
                try:
                    self.actions.remove(item[1])
                except ValueError:
                    pass
                continue
            es, key, old = item
            self.track(es, key, self.store[es].get(key), old)
            if old is None:
                self.store[es].pop(key, None)
            else:
                self.store[es][key] = old

    def apply_body(self, es, rec, body, creating, ctx):
        """Copy the JSON body into rec (a fresh dict).  Returns changed keys."""
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.")
        logical = ENTITY_SETS[es][0]
        rules = RULES.get(es)
        if rules is not None and (rules.navs or rules.strict is not None):
            check_schema(es, logical, body, rules)
        store = self.store
        intern = sys.intern  # keys are shared by all records: saves memory
        # Every body key counts as changed (annotation keys match no rule),
        # plus the lookup attribute of each @odata.bind.
        changed = list(body)
        for k, v in body.items():
            if "@" not in k:
                if v.__class__ is list and k.endswith("_activity_parties"):
                    v = self.parties(v)
                rec[intern(k)] = v
                continue
            if not k.endswith("@odata.bind"):
                continue  # other annotations (@odata.type ...) are ignored
            nav = k[:-11]
            if isinstance(v, str):
                tset, tkey = parse_entity_ref(v)
                tlogical = ENTITY_SETS[tset][0]
                if tkey not in store[tset]:
                    raise does_not_exist(tlogical, tkey)
                attr, vkey, akey = lookup_keys(nav, logical, tlogical)
                rec[vkey] = tkey
                rec[akey] = tlogical
            elif v is None:
                attr, vkey, akey = lookup_keys(nav, logical, None)
                rec[vkey] = None
                rec.pop(akey, None)
            elif isinstance(v, list):
                raise bad_request("Collection-valued @odata.bind on '%s' is "
                                  "not supported by the emulator." % nav)
            else:
                raise bad_request("Invalid @odata.bind value for '%s'." % nav)
            changed.append(attr)
        return changed

    def parties(self, items):
        out = []
        store = self.store
        for it in items:
            if not isinstance(it, dict):
                raise bad_request("Activity parties must be JSON objects.")
            p = {"activitypartyid": new_guid()}
            for k, v in it.items():
                if "@" not in k:
                    p[sys.intern(k)] = v
                elif k.endswith("@odata.bind"):
                    tset, tkey = parse_entity_ref(v)
                    tlogical = ENTITY_SETS[tset][0]
                    if tkey not in store[tset]:
                        raise does_not_exist(tlogical, tkey)
                    _, vkey, akey = lookup_keys(k[:-11], "activityparty",
                                                tlogical)
                    p[vkey] = tkey
                    p[akey] = tlogical
            out.append(p)
        return out

    def validate(self, es, new, old, changed):
        rules = RULES.get(es)
        if rules is None:
            return
        logical = ENTITY_SETS[es][0]
        creating = old is None
        ch = set(changed)
        for attr, typ in rules.types:
            if attr in ch:
                v = new.get(attr)
                if v is None:
                    continue
                if typ == "datetime":
                    n = norm_datetime(v)
                    if n is None:
                        raise type_error(v, _EDM[typ])
                    new[attr] = n
                elif typ == "bool":
                    if v is not True and v is not False:
                        raise type_error(v, _EDM[typ])
                elif typ == "string":
                    if not isinstance(v, str):
                        raise type_error(v, _EDM[typ])
                elif typ == "int":
                    if isinstance(v, bool) or not isinstance(v, int):
                        raise type_error(v, _EDM[typ])
        for attr, maxlen in rules.max_len:
            if attr in ch:
                v = new.get(attr)
                if isinstance(v, str) and len(v) > maxlen:
                    raise validation_error(
                        "The length of the '%s' attribute of the '%s' entity "
                        "exceeded the maximum allowed length of '%d'."
                        % (attr, logical, maxlen))
        for attr, allowed, allowed_text in rules.options:
            if attr in ch:
                v = new.get(attr)
                if v is not None and (isinstance(v, bool) or v not in allowed):
                    raise ApiError(
                        400, "0x8004431a",
                        "A validation error occurred. The value %s of '%s' on "
                        "record of type '%s' is outside the valid range. "
                        "Accepted Values: %s" % (json.dumps(v), attr, logical,
                                                 allowed_text))
        for attr in rules.required:
            if (creating or attr in ch) and new.get(attr) in (None, ""):
                raise validation_error(
                    "The '%s' attribute of the '%s' entity is required and "
                    "cannot be empty." % (attr, logical))
        for attr, lk in rules.required_lookups:
            if (creating or attr in ch) and not new.get(lk):
                raise validation_error(
                    "The '%s' attribute of the '%s' entity is required "
                    "and cannot be empty." % (attr, logical))
        if creating:
            return
        for attr, lk in rules.fixed_lookups:
            if attr in ch and new.get(lk) != old.get(lk):
                raise validation_error(
                    "The '%s' attribute of the '%s' entity is not valid "
                    "for update." % (attr, logical))
        for attr in rules.fixed:
            if attr in ch and new.get(attr) != old.get(attr):
                raise validation_error(
                    "The '%s' attribute of the '%s' entity is not valid "
                    "for update." % (attr, logical))

    def _stamp(self, es, rec, creating):
        ts = now_iso()
        if creating:
            rec["createdon"] = ts
            if es not in NO_STATE_SETS:
                rec.setdefault("statecode", 0)
                rec.setdefault("statuscode", 1)
        rec["modifiedon"] = ts
        rec["versionnumber"] = self.next_version()

    def create(self, es, body, params, headers, ctx, version):
        logical, pkname = ENTITY_SETS[es]
        table = self.store[es]
        if body is None:
            raise bad_request("The request body is empty.")
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.")
        key = body.get(pkname)
        if key is not None:
            if not isinstance(key, str) or not GUID_RE.fullmatch(key.strip("{}")):
                raise bad_request("Invalid value for '%s'." % pkname)
            key = key.strip("{}").lower()
            if key in table:
                raise duplicate_record()
        else:
            key = new_guid()
        rec = {}
        changed = self.apply_body(es, rec, body, True, ctx)
        rec[pkname] = key
        self.validate(es, rec, None, changed)
        self._stamp(es, rec, True)
        self._write(es, key, rec, None, ctx)
        return self._write_response(es, key, rec, True, headers, params, ctx,
                                    version, created_status=201)

    def _write_response(self, es, key, rec, created, headers, params, ctx,
                        version, created_status):
        if "return=representation" in headers.get("prefer", ""):
            sel = parse_select(params)
            out = self.render(es, rec, sel, parse_expand(params), ctx)
            out = dict([("@odata.context", "%s/api/data/%s/$metadata#%s/$entity"
                         % (ctx.base, version, es))] + list(out.items()))
            hdrs = [("Content-Type", JSON_CT),
                    ("ETag", 'W/"%d"' % rec["versionnumber"])]
            if ctx.annotations:
                hdrs.append(("Preference-Applied", "return=representation"))
            return (created_status if created else 200), hdrs, \
                _json_bytes(out), (es, key)
        return 204, [("OData-EntityId", self.entity_url(ctx, version, es, key))], \
            b"", (es, key)

    def upsert(self, es, key, body, params, headers, ctx, version):
        logical, pkname = ENTITY_SETS[es]
        table = self.store[es]
        old = table.get(key)
        if_match = headers.get("if-match")
        if_none = headers.get("if-none-match")
        if if_none == "null":
            if_none = None
        if if_none is not None:
            if if_none != "*":
                raise bad_request("If-None-Match on PATCH supports only '*'.")
            if old is not None:
                raise duplicate_record()
        if if_match is not None:
            if old is None:
                raise does_not_exist(logical, key)
            if if_match != "*" and if_match != 'W/"%d"' % old["versionnumber"]:
                raise ApiError(412, "0x80060882",
                               "The version of the existing record doesn't "
                               "match the RowVersion property provided.")
        if body is None:
            raise bad_request("The request body is empty.")
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.")
        new = dict(old) if old is not None else {}
        changed = self.apply_body(es, new, body, old is None, ctx)
        new[pkname] = key
        self.validate(es, new, old, changed)
        self._stamp(es, new, old is None)
        self._write(es, key, new, old, ctx)
        return self._write_response(es, key, new, old is None, headers, params,
                                    ctx, version, created_status=201)

    def delete(self, es, key, headers, ctx):
        logical = ENTITY_SETS[es][0]
        old = self.store[es].get(key)
        if old is None:
            raise does_not_exist(logical, key)
        im = headers.get("if-match")
        if im and im != "*" and im != 'W/"%d"' % old["versionnumber"]:
            raise ApiError(412, "0x80060882",
                           "The version of the existing record doesn't match "
                           "the RowVersion property provided.")
        if ctx.undo is not None:
            ctx.undo.append((es, key, old))
        del self.store[es][key]
        self.track(es, key, old, None)
        if es in ("contacts", "accounts", "leads", "lists"):
            # cascade: drop list memberships of a deleted member or list
            # (through the membership index: O(lists), not O(memberships))
            if es == "lists":
                mks = list(self.members.get(key, {}).values())
            else:
                mks = [d[key] for d in self.members.values() if key in d]
            for mk in mks:
                self.remove_member_row(mk, ctx)
        return 204, [], b"", None

    def sub_resource(self, es, key, rest, method, body, params, headers, ctx,
                     version):
        logical, pkname = ENTITY_SETS[es]
        rec = self.store[es].get(key)
        nav = rest[0]
        p = nav.find("(")
        if p > 0 and (es, nav[:p]) in NAV_COLLECTIONS and rest[-1] == "$ref":
            # lists(<id>)/listcontact_association(<member id>)/$ref
            nav = nav[:p]
        if (es, nav) in NAV_COLLECTIONS:
            if rec is None:
                raise does_not_exist(logical, key)
            tset, kind, attr = NAV_COLLECTIONS[(es, nav)]
            if len(rest) == 1 and method == "GET":
                path = "%s(%s)/%s" % (es, key, nav)
                if kind == "lookup":
                    cands = [r for r in self.store[tset].values()
                             if r.get(attr) == key]
                    return self.query(tset, cands, params, headers, ctx,
                                      version, path)
                # members: paged straight from the sorted membership
                return self.query(tset, None, params, headers, ctx, version,
                                  path, keyseq=self.sorted_members(key))
            if kind == "member" and rest[-1] == "$ref":
                return self.member_ref(es, key, tset, rest, method, body, ctx)
            raise ApiError(405, "0x80060888", "Method %s is not supported on "
                                              "'%s'." % (method, nav))
        if rec is None:
            raise does_not_exist(logical, key)
        if len(rest) == 2 and rest[1] == "$ref":
            # single-valued navigation property reference
            attr = lookup_attr(nav, logical, None)
            new = dict(rec)
            if method == "PUT":
                if not isinstance(body, dict) or "@odata.id" not in body:
                    raise bad_request("Expected {\"@odata.id\": ...}.")
                tset, tkey = self.parse_entity_ref(body["@odata.id"])
                if tkey not in self.store[tset]:
                    raise does_not_exist(ENTITY_SETS[tset][0], tkey)
                attr = lookup_attr(nav, logical, ENTITY_SETS[tset][0])
                new["_%s_value" % attr] = tkey
                new["_%s_value%s" % (attr, ANNOT_LOOKUP)] = ENTITY_SETS[tset][0]
            elif method == "DELETE":
                new["_%s_value" % attr] = None
                new.pop("_%s_value%s" % (attr, ANNOT_LOOKUP), None)
            else:
                raise ApiError(405, "0x80060888", "Method %s is not supported "
                                                  "on $ref." % method)
            self.validate(es, new, rec, [attr])
            self._stamp(es, new, False)
            self._write(es, key, new, rec, ctx)
            return 204, [], b"", (es, key)
        if len(rest) == 1:
            prop = nav
            if method == "GET":
                if prop not in rec:
                    raise bad_request("Could not find a property named '%s' on "
                                      "type 'Microsoft.Dynamics.CRM.%s'."
                                      % (prop, logical))
                v = rec.get(prop)
                if v is None:
                    return 204, [], b"", None
                return 200, [("Content-Type", JSON_CT)], _json_bytes(
                    {"@odata.context": "%s/api/data/%s/$metadata#%s(%s)/%s"
                     % (ctx.base, version, es, key, prop), "value": v}), None
            if method in ("PUT", "DELETE"):
                if prop == pkname:
                    raise bad_request("The primary key cannot be updated.")
                rules = RULES.get(es)
                if rules is not None and rules.strict is not None and \
                        prop not in rules.strict:
                    raise not_found_segment(prop)
                new = dict(rec)
                if method == "PUT":
                    if not isinstance(body, dict) or "value" not in body:
                        raise bad_request("Expected {\"value\": ...}.")
                    new[sys.intern(prop)] = body["value"]
                else:
                    new[prop] = None
                self.validate(es, new, rec, [prop])
                self._stamp(es, new, False)
                self._write(es, key, new, rec, ctx)
                return 204, [], b"", (es, key)
        raise not_found_segment(rest[-1])

    def member_ids(self, list_id):
        return self.members.get(list_id, {})

    def remove_member_row(self, mk, ctx):
        lm = self.store["listmembers"]
        m = lm.get(mk)
        if m is None:
            return
        if ctx.undo is not None:
            ctx.undo.append(("listmembers", mk, m))
        del lm[mk]
        self.track("listmembers", mk, m, None)

    def member_ref(self, es, key, tset, rest, method, body, ctx):
        lm = self.store["listmembers"]
        if method == "POST" and len(rest) == 2:
            if not isinstance(body, dict) or "@odata.id" not in body:
                raise bad_request("Expected {\"@odata.id\": ...}.")
            rset, rkey = self.parse_entity_ref(body["@odata.id"])
            if rset != tset:
                raise bad_request("Reference must point to %s." % tset)
            if rkey not in self.store[rset]:
                raise does_not_exist(ENTITY_SETS[rset][0], rkey)
            if rkey in self.member_ids(key):
                return 204, [], b"", None
            mid = new_guid()
            rec = {"listmemberid": mid, "_listid_value": key,
                   "_listid_value" + ANNOT_LOOKUP: "list",
                   "_entityid_value": rkey,
                   "_entityid_value" + ANNOT_LOOKUP: ENTITY_SETS[rset][0]}
            self._stamp("listmembers", rec, True)
            self._write("listmembers", mid, rec, None, ctx)
            return 204, [], b"", None
        if method == "DELETE":
            # lists(<id>)/listcontact_association(<cid>)/$ref or ?$id=
            seg = rest[0]
            target = None
            p = seg.find("(")
            if p > 0:
                target = seg[p + 1:-1].lower()
            if target is None:
                raise bad_request("Missing member key.")
            mk = self.members.get(key, {}).get(target)
            if mk is not None and mk in lm:
                self.remove_member_row(mk, ctx)
                return 204, [], b"", None
            raise does_not_exist("listmember", target)
        raise ApiError(405, "0x80060888", "Method not supported.")

    # -- reads ---------------------------------------------------------------
    def render(self, es, rec, select, expand, ctx, omit_null=False):
        out = {"@odata.etag": 'W/"%d"' % rec["versionnumber"]}
        annotations = ctx.lk
        fmt = ctx.fmt
        if select:
            pk = ENTITY_SETS[es][1]
            for f in select:
                if f not in rec:
                    lv = "_%s_value" % f  # $select=parentcustomerid
                    if lv in rec:
                        f = lv
                v = rec.get(f)
                if v is None and omit_null:
                    continue
                if fmt and v is not None:
                    fv = self.formatted(es, f, v, rec)
                    if fv is not None:
                        out[f + ANNOT_FMT] = fv
                out[f] = v
                if annotations and (f + ANNOT_LOOKUP) in rec:
                    out[f + ANNOT_LOOKUP] = rec[f + ANNOT_LOOKUP]
            out[pk] = rec[pk]
        else:
            for k, v in rec.items():
                if "@" in k:
                    if annotations:
                        out[k] = v
                    continue
                if k.endswith("_activity_parties"):
                    continue
                if v is None and omit_null:
                    continue
                if fmt and v is not None:
                    fv = self.formatted(es, k, v, rec)
                    if fv is not None:
                        out[k + ANNOT_FMT] = fv
                out[k] = v
        for nav in expand:
            v = rec.get(nav)
            if isinstance(v, list) or nav.endswith("_activity_parties"):
                out[nav] = [{k: x for k, x in p.items()
                             if annotations or "@" not in k} for p in (v or [])]
        return out

    def formatted(self, es, col, v, rec):
        """The FormattedValue label of one column value, or None: option
        sets (int, or a "1,3" multi-select string -> "A; C"), Yes/No
        columns, and lookups (the target's primary name)."""
        if col.endswith("_value") and col.startswith("_"):
            logical = rec.get(col + ANNOT_LOOKUP)
            tset = LOGICAL_TO_SET.get(logical)
            if tset is None or not isinstance(v, str):
                return None
            target = self.store[tset].get(v)
            return primary_name(logical, target) if target is not None else None
        if v.__class__ is bool:
            labels = BOOL_LABELS.get((es, col)) or BOOL_LABELS.get(col)
            return (labels or ("No", "Yes"))[int(v)]
        labels = OPTIONSETS.get(es, {}).get(col)
        if labels is None:
            labels = BUILTIN_OPTIONSETS.get(es, {}).get(col)
        if labels is None:
            return None
        if isinstance(v, int):
            return labels.get(str(v))
        if isinstance(v, str):  # multi-select: "1,3" -> "A; C"
            parts = [p.strip() for p in v.split(",") if p.strip()]
            return "; ".join(labels.get(p, p) for p in parts)
        return None

    def retrieve(self, es, key, params, headers, ctx, version):
        logical = ENTITY_SETS[es][0]
        rec = self.store[es].get(key)
        if rec is None:
            raise does_not_exist(logical, key)
        etag = 'W/"%d"' % rec["versionnumber"]
        inm = headers.get("if-none-match")
        if inm and inm != "null" and inm == etag and not ctx.annotations:
            return 304, [("ETag", etag)], b"", None
        sel = parse_select(params)
        out = self.render(es, rec, sel, parse_expand(params), ctx)
        ctxurl = "%s/api/data/%s/$metadata#%s%s/$entity" % (
            ctx.base, version, es, "(%s)" % ",".join(sel) if sel else "")
        out = dict([("@odata.context", ctxurl)] + list(out.items()))
        hdrs = [("Content-Type", JSON_CT), ("ETag", etag)]
        if ctx.annotations:
            hdrs.append(("Preference-Applied",
                         'odata.include-annotations="%s"' % ctx.annot_text))
        return 200, hdrs, _json_bytes(out), None

    def query(self, es, candidates, params, headers, ctx, version, path,
              keyseq=None):
        """candidates: records to consider (None: the whole set, or the
        records of keyseq, a sorted key list such as a list's members)."""
        pkname = ENTITY_SETS[es][1]
        ftext = params.get("$filter")
        f = compile_filter(ftext) if ftext else None
        if candidates is None and keyseq is None:
            idx = self.index.get(es)
            if idx is not None and f is not None:
                # "<indexed col> eq '<literal>'" or In(PropertyName=<indexed
                # col>, ...) as a top-level conjunct: only the records with
                # those values can match.
                for attr, vals in f.eq_hints:
                    m = idx.get(attr)
                    if m is not None:
                        table = self.store[es]
                        keys = set()
                        for val in vals:
                            keys.update(m.get(val, ()))
                        candidates = [table[k] for k in keys]
                        break
        prefer = headers.get("prefer", "")
        maxpage = None
        if "odata.maxpagesize" in prefer:
            m = re.search(r"odata\.maxpagesize\s*=\s*(\d+)", prefer)
            if m:
                maxpage = max(1, min(MAX_PAGE, int(m.group(1))))
        orderby = params.get("$orderby")
        token = params.get("$skiptoken")
        last = None
        offset = 0
        pageno = 1
        if token:
            last, offset, pageno = parse_skiptoken(token)
        counting = params.get("$count", "").lower() == "true"
        if candidates is None and not orderby and not counting:
            # Fast path, O(page): walk the sorted keys from the paging
            # cookie's last key and stop one row after the page is full.
            return self._query_sorted(es, keyseq, f, params, ctx, version,
                                      path, maxpage, last, offset, pageno)
        if candidates is None:
            table = self.store[es]
            if keyseq is not None:
                candidates = [table[k] for k in keyseq if k in table]
            else:
                candidates = table.values()
        if f is not None:
            rows = [r for r in candidates if f(r)]
        else:
            rows = list(candidates)
        total = len(rows)
        if orderby:
            parts = orderby.strip().split()
            field = parts[0]
            desc = len(parts) > 1 and parts[1].lower() == "desc"
            rows.sort(key=lambda r: r[pkname])
            rows.sort(key=lambda r: _sort_key(r.get(field)), reverse=desc)
            rows = rows[offset:]
        else:
            rows.sort(key=lambda r: r[pkname])
            if last is not None:
                lo, hi = 0, len(rows)
                while lo < hi:
                    mid = (lo + hi) // 2
                    if rows[mid][pkname] <= last:
                        lo = mid + 1
                    else:
                        hi = mid
                rows = rows[lo:]
        top = params.get("$top")
        limit = maxpage or MAX_PAGE
        capped_by_top = False
        if top is not None and maxpage is None:
            try:
                t = int(top)
            except ValueError:
                raise bad_request("Invalid $top value '%s'." % top)
            if t <= MAX_PAGE:
                limit = t
                capped_by_top = True
        page = rows[:limit]
        more = len(rows) > limit and not capped_by_top
        sel = parse_select(params)
        exp = parse_expand(params)
        out = collections.OrderedDict()
        out["@odata.context"] = "%s/api/data/%s/$metadata#%s%s" % (
            ctx.base, version, es, "(%s)" % ",".join(sel) if sel else "")
        if params.get("$count", "").lower() == "true":
            out["@odata.count"] = min(total, MAX_PAGE)
            if total > MAX_PAGE:
                out["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] = True
        out["value"] = [self.render(es, r, sel, exp, ctx) for r in page]
        if more:
            cookie = make_skiptoken(page[-1][pkname], offset + len(page),
                                    pageno + 1, pkname)
            raw = [p for p in params.raw if not p.startswith("$skiptoken=")]
            raw.append("$skiptoken=" + quote(cookie, safe=""))
            out["@odata.nextLink"] = "%s/api/data/%s/%s?%s" % (
                ctx.base, version, path, "&".join(raw))
        return 200, self._query_headers(maxpage, ctx), _json_bytes(out), None

    def fetchxml(self, es, text, ctx, version):
        """GET <set>?fetchXml=...: a subset of FetchXML (one entity, its
        attributes, nested and/or filters of conditions on its own columns,
        count/page/paging-cookie/top), paged in primary-key order."""
        logical, pkname = ENTITY_SETS[es]
        try:
            root = ET.fromstring(text)
        except ET.ParseError as e:
            raise bad_request("The FetchXML is not well formed: %s" % e,
                              "0x80041103")
        ent = root.find("entity") if root.tag == "fetch" else None
        if ent is None:
            raise bad_request("The FetchXML must be <fetch><entity .../>"
                              "</fetch>.", "0x80041103")
        if ent.get("name") != logical:
            raise bad_request("The entity '%s' of the FetchXML does not match "
                              "the entity set '%s'." % (ent.get("name"), es),
                              "0x80041103")
        if (root.get("aggregate") or "").lower() == "true":
            raise bad_request("Aggregate FetchXML is not supported by the "
                              "emulator.", "0x80041103")
        attrs = []
        every = False
        f = None
        for c in ent:
            if c.tag == "attribute":
                attrs.append(c.get("name"))
            elif c.tag == "all-attributes":
                every = True
            elif c.tag == "filter":
                g = _fetch_filter(c)
                f = g if f is None else (lambda a, b: lambda r: a(r) and b(r))(
                    f, g)
            elif c.tag == "order":
                continue  # ignored: results are in primary-key order
            else:
                raise bad_request("<%s> is not supported by the emulator's "
                                  "FetchXML." % c.tag, "0x80041103")
        try:
            top = int(root.get("top")) if root.get("top") else None
            count = int(root.get("count") or MAX_PAGE)
            page = int(root.get("page") or 1)
        except ValueError:
            raise bad_request("Invalid top, count or page in the FetchXML.",
                              "0x80041103")
        if top is not None and root.get("count") is not None:
            raise bad_request("The top attribute can't be specified with "
                              "paging attribute page or count.", "0x80041103")
        if not 1 <= count <= MAX_PAGE or page < 1:
            raise bad_request("The count must be between 1 and 5000 and the "
                              "page at least 1.", "0x80041103")
        last = None
        cookie = root.get("paging-cookie")
        if top is not None:
            rows = self._page_sorted(es, None, f, None, top)[:top]
            more = False
        else:
            if cookie and page > 1:
                last = parse_fetch_cookie(cookie, pkname)
                rows = self._page_sorted(es, None, f, last, count)
            else:  # no cookie: skip (page - 1) * count rows (slower)
                skip = (page - 1) * count
                rows = self._page_sorted(es, None, f, None, skip + count)[skip:]
            more = len(rows) > count
            rows = rows[:count]
        sel = None if every or not attrs else attrs
        out = collections.OrderedDict()
        out["@odata.context"] = "%s/api/data/%s/$metadata#%s%s" % (
            ctx.base, version, es, "(%s)" % ",".join(sel) if sel else "")
        if ctx.fx:
            if rows:
                out["@Microsoft.Dynamics.CRM.fetchxmlpagingcookie"] = \
                    make_fetch_cookie(pkname, page, rows[0][pkname],
                                      rows[-1][pkname])
            out["@Microsoft.Dynamics.CRM.morerecords"] = more
        out["value"] = [self.render(es, r, sel, (), ctx, omit_null=True)
                        for r in rows]
        return 200, self._query_headers(None, ctx), _json_bytes(out), None

    def _query_headers(self, maxpage, ctx):
        hdrs = [("Content-Type", JSON_CT)]
        applied = []
        if maxpage is not None:
            applied.append("odata.maxpagesize=%d" % maxpage)
        if ctx.annotations:
            applied.append('odata.include-annotations="%s"' % ctx.annot_text)
        if applied:
            hdrs.append(("Preference-Applied", ",".join(applied)))
        return hdrs

    def _page_sorted(self, es, keyseq, f, last, limit):
        """Up to limit + 1 records after key last (None: from the start),
        in key order, that pass filter f."""
        table = self.store[es]
        if keyseq is None:
            keyseq = self.sorted_keys(es)
        i = bisect.bisect_right(keyseq, last) if last is not None else 0
        n = len(keyseq)
        want = limit + 1
        rows = []
        get = table.get
        while i < n and len(rows) < want:
            chunk = keyseq[i:i + want]
            i += len(chunk)
            for k in chunk:
                r = get(k)
                if r is not None and (f is None or f(r)):
                    rows.append(r)
                    if len(rows) == want:
                        break
        return rows

    def _query_sorted(self, es, keyseq, f, params, ctx, version, path,
                      maxpage, last, offset, pageno):
        pkname = ENTITY_SETS[es][1]
        limit = maxpage or MAX_PAGE
        capped_by_top = False
        top = params.get("$top")
        if top is not None and maxpage is None:
            try:
                t = int(top)
            except ValueError:
                raise bad_request("Invalid $top value '%s'." % top)
            if t <= MAX_PAGE:
                limit = t
                capped_by_top = True
        rows = self._page_sorted(es, keyseq, f, last, limit)
        page = rows[:limit]
        more = len(rows) > limit and not capped_by_top
        sel = parse_select(params)
        exp = parse_expand(params)
        render = self.render
        out = collections.OrderedDict()
        out["@odata.context"] = "%s/api/data/%s/$metadata#%s%s" % (
            ctx.base, version, es, "(%s)" % ",".join(sel) if sel else "")
        out["value"] = [render(es, r, sel, exp, ctx) for r in page]
        if more:
            cookie = make_skiptoken(page[-1][pkname], offset + len(page),
                                    pageno + 1, pkname)
            raw = [p for p in params.raw if not p.startswith("$skiptoken=")]
            raw.append("$skiptoken=" + quote(cookie, safe=""))
            out["@odata.nextLink"] = "%s/api/data/%s/%s?%s" % (
                ctx.base, version, path, "&".join(raw))
        return 200, self._query_headers(maxpage, ctx), _json_bytes(out), None

    # -- $batch --------------------------------------------------------------
    def batch(self, content_type, body, prefer, ctx):
        """Returns (status, reason, headers, body)."""
        boundary = _boundary_of(content_type or "")
        if not content_type or not content_type.startswith("multipart/mixed") \
                or not boundary:
            raise bad_request("The batch request must have a multipart/mixed "
                              "Content-Type with a boundary.")
        items = []  # ("op", Op) | ("cs", [Op])
        nops = 0
        # JSON bodies are UTF-8.  Undecodable bytes are kept as surrogates
        # and fail only their own operation (see _parse_op).
        text = body.decode("utf-8", "surrogateescape")
        for raw in _split_multipart(text, boundary):
            mime, rest = _parse_part_head(raw)
            ct = mime.get("content-type", "")
            if ct.startswith("multipart/mixed"):
                csb = _boundary_of(ct)
                if not csb:
                    raise bad_request("Change set without boundary.")
                ops = []
                for craw in _split_multipart(rest, csb):
                    cmime, crest = _parse_part_head(craw)
                    if cmime.get("content-type", "").startswith("multipart/"):
                        raise bad_request("Change sets cannot be nested.")
                    op = _parse_op(cmime, crest)
                    if op.method == "GET":
                        raise bad_request("GET requests are not allowed inside "
                                          "a change set.")
                    ops.append(op)
                nops += len(ops)
                items.append(("cs", ops))
            else:
                op = _parse_op(mime, rest)
                nops += 1
                items.append(("op", op))
        if nops > MAX_BATCH_OPS:
            raise bad_request("The current change set contains too many "
                              "operations. A maximum number of '%d' operations "
                              "are allowed in a change set." % MAX_BATCH_OPS, "")
        # Content-ID references must point backwards within their change set.
        for kind, val in items:
            if kind == "op":
                ops_scope = [val]
            else:
                ops_scope = val
            defined = set()
            for op in ops_scope:
                for ref in op.refs:
                    if kind == "op" or ref not in defined:
                        raise bad_request("Content-ID Reference: '$%s' does not "
                                          "exist in the batch context." % ref, "")
                if op.content_id:
                    defined.add(op.content_id)
        cont = "odata.continue-on-error" in (prefer or "")
        rb = "batchresponse_" + str(uuid.uuid4())
        delim = b"--%s\r\n" % rb.encode()
        out = []
        status = 200
        nstat = {}
        with self.lock:
            for kind, val in items:
                if kind == "op":
                    st, part = self._batch_part(val, ctx, None)
                    nstat[st] = nstat.get(st, 0) + 1
                    out.append(delim)
                    out.append(part)
                    if st >= 400 and not cont:
                        status = 400
                        break
                    continue
                cmap = {}
                ctx.undo = []
                parts = []
                failed = None
                for op in val:
                    st, part = self._batch_part(op, ctx, cmap)
                    nstat[st] = nstat.get(st, 0) + 1
                    if st >= 400:
                        failed = part
                        break
                    parts.append(part)
                undo = ctx.undo
                ctx.undo = None
                if failed is not None:
                    self.rollback(undo)
                    out.append(delim)
                    out.append(failed)
                    if not cont:
                        status = 400
                        break
                    continue
                csb = ("changesetresponse_" + str(uuid.uuid4())).encode()
                out.append(b"%sContent-Type: multipart/mixed; boundary=%s"
                           b"\r\n\r\n" % (delim, csb))
                csdelim = b"--%s\r\n" % csb
                for part in parts:
                    out.append(csdelim)
                    out.append(part)
                out.append(b"--%s--\r\n" % csb)
            out.append(b"--%s--\r\n" % rb.encode())
            self.stats["operations"] += sum(nstat.values())
            obs = self.stats["ops_by_status"]
            for k, v in nstat.items():
                obs[str(k)] = obs.get(str(k), 0) + v
        with self.tlock:
            self.client_state(ctx.client).operations += sum(nstat.values())
        hdrs = [("OData-Version", "4.0"),
                ("Content-Type", "multipart/mixed; boundary=%s" % rb)]
        if cont:
            hdrs.append(("Preference-Applied", "odata.continue-on-error"))
        return status, ("OK" if status == 200 else "BadRequest"), hdrs, b"".join(out)

    def _batch_part(self, op, ctx, cmap):
        """Execute one batch operation; returns (status, encoded part)."""
        ent = None
        try:
            if op.error is not None:
                raise op.error
            url = op.url
            body = op.body
            if cmap is not None:
                if url.startswith("$"):
                    ref, _, tail = url[1:].partition("/")
                    es, key = cmap[ref]
                    url = "/api/data/v9.2/%s(%s)%s" % (es, key,
                                                       "/" + tail if tail else "")
                if op.refs and isinstance(body, dict):
                    body = _subst_refs(body, cmap)
            if not url.startswith("/") and "://" not in url:
                url = "/api/data/v9.2/" + url
            ctx.set_prefer(op.headers.get("prefer", ""))
            st, hdrs, rbody, ent = self.execute(op.method, url, op.headers,
                                                body, ctx)
        except ApiError as e:
            st, hdrs, rbody = e.status, [("Content-Type", JSON_CT)] + e.headers, \
                e.body()
            hdrs.insert(0, ("REQ_ID", new_guid()))
        except Exception as e:  # emulator bug: fail the op, keep atomicity
            import traceback
            traceback.print_exc()
            st, hdrs, rbody = 500, [("REQ_ID", str(uuid.uuid4())),
                                    ("Content-Type", JSON_CT)], _json_bytes(
                {"error": {"code": "0x80040216",
                           "message": "Emulator error: %r" % (e,)}})
        if cmap is not None and op.content_id and ent is not None:
            cmap[op.content_id] = ent
        # Header order as in the documented responses: REQ_ID, Content-Type,
        # OData-Version, Location, OData-EntityId, then the rest.
        req_id = ct = eid = None
        others = []
        for k, v in hdrs:
            if k == "REQ_ID":
                req_id = v
            elif k == "Content-Type":
                ct = v
            elif k == "OData-EntityId":
                eid = v
            elif k != "OData-Version":
                others.append("%s: %s\r\n" % (k, v))
        head = [_PART_HEAD]
        if op.content_id:
            head.append("Content-ID: %s\r\n" % op.content_id)
        head.append("\r\nHTTP/1.1 %d %s\r\n" % (st, REASONS.get(st, "")))
        if req_id:
            head.append("REQ_ID: %s\r\n" % req_id)
        if ct:
            if st == 200 and "streaming" not in ct:
                ct += "; odata.streaming=true"
            head.append("Content-Type: %s\r\n" % ct)
        head.append("OData-Version: 4.0\r\n")
        if eid:
            head.append("Location: %s\r\nOData-EntityId: %s\r\n" % (eid, eid))
        head.extend(others)
        head.append("\r\n")
        return st, "".join(head).encode("utf-8") + rbody + b"\r\n"


_PART_HEAD = ("Content-Type: application/http\r\n"
              "Content-Transfer-Encoding: binary\r\n")


def _refs_of(op):
    refs = []
    if op.url.startswith("$"):
        refs.append(op.url[1:].partition("/")[0])
    b = op.body
    if isinstance(b, dict):
        for k, v in b.items():
            if isinstance(v, str) and v.startswith("$") and \
                    (k.endswith("@odata.bind") or k == "@odata.id"):
                refs.append(v[1:])
    return refs


def _subst_refs(body, cmap):
    out = None
    for k, v in body.items():
        if isinstance(v, str) and v.startswith("$") and \
                (k.endswith("@odata.bind") or k == "@odata.id"):
            es, key = cmap[v[1:]]
            if out is None:
                out = dict(body)
            out[k] = "/%s(%s)" % (es, key)
    return out if out is not None else body


def check_schema(es, logical, body, rules):
    """Declared navigation properties (case, target table) and, for the
    tables whose columns are all known, unknown properties.  Raises
    ApiError like Dataverse's OData deserializer: before anything else."""
    strict = rules.strict
    navs = rules.navs
    for k, v in body.items():
        if "@" in k:
            if not k.endswith("@odata.bind"):
                continue
            nav = k[:-11]
            target = navs.get(nav)
            if target is None:
                if strict is not None or rules.navs_strict or \
                        nav.lower() in rules.navs_lower:
                    raise undeclared_nav(nav)
                continue
            if isinstance(v, str) and not v.startswith("$"):
                tset = parse_entity_ref(v)[0]
                if tset != target:
                    raise nav_type_mismatch(nav, ENTITY_SETS[tset][0],
                                            ENTITY_SETS[target][0])
        elif strict is not None and k not in strict:
            raise invalid_property(k, logical)


@functools.lru_cache(maxsize=1024)
def lookup_keys(nav, logical, target_logical):
    """lookup_attr plus the (interned) record keys it is stored under:
    (attr, "_<attr>_value", "_<attr>_value@...lookuplogicalname")."""
    attr = lookup_attr(nav, logical, target_logical)
    return (attr, sys.intern("_%s_value" % attr),
            sys.intern("_%s_value%s" % (attr, ANNOT_LOOKUP)))


@functools.lru_cache(maxsize=65536)
def parse_entity_ref(ref):
    """'/contacts(<id>)', 'contacts(<id>)' or an absolute URL ->
    (set, lower-case id).  Raises ApiError.  Cached: a batch binds the same
    campaign and contacts over and over."""
    s = ref
    if "://" in s:
        k = s.find("/api/data/")
        s = s[k + 10:] if k >= 0 else s.split("://", 1)[1].partition("/")[2]
        s = s.partition("/")[2] if VERSION_RE.match(s) else s
    elif s.startswith("/api/data/"):
        s = s[10:].partition("/")[2]
    s = s.lstrip("/")
    p = s.find("(")
    if p <= 0 or not s.endswith(")"):
        raise bad_request("Invalid entity reference '%s'." % ref)
    set_name = s[:p]
    key = s[p + 1:-1]
    if set_name not in ENTITY_SETS:
        raise not_found_segment(set_name)
    if not GUID_RE.fullmatch(key):
        raise bad_request("Invalid key '%s' in entity reference '%s'."
                          % (key, ref))
    return set_name, key.lower()


def lookup_attr(nav, logical, target_logical):
    """Navigation property name -> lookup attribute name:
    regardingobjectid_campaign_campaignresponse -> regardingobjectid,
    msdynmkt_purposeId -> msdynmkt_purposeid, partyid_contact -> partyid."""
    a = nav.lower()
    suf = "_" + logical
    if a.endswith(suf) and len(a) > len(suf):
        a = a[:-len(suf)]
    if target_logical:
        suf = "_" + target_logical
        if a.endswith(suf) and len(a) > len(suf):
            a = a[:-len(suf)]
    return a


class Query(dict):
    """Decoded query options plus the raw (still encoded) parts."""
    raw = ()


NO_QUERY = Query()  # shared: query options are never modified


def parse_query(q):
    if not q:
        return NO_QUERY
    params = Query()
    params.raw = []
    for part in q.split("&"):
        if not part:
            continue
        params.raw.append(part)
        k, _, v = part.partition("=")
        # ASP.NET decodes '+' as a space (hence '%2B' in filter values).
        params[unquote_plus(k)] = unquote_plus(v)
    return params


def parse_select(params):
    s = params.get("$select")
    if not s:
        return None
    return [x.strip() for x in s.split(",") if x.strip()]


def parse_expand(params):
    s = params.get("$expand")
    if not s:
        return ()
    return [x.strip().split("(")[0] for x in s.split(",") if x.strip()]


def make_skiptoken(last_key, offset, pageno, pkname):
    inner = '<cookie page="%d" offset="%d"><%s last="{%s}" first="{%s}" />' \
            '</cookie>' % (pageno - 1, offset, pkname, last_key.upper(),
                           last_key.upper())
    return '<cookie pagenumber="%d" pagingcookie="%s" istracking="False" />' % (
        pageno, quote(quote(inner, safe=""), safe=""))


def _lower_hex(s):
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), s)


def make_fetch_cookie(pkname, page, first, last):
    """The fetchxmlpagingcookie annotation: the inner cookie URL-encoded
    twice (lower-case hex, as Dataverse sends it)."""
    inner = '<cookie page="%d"><%s last="{%s}" first="{%s}" /></cookie>' % (
        page, pkname, last.upper(), first.upper())
    return '<cookie pagenumber="%d" pagingcookie="%s" istracking="False" />' % (
        page + 1, _lower_hex(quote(_lower_hex(quote(inner, safe="")), safe="")))


def parse_fetch_cookie(cookie, pkname):
    """Last primary key of a FetchXML paging-cookie attribute (the inner
    cookie, decoded; still-encoded forms are tolerated)."""
    c = cookie
    for _ in range(2):
        if "%" in c and "<" not in c:
            c = unquote(c)
    m = re.search(r'<%s\s+last="\{?([0-9A-Fa-f-]{36})\}?"' % re.escape(pkname), c)
    if not m:
        raise bad_request("Invalid paging cookie '%s'." % cookie, "0x80041103")
    return m.group(1).lower()


def _like_re(pattern):
    out = []
    for ch in pattern:
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
    return re.compile("".join(out), re.I | re.S)


def _fetch_coerce(rv, s):
    """The condition value s as the type of record value rv."""
    if isinstance(rv, bool):
        return s.strip().lower() in ("1", "true")
    if isinstance(rv, int):
        return int(s)
    if isinstance(rv, float):
        return float(s)
    return s.lower()


def _fetch_condition(c):
    name = c.get("attribute")
    if not name or c.get("entityname"):
        raise bad_request("Conditions need an attribute of the fetched "
                          "entity (entityname is not supported).",
                          "0x80041103")
    op = (c.get("operator") or "").lower()
    lv = "_%s_value" % name
    values = [v.text or "" for v in c.findall("value")]
    if c.get("value") is not None:
        values.insert(0, c.get("value"))

    def get(r):
        v = r.get(name)
        return r.get(lv) if v is None else v

    if op == "null":
        return lambda r: get(r) is None
    if op == "not-null":
        return lambda r: get(r) is not None
    if op in ("like", "not-like", "begins-with", "ends-with"):
        if not values:
            raise bad_request("Condition '%s' needs a value." % op, "0x80041103")
        pat = values[0]
        if op == "begins-with":
            pat += "%"
        elif op == "ends-with":
            pat = "%" + pat
        rx = _like_re(pat)
        neg = op == "not-like"

        def like(r):
            v = get(r)
            if not isinstance(v, str):
                return False
            return bool(rx.fullmatch(v)) != neg
        return like
    cmp_ops = {"eq": "eq", "ne": "ne", "neq": "ne", "gt": "gt", "ge": "ge",
               "lt": "lt", "le": "le"}
    if op in cmp_ops or op in ("in", "not-in"):
        if not values:
            raise bad_request("Condition '%s' on '%s' needs a value."
                              % (op, name), "0x80041103")

        def test(r, op=op):
            v = get(r)
            if v is None:  # SQL: NULL matches no comparison
                return False
            try:
                vals = [_fetch_coerce(v, x) for x in values]
            except ValueError:
                return op in ("ne", "neq", "not-in")
            vv = v.lower() if isinstance(v, str) else v
            if op == "in":
                return vv in vals
            if op == "not-in":
                return vv not in vals
            return _cmp(cmp_ops[op], vv, vals[0])
        return test
    raise bad_request("The condition operator '%s' is not supported by the "
                      "emulator's FetchXML." % op, "0x80041103")


def _fetch_filter(el):
    parts = []
    for c in el:
        if c.tag == "condition":
            parts.append(_fetch_condition(c))
        elif c.tag == "filter":
            parts.append(_fetch_filter(c))
        else:
            raise bad_request("<%s> is not supported inside <filter>." % c.tag,
                              "0x80041103")
    if (el.get("type") or "and").lower() == "or":
        return lambda r: any(p(r) for p in parts)
    return lambda r: all(p(r) for p in parts)


_COOKIE_RE = re.compile(r'pagenumber="(\d+)"\s+pagingcookie="([^"]*)"')
_INNER_RE = re.compile(r'offset="(\d+)"><\w+ last="\{([0-9A-Fa-f-]+)\}"')


def parse_skiptoken(token):
    m = _COOKIE_RE.search(token)
    if not m:
        raise bad_request("Invalid $skiptoken.")
    inner = unquote(unquote(m.group(2)))
    m2 = _INNER_RE.search(inner)
    if not m2:
        raise bad_request("Invalid $skiptoken paging cookie.")
    return m2.group(2).lower(), int(m2.group(1)), int(m.group(1))


# --------------------------------------------------------------------------
# HTTP layer

def _entra_error(status, error, code, description):
    now = time.gmtime()
    body = {"error": error,
            "error_description": "AADSTS%d: %s\r\nTrace ID: %s\r\nCorrelation "
                                 "ID: %s\r\nTimestamp: %s" % (
                                     code, description, uuid.uuid4(),
                                     uuid.uuid4(),
                                     time.strftime("%Y-%m-%d %H:%M:%SZ", now)),
            "error_codes": [code],
            "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", now),
            "trace_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4())}
    return status, [("Content-Type", "application/json; charset=utf-8")], \
        _json_bytes(body)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "DataverseEmulator/1.0"
    emu = None  # set by main()

    def setup(self):
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, fmt, *args):
        if not self.emu.quiet:
            sys.stderr.write("dataverse-emulator: %s - %s\n" % (
                self.address_string(), fmt % args))

    def do_GET(self):
        self.dispatch()

    do_POST = do_PATCH = do_PUT = do_DELETE = do_GET

    def read_body(self):
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def send(self, status, headers, body, reason=None):
        out = ["HTTP/1.1 %d %s" % (status, reason or REASONS.get(status, ""))]
        for k, v in headers:
            out.append("%s: %s" % (k, v))
        out.append("Content-Length: %d" % len(body))
        if self.close_connection:
            out.append("Connection: close")
        out.append("")
        out.append("")
        self.wfile.write("\r\n".join(out).encode("utf-8") + body)
        if not self.emu.quiet:
            self.log_request(status, len(body))

    def send_json(self, status, obj, headers=()):
        self.send(status, [("Content-Type", "application/json")] + list(headers),
                  _json_bytes(obj))

    def dispatch(self):
        emu = self.emu
        try:
            body = self.read_body()
        except (ValueError, OSError):
            self.close_connection = True
            self.send(400, [], b"")
            return
        path = self.path
        if "://" in path:
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        try:
            if path.startswith("/_admin/"):
                return self.admin(path, body)
            if path.startswith("/api/data/"):
                return self.webapi(path, body)
            if path.endswith("/oauth2/v2.0/token"):
                return self.token(path, body)
        except ApiError as e:
            return self.send(e.status, [("Content-Type", JSON_CT)], e.body())
        except Exception as e:  # emulator bug: say so, keep serving
            import traceback
            traceback.print_exc()
            return self.send_json(500, {"error": {"code": "0x80040216",
                                                  "message": "Emulator error: %r"
                                                  % (e,)}})
        emu.log_request(None, self.command, path, 404)
        self.send_json(404, {"error": {"code": "0x8006088a",
                                       "message": "Resource not found for the "
                                                  "segment '%s'." % path}})

    # -- token endpoint ------------------------------------------------------
    def token(self, path, body):
        emu = self.emu
        tenant = path.strip("/").split("/")[0]
        form = {}
        for part in body.decode("utf-8", "replace").split("&"):
            if part:
                k, _, v = part.partition("=")
                form[unquote_plus(k)] = unquote_plus(v)
        cid = form.get("client_id")
        secret = form.get("client_secret")
        auth = self.headers.get("Authorization", "")
        if auth[:6].lower() == "basic ":
            try:
                dec = base64.b64decode(auth[6:].strip()).decode("utf-8")
                u, _, p = dec.partition(":")
                cid = cid or unquote_plus(u)
                secret = unquote_plus(p)
            except (ValueError, UnicodeDecodeError):
                pass
        status, hdrs, rbody = self._token_result(tenant, form, cid, secret)
        emu.log_request(cid, self.command, path, status)
        self.send(status, hdrs + [("Cache-Control", "no-store, no-cache")], rbody)

    def _token_result(self, tenant, form, cid, secret):
        emu = self.emu
        if self.command != "POST":
            return _entra_error(400, "invalid_request", 900561,
                                "The endpoint only accepts POST requests.")
        if tenant != emu.tenant:
            return _entra_error(400, "invalid_request", 90002,
                                "Tenant '%s' not found. Check to make sure you "
                                "have the correct tenant ID and are signing "
                                "into the correct cloud." % tenant)
        gt = form.get("grant_type")
        if not gt:
            return _entra_error(400, "invalid_request", 900144,
                                "The request body must contain the following "
                                "parameter: 'grant_type'.")
        if gt != "client_credentials":
            return _entra_error(400, "unsupported_grant_type", 70003,
                                "The app requested an unsupported grant type "
                                "'%s'." % gt)
        if not cid:
            return _entra_error(400, "invalid_request", 900144,
                                "The request body must contain the following "
                                "parameter: 'client_id'.")
        scope = form.get("scope")
        if not scope:
            return _entra_error(400, "invalid_request", 900144,
                                "The request body must contain the following "
                                "parameter: 'scope'.")
        if not scope.endswith("/.default") or " " in scope.strip():
            return _entra_error(400, "invalid_scope", 1002012,
                                "The provided value for scope %s is not valid. "
                                "Client credential flows must have a scope "
                                "value with /.default suffixed to the resource "
                                "identifier (application ID URI)." % scope)
        if cid not in emu.clients:
            return _entra_error(400, "unauthorized_client", 700016,
                                "Application with identifier '%s' was not found "
                                "in the directory '%s'." % (cid, tenant))
        if not secret:
            return _entra_error(401, "invalid_client", 7000216,
                                "'client_assertion', 'client_secret' or "
                                "'request' is required for the "
                                "'client_credentials' grant type.")
        if not secrets.compare_digest(secret.encode(),
                                      emu.clients[cid].encode()):
            return _entra_error(401, "invalid_client", 7000215,
                                "Invalid client secret provided. Ensure the "
                                "secret being sent in the request is the client "
                                "secret value, not the client secret ID, for a "
                                "secret added to app '%s'." % cid)
        tok = emu.issue_token(cid)
        ttl = int(emu.token_ttl)
        return 200, [("Content-Type", "application/json; charset=utf-8")], \
            _json_bytes({"token_type": "Bearer", "expires_in": ttl,
                         "ext_expires_in": ttl, "access_token": tok})

    # -- Web API ---------------------------------------------------------------
    def webapi(self, path, body):
        emu = self.emu
        short = path.partition("?")[0]
        with emu.lock:
            emu.stats["requests"] += 1
        auth = self.headers.get("Authorization", "")
        client, why = (None, "missing")
        if auth[:7].lower() == "bearer ":
            client, why = emu.check_token(auth[7:].strip())
        if client is None:
            msg = {"missing": "Bearer token is missing from the Authorization "
                              "header.",
                   "expired": "ExpiredAuthTicket: the access token has "
                              "expired.",
                   "invalid": "InvalidAuthTicket: the access token is not "
                              "valid."}[why]
            emu.log_request(None, self.command, short, 401)
            return self.send(401, [
                ("WWW-Authenticate",
                 "Bearer authorization_uri=https://login.microsoftonline.com/"
                 "%s/oauth2/authorize, resource_id=%s/" % (emu.tenant, emu.base)),
                ("Content-Type", JSON_CT)],
                _json_bytes({"error": {"code": "0x80072560", "message": msg}}))
        fault = emu.admit(client)
        if fault is not None:
            if fault.get("drop"):
                emu.log_request(client, self.command, short, 0)
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return None
            hdrs = [("Content-Type", JSON_CT), ("OData-Version", "4.0")]
            if fault.get("retry_after") is not None:
                hdrs.append(("Retry-After", str(int(fault["retry_after"]))))
            emu.log_request(client, self.command, short, fault["status"])
            return self.send(fault["status"], hdrs, _json_bytes(
                {"error": {"code": fault["code"], "message": fault["message"]}}))
        try:
            lat = emu.faults.get("latency_ms")
            if lat:
                time.sleep(float(lat) / 1000.0)
            ctx = Ctx(client, emu.base, self.headers.get("Prefer", ""), False)
            rest = path[10:]
            version, _, tail = rest.partition("/")
            if tail == "$batch" and self.command == "POST":
                with emu.lock:
                    emu.stats["batch_requests"] += 1
                with emu.tlock:
                    emu.client_state(client).batch_requests += 1
                try:
                    st, reason, hdrs, rbody = emu.batch(
                        self.headers.get("Content-Type"), body,
                        self.headers.get("Prefer"), ctx)
                except ApiError as e:
                    st, reason, hdrs, rbody = e.status, None, [
                        ("Content-Type", JSON_CT), ("OData-Version", "4.0")], \
                        e.body()
                emu.log_request(client, self.command, short, st)
                return self.send(st, hdrs, rbody, reason)
            parsed = None
            if body.strip():
                try:
                    parsed = json.loads(body)
                except ValueError as e:
                    raise bad_request("Invalid JSON in request body: %s" % e)
            hdrs_l = {k.lower(): v for k, v in self.headers.items()}
            with emu.lock:
                try:
                    st, hdrs, rbody, _ = emu.execute(self.command, path, hdrs_l,
                                                     parsed, ctx)
                except ApiError as e:
                    st, hdrs, rbody = e.status, [("Content-Type", JSON_CT),
                                                 ("REQ_ID", str(uuid.uuid4()))] \
                        + e.headers, e.body()
                emu.stats["operations"] += 1
                obs = emu.stats["ops_by_status"]
                obs[str(st)] = obs.get(str(st), 0) + 1
            with emu.tlock:
                emu.client_state(client).operations += 1
            emu.log_request(client, self.command, short, st)
            return self.send(st, [("OData-Version", "4.0")] + hdrs, rbody)
        finally:
            emu.release(client)

    # -- admin -------------------------------------------------------------------
    def admin(self, path, body):
        emu = self.emu
        p = path.partition("?")[0][len("/_admin/"):].strip("/")
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
        if p == "expire-tokens" and m == "POST":
            return self.send_json(200, {"expired": emu.expire_tokens()})
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
        if p == "actions" and m == "GET":
            q = parse_query(path.partition("?")[2])
            act, prof = q.get("action"), q.get("profile")
            prof = prof.strip("{}").lower() if prof else None
            with emu.lock:
                out = [a for a in emu.actions
                       if (act is None or a["action"] == act) and
                       (prof is None or str(a["parameters"].get(
                           "msdynmkt_profileid", "")).strip("{}").lower()
                        == prof)]
                return self.send_json(200, out)
        if p == "custom-triggers" or p.startswith("custom-triggers/"):
            name = p[len("custom-triggers/"):] if "/" in p else None
            try:
                if m == "GET" and name is None:
                    return self.send_json(200, emu.trigger_catalog())
                if m == "POST" and name is None:
                    return self.send_json(200, emu.register_trigger(data))
                if m == "DELETE":
                    with emu.lock:
                        if name is None:
                            emu.triggers.clear()
                        elif emu.triggers.pop(name, None) is None:
                            return self.send_json(404, {
                                "error": "unknown trigger '%s'" % name})
                    return self.send_json(200, emu.trigger_catalog())
            except ApiError as e:
                return self.send(e.status, [("Content-Type", JSON_CT)],
                                 e.body())
        if p == "records" and m == "GET":
            with emu.lock:
                return self.send_json(200, {k: len(v) for k, v in
                                            emu.store.items()})
        if p.startswith("records/"):
            es = p[len("records/"):]
            if es not in ENTITY_SETS:
                return self.send_json(404, {"error": "unknown entity set '%s'"
                                                     % es})
            if m == "GET":
                with emu.lock:
                    recs = list(emu.store[es].values())
                    payload = _json_bytes(recs)
                return self.send(200, [("Content-Type", "application/json")],
                                 payload)
            if m == "POST":
                if isinstance(data, dict):
                    data = [data]
                if not isinstance(data, list):
                    return self.send_json(400, {"error": "expected an array"})
                try:
                    n = emu.seed(es, data)
                except ApiError as e:
                    return self.send(e.status, [("Content-Type", JSON_CT)],
                                     e.body())
                return self.send_json(200, {"inserted": n})
            if m == "DELETE":
                return self.send_json(200, {"deleted": emu.clear_set(es)})
        if p == "bulk-list" and m == "POST":
            try:
                return self.send_json(200, emu.bulk_list(data))
            except ApiError as e:
                return self.send(e.status, [("Content-Type", JSON_CT)],
                                 e.body())
            except (KeyError, TypeError, ValueError) as e:
                return self.send_json(400, {"error": "bad bulk-list: %r" % e})
        if p.startswith("optionsets/") and m in ("POST", "GET"):
            es = p[len("optionsets/"):]
            try:
                with emu.lock:
                    if m == "POST":
                        out = add_optionsets(es, data)
                    else:
                        out = dict(BUILTIN_OPTIONSETS.get(es, {}),
                                   **OPTIONSETS.get(es, {}))
            except ApiError as e:
                return self.send(e.status, [("Content-Type", JSON_CT)],
                                 e.body())
            return self.send_json(200, out)
        if p.startswith("columns/") and m == "POST":
            try:
                cols = emu.add_columns(p[len("columns/"):], data)
            except ApiError as e:
                return self.send(e.status, [("Content-Type", JSON_CT)],
                                 e.body())
            return self.send_json(200, {"columns": cols})
        if p == "ping":
            return self.send_json(200, {"ok": True, "port": emu.port})
        return self.send_json(404, {"error": "unknown admin endpoint %s %s"
                                             % (m, path)})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def main(argv=None):
    ap = argparse.ArgumentParser(description="Dataverse Web API emulator")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--tenant", default=DEFAULT_TENANT)
    ap.add_argument("--client-id")
    ap.add_argument("--client-secret")
    ap.add_argument("--client", action="append", default=[],
                    metavar="ID:SECRET", help="accepted client (repeatable)")
    ap.add_argument("--token-ttl", type=float, default=3599)
    ap.add_argument("--seed")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--requests-per-window", type=int, default=0)
    ap.add_argument("--window-s", type=float, default=300)
    ap.add_argument("--max-concurrent", type=int, default=0)
    ap.add_argument("--retry-after-s", type=int, default=0)
    ap.add_argument("--tls-cert", help="serve HTTPS with this PEM cert")
    ap.add_argument("--tls-key", help="PEM private key for --tls-cert")
    ap.add_argument("--custom-trigger", action="append", default=[],
                    metavar="NAME[:ATTR,ATTR...]",
                    help="register a custom trigger msdynmkt_<name> with its "
                         "custom attributes (repeatable); once any is "
                         "registered, other msdynmkt_* actions get 404")
    args = ap.parse_args(argv)

    clients = {}
    for c in args.client:
        cid, sep, sec = c.partition(":")
        if not sep or not cid:
            ap.error("--client expects ID:SECRET")
        clients[cid] = sec
    if args.client_id:
        clients[args.client_id] = args.client_secret or ""
    if not clients:
        clients[DEFAULT_CLIENT_ID] = DEFAULT_CLIENT_SECRET
    throttle = {}
    if args.requests_per_window:
        throttle["requests_per_window"] = args.requests_per_window
        throttle["window_s"] = args.window_s
    if args.max_concurrent:
        throttle["max_concurrent"] = args.max_concurrent
    if args.retry_after_s:
        throttle["retry_after_s"] = args.retry_after_s

    triggers = {}
    for t in args.custom_trigger:
        name, _, attrs = t.partition(":")
        if not name.startswith("msdynmkt_") or len(name) <= 9:
            ap.error("--custom-trigger expects msdynmkt_<name>[:attr,...]")
        triggers[name] = frozenset(a for a in attrs.split(",") if a) - \
            set(TRIGGER_PARAMS)
    emu = Emulator(args.tenant, clients, args.token_ttl, throttle, args.quiet,
                   triggers)
    if args.seed:
        with open(args.seed, encoding="utf-8") as f:
            seed = json.load(f)
        for es, cols in (seed.pop("_columns", None) or {}).items():
            emu.add_columns(es, cols)
        for es, cfg in (seed.pop("_optionsets", None) or {}).items():
            add_optionsets(es, cfg)
        for es, recs in seed.items():
            emu.seed(es, recs)
    Handler.emu = emu
    srv = Server(("127.0.0.1", args.port), Handler)
    emu.port = srv.server_address[1]
    scheme = "http"
    if args.tls_cert:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        scheme = "https"
    emu.base = "%s://127.0.0.1:%d" % (scheme, emu.port)
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % emu.port)
        os.replace(tmp, args.port_file)
    if not args.quiet:
        sys.stderr.write("dataverse-emulator: listening on %s (tenant %s)\n"
                         % (emu.base, emu.tenant))

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
