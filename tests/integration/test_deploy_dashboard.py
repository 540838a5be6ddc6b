#!/usr/bin/env python3
"""The Grafana dashboard (deploy/base/monitoring/grafana/crmsync-dashboard.json)
and the alert rules (deploy/base/monitoring/prometheusrule.yaml) only query
metrics the workers export.

- Dashboard structure: unique panel ids, grid positions inside 24 columns
  without overlaps, every non-row panel has a title, a description, the
  ${datasource} Prometheus data source and at least one PromQL target; the
  template variables datasource/namespace/worker exist; the panels the
  operators need are there (lag per group/partition, lag seconds,
  throughput per worker, dead letters, CRM latency and 429s, Redis, trigger
  firing lag, rebalances).
- Every metric name in every PromQL expression of the dashboard and of the
  rules is a string literal in the C sources (common/, workers/, tools/;
  histogram names also with _bucket/_sum/_count) or Prometheus' own `up`.
- Every dashboard query parses as PromQL: the queries (Grafana variables
  replaced by sample values) go into a rule file that `promtool check
  rules` must accept (skipped without promtool).
- Every alert has a `runbook` annotation pointing at its own section
  (`### <AlertName>`) of deploy/README.md, and a row in its alert table.
- The extractor itself is checked on expressions with known names, and an
  unknown metric must be reported: the test can fail.
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

SRC = os.environ.get("CRMSYNC_SOURCE_DIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DASHBOARD = os.path.join(SRC, "deploy", "base", "monitoring", "grafana",
                         "crmsync-dashboard.json")
RULES = os.path.join(SRC, "deploy", "base", "monitoring",
                     "prometheusrule.yaml")
BUILTIN = {"up"}

FUNCS_AND_KEYWORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk",
    "bottomk", "quantile", "count_values", "group", "by", "without", "on",
    "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool", "inf", "nan", "atan2",
}


def source_names():
    names = set()
    for d in ("common", "workers", "tools"):
        for path in glob.glob(os.path.join(SRC, d, "**", "*.[ch]"),
                              recursive=True):
            names |= set(re.findall(r'"(crmsync_[a-z0-9_]+)', open(
                path, errors="replace").read()))
    return names


def metric_names(expr):
    """Metric names used by a PromQL expression."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)       # strings
    e = re.sub(r"\{[^}]*\}", "", e)                     # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                    # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",
               r" \1 ", e)                              # label lists
    e = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", e)       # offset 10m
    names = set()
    for m in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in FUNCS_AND_KEYWORDS:
            continue
        names.add(word)
    return names


def unknown(names, known):
    bad = set()
    for n in names:
        base = re.sub(r"_(bucket|sum|count)$", "", n)
        if n in known or base in known:
            continue
        bad.add(n)
    return bad


def self_check(known):
    errs = []
    cases = {
        'sum by (worker, topic) (crmsync_consumer_lag{namespace="$namespace", worker=~"$worker"})':
            {"crmsync_consumer_lag"},
        'histogram_quantile(0.99, sum by (namespace, le) (rate(crmsync_trigger_firing_lag_seconds_bucket[10m]))) > 10':
            {"crmsync_trigger_firing_lag_seconds_bucket"},
        'crmsync_consumer_lag > 0 and on (pod, topic) changes(crmsync_consumer_committed_offset[10m]) == 0 and on (pod) crmsync_consumer_committed_offset offset 10m':
            {"crmsync_consumer_lag", "crmsync_consumer_committed_offset"},
        'count by (job) (up{job=~"crmsync-.*"} offset 1h) unless count by (job) (up)':
            {"up"},
        'sum(rate(crmsync_messages_processed_total[$__rate_interval])) / sum(rate(crmsync_nosuch_total[5m]))':
            {"crmsync_messages_processed_total", "crmsync_nosuch_total"},
    }
    for expr, want in cases.items():
        got = metric_names(expr)
        if got != want:
            errs.append("extractor: %r -> %s, expected %s" % (expr, got, want))
    if unknown({"crmsync_nosuch_total"}, known) != {"crmsync_nosuch_total"}:
        errs.append("an unknown metric was not reported")
    if unknown({"crmsync_crm_request_duration_seconds_bucket"}, known):
        errs.append("a histogram bucket of a known metric was reported")
    return errs


