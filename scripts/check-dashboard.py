#!/usr/bin/env python3
"""Checks a Grafana dashboard JSON: required keys, unique panel ids and positions, every variable
it uses defined, every panel with a Prometheus datasource, and every PromQL expression valid
(each is parsed by `promtool check rules` as the expr of a recording rule).

Usage: check-dashboard.py DASHBOARD.json PROMTOOL
"""
import json
import re
import subprocess
import sys
import tempfile

BUILTINS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}


def fail(msg):
    print(f"dashboard: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    path, promtool = sys.argv[1], sys.argv[2]
    with open(path) as f:
        d = json.load(f)
    for key in ["uid", "title", "panels", "templating", "schemaVersion", "time"]:
        if key not in d:
            fail(f"{path}: missing top-level key {key!r}")
    variables = {v["name"] for v in d["templating"]["list"]}
    if not any(v["type"] == "datasource" and v.get("query") == "prometheus" for v in d["templating"]["list"]):
        fail("no Prometheus datasource variable")
    ids, exprs = set(), []
    for p in d["panels"]:
        for key in ["id", "type", "title", "gridPos", "targets", "datasource"]:
            if key not in p:
                fail(f"panel {p.get('title')!r}: missing {key!r}")
        if p["id"] in ids:
            fail(f"panel id {p['id']} is used twice")
        ids.add(p["id"])
        if p["datasource"].get("type") != "prometheus":
            fail(f"panel {p['title']!r} does not use the Prometheus datasource")
        if not p["targets"]:
            fail(f"panel {p['title']!r} has no query")
        for t in p["targets"]:
            e = t.get("expr", "")
            if not e.strip():
                fail(f"panel {p['title']!r} target {t.get('refId')} has no expr")
            exprs.append((p["title"], e))
    text = json.dumps(d)
    for used in set(re.findall(r"\$\{?(\w+)", text)):
        if used not in variables and used not in BUILTINS:
            fail(f"variable ${used} is used but not defined")
    # Grafana substitutes variables before Prometheus sees the query: do the same.
    rules = {"groups": [{"name": "dashboard", "rules": []}]}
    for i, (title, e) in enumerate(exprs):
        e = e.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
        e = re.sub(r"\$\{?(\w+)\}?", ".*", e)
        rules["groups"][0]["rules"].append({"record": f"dashboard:expr_{i}", "expr": e})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        json.dump(rules, f)  # JSON is YAML
        name = f.name
    r = subprocess.run([promtool, "check", "rules", name], capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"PromQL does not parse:\n{r.stdout}{r.stderr}")
    print(f"dashboard {path}: {len(ids)} panels, {len(exprs)} expressions: OK")


main()
