#!/usr/bin/env python3
"""Checks the chart's Grafana dashboard and Prometheus alerts.

usage: monitoring.py chart RENDERED.yaml      the rendered PrometheusRule and dashboard ConfigMap carry exactly
                                              the chart's files; every dashboard query is valid PromQL
                                              (promtool check rules on them as recording rules)
       monitoring.py names METRICS...         every metric the dashboard and the alerts name is exported: the
                                              files are /metrics scrapes of the running controller, sidecar
                                              and fact store (OpenMetrics text). A labelled family shows up
                                              only once it has a sample (reconcile errors need a failure), so
                                              a name missing from the scrapes must at least be registered in
                                              src/*/metrics.rs, and is listed as such

Prints what it checked; exits 1 with the list of problems otherwise.
"""

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts/orgkeeper/dashboards/orgkeeper.json"
RULES = ROOT / "charts/orgkeeper/alerts/orgkeeper.rules.yaml"
METRIC = re.compile(r"\borgkeeper_[a-z0-9_]+\b")
# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$namespace": ".*", "$__rate_interval": "1m", "${datasource}": "prometheus"}


def dashboard_queries():
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries.append((panel["title"], target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries.append((f"variable {variable['name']}", variable["definition"]))
    return dashboard, queries


def alert_expressions():
    return [(rule["alert"], rule["expr"]) for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]


def check_chart(rendered, problems):
    docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    maps = [d for d in docs if d["kind"] == "ConfigMap" and "orgkeeper.json" in d.get("data", {})]
    if len(rules) != 1 or rules[0]["spec"] != yaml.safe_load(RULES.read_text()):
        problems.append(f"the rendered PrometheusRule is not {RULES.relative_to(ROOT)}")
    else:
        print(f"PrometheusRule carries {RULES.relative_to(ROOT)} ({len(alert_expressions())} alerts)")
    if len(maps) != 1 or json.loads(maps[0]["data"]["orgkeeper.json"]) != json.loads(DASHBOARD.read_text()):
        problems.append(f"the rendered dashboard ConfigMap does not carry {DASHBOARD.relative_to(ROOT)}")
    elif maps[0]["metadata"]["labels"].get("grafana_dashboard") != "1":
        problems.append("the dashboard ConfigMap lacks the Grafana sidecar's label grafana_dashboard=1")
    else:
        print("dashboard ConfigMap carries dashboards/orgkeeper.json, labelled grafana_dashboard=1")

    dashboard, queries = dashboard_queries()
    for panel in dashboard["panels"]:
        if panel["type"] != "row" and (panel.get("datasource") or {}).get("uid") != "${datasource}":
            problems.append(f"panel {panel['title']!r} does not use the dashboard's data source variable")
    ids = [p["id"] for p in dashboard["panels"]]
    if len(ids) != len(set(ids)):
        problems.append("panel ids repeat")
    # promtool parses every query: as recording rules they must be valid PromQL.
    recording = {"groups": [{"name": "dashboard", "rules": []}]}
    for index, (title, expr) in enumerate(queries):
        if title.startswith("variable "):
            continue  # label_values() is Grafana's, not PromQL
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        recording["groups"][0]["rules"].append({"record": f"dashboard:query_{index}", "expr": expr})
    with tempfile.NamedTemporaryFile("w", suffix=".rules.yaml") as f:
        yaml.safe_dump(recording, f)
        f.flush()
        check = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
    if check.returncode != 0:
        problems.append(f"promtool refuses a dashboard query: {check.stdout}{check.stderr}")
    else:
        print(f"promtool check rules: the dashboard's {len(recording['groups'][0]['rules'])} queries are valid PromQL")


def exported_names(scrapes):
    """Sample names a Prometheus scrape of these /metrics pages yields, from their # TYPE lines."""
    names = set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    for path in scrapes:
        for line in Path(path).read_text().splitlines():
            if line.startswith("# TYPE "):
                _, _, family, kind = line.split(" ", 3)
                names |= {family + suffix for suffix in suffixes.get(kind, [""])}
    return names


# The registries of the binaries: (metrics source, prefix of every name it registers).
SOURCES = [("src/controller/metrics.rs", "orgkeeper_controller_"), ("src/sidecar/metrics/mod.rs", "orgkeeper_"),
           ("src/facts/metrics.rs", "orgkeeper_")]
SAMPLE_SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def registered_families():
    families = set()
    for path, prefix in SOURCES:
        text = (ROOT / path).read_text()
        families |= {prefix + name for name in re.findall(r'register\(\s*"([a-z0-9_]+)"', text)}
    return families


def family_of(sample):
    for suffix in SAMPLE_SUFFIXES:
        if sample.endswith(suffix):
            return sample[: -len(suffix)]
    return sample


def check_names(scrapes, problems):
    exported = exported_names(scrapes)
    registered = registered_families()
    print(f"{len(exported)} sample names in the scrapes; {len(registered)} families registered in the sources")
    _, queries = dashboard_queries()
    for where, items in (("dashboard", queries), ("alert", alert_expressions())):
        used = {metric for _, expr in items for metric in METRIC.findall(expr)}
        missing = [(name, metric) for name, expr in items for metric in METRIC.findall(expr)
                   if metric not in exported and family_of(metric) not in registered]
        for name, metric in missing:
            problems.append(f"{where} {name!r} uses {metric}, which no binary exports")
        unscraped = sorted(m for m in used if m not in exported and family_of(m) in registered)
        if not missing:
            print(f"{where}: {len(items)} queries use {len(used)} metric names; all exported"
                  + (f" ({', '.join(unscraped)}: registered, no sample in this run)" if unscraped else ""))


def main():
    problems = []
    if len(sys.argv) == 3 and sys.argv[1] == "chart":
        check_chart(sys.argv[2], problems)
    elif len(sys.argv) >= 3 and sys.argv[1] == "names":
        check_names(sys.argv[2:], problems)
    else:
        print(__doc__)
        return 2
    for problem in problems:
        print(f"FAIL: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