def check_dashboard(d):
    errs = []
    for key in ("uid", "title", "panels", "templating", "schemaVersion"):
        if key not in d:
            errs.append("dashboard lacks %s" % key)
    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    for v in ("datasource", "namespace", "worker"):
        if v not in variables:
            errs.append("template variable $%s missing" % v)
    if variables.get("datasource", {}).get("query") != "prometheus":
        errs.append("$datasource is not a Prometheus data source variable")
    ids, cells, exprs = set(), {}, []
    for p in d.get("panels", []):
        pid = p.get("id")
        if pid in ids:
            errs.append("duplicate panel id %s" % pid)
        ids.add(pid)
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in "hwxy") or \
                g["x"] + g["w"] > 24 or g["w"] <= 0 or g["h"] <= 0:
            errs.append("panel %s: bad gridPos %s" % (pid, g))
            continue
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    errs.append("panel %s overlaps panel %s" % (pid,
                                                                cells[(x, y)]))
                    break
                cells[(x, y)] = pid
            else:
                continue
            break
        if p.get("type") == "row":
            continue
        if not p.get("title") or not p.get("description"):
            errs.append("panel %s lacks a title or description" % pid)
        if p.get("datasource", {}).get("uid") != "${datasource}":
            errs.append("panel %s: data source is not ${datasource}" % pid)
        if not p.get("targets"):
            errs.append("panel %s (%s) has no targets" % (pid, p.get("title")))
        for t in p.get("targets", []):
            if not t.get("expr"):
                errs.append("panel %s: target without expr" % pid)
                continue
            if t.get("expr").count("(") != t.get("expr").count(")"):
                errs.append("panel %s: unbalanced parentheses" % pid)
            exprs.append((p.get("title"), t["expr"]))
    # What the operators need (issue 6), by metric and shape.
    need = {
        "lag per group/partition":
            lambda e: "crmsync_consumer_lag{" in e and "partition" in e,
        "lag in seconds": lambda e: "crmsync_consumer_lag_seconds" in e,
        "throughput per worker":
            lambda e: "crmsync_messages_processed_total" in e and "worker" in e,
        "dead letters": lambda e: "crmsync_messages_deadlettered_total" in e,
        "CRM latency":
            lambda e: "crmsync_crm_request_duration_seconds_bucket" in e and
            "histogram_quantile" in e,
        "CRM 429s": lambda e: "crmsync_crm_throttled_total" in e,
        "Redis": lambda e: "crmsync_redis_round_trips_total" in e,
        "trigger firing lag":
            lambda e: "crmsync_trigger_firing_lag_seconds_bucket" in e,
        "trigger actions": lambda e: "crmsync_trigger_actions_total" in e,
        "rebalances": lambda e: "crmsync_kafka_rebalances_total" in e,
    }
    for what, pred in need.items():
        if not any(pred(e) for _, e in exprs):
            errs.append("no panel shows %s" % what)
    return errs, exprs


def promql_syntax(exprs):
    """promtool check rules on the queries as recording rules; returns the
    problems (None when promtool is missing)."""
    if shutil.which("promtool") is None:
        return None
    rules = []
    for i, (_, e) in enumerate(exprs):
        e = e.replace("$__rate_interval", "5m").replace(
            "$namespace", "crmsync").replace("$worker", ".*")
        rules.append({"record": "crmsync:dashboard_query_%d" % i, "expr": e})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
    r = subprocess.run(["promtool", "check", "rules", f.name],
                       capture_output=True, text=True, timeout=60)
    os.unlink(f.name)
    return [] if r.returncode == 0 else [r.stdout + r.stderr]


def main():
    known = source_names() | BUILTIN
    failed = 0
    errs = self_check(known)
    for e in errs:
        print("FAIL", e)
    print("%s PromQL metric extractor self-check" % ("FAIL" if errs else
                                                      "PASS"))
    failed += bool(errs)

    dash = json.load(open(DASHBOARD))
    errs, exprs = check_dashboard(dash)
    for e in errs:
        print("FAIL", e)
    print("%s dashboard structure (%d panels, %d queries)" % (
        "FAIL" if errs else "PASS", len(dash.get("panels", [])), len(exprs)))
    failed += bool(errs)
    # A dashboard with a panel removed must fail the structure check.
    broken = dict(dash, panels=[p for p in dash["panels"] if not any(
        "crmsync_kafka_rebalances_total" in t.get("expr", "")
        for t in p.get("targets", []))])
    if not any("rebalances" in e for e in check_dashboard(broken)[0]):
        print("FAIL dashboard without the rebalance panel passed")
        failed += 1

    errs = promql_syntax(exprs)
    if errs is None:
        print("SKIP PromQL syntax of the dashboard (promtool not installed)")
    else:
        for e in errs:
            print("FAIL", e)
        print("%s dashboard queries parse (promtool)" % ("FAIL" if errs
                                                         else "PASS"))
        failed += bool(errs)
        if not promql_syntax([("broken", "sum by (worker) (rate(x[5m])")]):
            print("FAIL promtool accepted a broken query")
            failed += 1

    bad_total = 0
    for title, e in exprs:
        bad = unknown(metric_names(e), known)
        for b in sorted(bad):
            print("FAIL dashboard panel %r uses unknown metric %s" % (title, b))
        bad_total += len(bad)
    rule_exprs = []
    for g in yaml.safe_load(open(RULES))["spec"]["groups"]:
        for r in g["rules"]:
            rule_exprs.append((r.get("alert") or r.get("record"), r["expr"]))
    for name, e in rule_exprs:
        bad = unknown(metric_names(e), known)
        for b in sorted(bad):
            print("FAIL alert %s uses unknown metric %s" % (name, b))
        bad_total += len(bad)
    readme = open(os.path.join(SRC, "deploy", "README.md")).read()
    doc_errs = []
    for g in yaml.safe_load(open(RULES))["spec"]["groups"]:
        for r in g["rules"]:
            name = r.get("alert")
            if not name:
                continue
            want = "deploy/README.md#" + name.lower()
            if r.get("annotations", {}).get("runbook") != want:
                doc_errs.append("alert %s: runbook annotation is not %s"
                                % (name, want))
            if not re.search(r"^### %s$" % name, readme, re.M):
                doc_errs.append("alert %s: no '### %s' runbook section in "
                                "deploy/README.md" % (name, name))
            if "[%s](#%s)" % (name, name.lower()) not in readme:
                doc_errs.append("alert %s: not in the README's alert table"
                                % name)
    for e in doc_errs:
        print("FAIL", e)
    print("%s runbook section per alert" % ("FAIL" if doc_errs else "PASS"))
    failed += bool(doc_errs)

    used = set()
    for _, e in exprs + rule_exprs:
        used |= metric_names(e)
    print("%s metric names: %d distinct in %d dashboard queries and %d rules"
          % ("FAIL" if bad_total else "PASS", len(used), len(exprs),
             len(rule_exprs)))
    failed += bool(bad_total)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
