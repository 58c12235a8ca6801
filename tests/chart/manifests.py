#!/usr/bin/env python3
"""Checks on the chart's rendered manifests that a schema validator cannot make.

usage: manifests.py RENDERED.yaml --release-namespace NS [--watch-namespaces a,b]

- YAML: no duplicate keys (YAML parsers silently keep the last one, so a template bug would go unnoticed).
- Pods: every container of every Deployment runs hardened (non-root, read-only root filesystem, no privilege
  escalation, all capabilities dropped, RuntimeDefault seccomp), with a memory limit, liveness and readiness
  probes on /healthz and /readyz (or readiness on /healthz after a startupProbe on /readyz: the fact store,
  which stays in its Service during a database outage to answer 503 JSON), and the database URL only through a
  secretKeyRef.
- Nothing renders a Secret: the chart never holds credentials.
- RBAC: the controller's ServiceAccount is bound to exactly the rules of docs/controller-rbac.yaml (the role the
  controller's end-to-end tests run under), as a ClusterRole
  when no namespaces are watched and as a Role in each watched namespace (then nothing cluster-wide); leader
  election is a Role in the release namespace.
Prints what it checked; exits 1 with the list of problems otherwise.
"""

import argparse
import sys
from pathlib import Path

import yaml

# The role the controller's end-to-end tests run under: the chart must grant exactly these rules.
CONTROLLER_RBAC = Path(__file__).resolve().parents[2] / "docs/controller-rbac.yaml"


def documented_rules():
    """(reconcile rules, leader-election rules) of docs/controller-rbac.yaml."""
    role = yaml.safe_load(CONTROLLER_RBAC.read_text())
    rules = flatten(role["rules"])
    # Leases and the declared account lists (ConfigMaps) are granted in the release namespace only.
    # (The admission parameters, ConfigMaps it creates and patches, are in every organization's namespace.)
    leases = {r for r in rules if r[1] == "leases" or (r[1] == "configmaps" and r[2] in ("get", "list", "watch"))}
    return rules - leases, leases


class UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def flatten(rules):
    out = set()
    for rule in rules or []:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    out.add((group, resource, verb))
        if rule.get("resourceNames") or rule.get("nonResourceURLs"):
            out.add(("?", "unexpected resourceNames/nonResourceURLs", "?"))
    return out


def describe(rules):
    return ", ".join(f"{g or 'core'}/{r}:{v}" for g, r, v in sorted(rules)) or "nothing"


def check_container(where, c, problems):
    sc = c.get("securityContext") or {}
    expected = {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
    }
    for key, value in expected.items():
        if sc.get(key) is not value:
            problems.append(f"{where}: securityContext.{key} should be {value}")
    if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
        problems.append(f"{where}: capabilities must drop ALL")
    if (sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: seccompProfile must be RuntimeDefault")
    if not ((c.get("resources") or {}).get("limits") or {}).get("memory"):
        problems.append(f"{where}: no memory limit")
    def path_of(probe):
        return ((c.get(probe) or {}).get("httpGet") or {}).get("path")

    if path_of("livenessProbe") != "/healthz":
        problems.append(f"{where}: livenessProbe should GET /healthz")
    # Readiness on /readyz, or (a container that answers 503 JSON itself while its dependency is down) a
    # startupProbe on /readyz and readiness on /healthz, so that an outage does not empty the Service.
    if (path_of("readinessProbe"), path_of("startupProbe")) not in (("/readyz", None), ("/healthz", "/readyz")):
        problems.append(f"{where}: readinessProbe should GET /readyz (or /healthz after a startupProbe on /readyz)")
    for env in c.get("env", []):
        if env["name"] == "ORGKEEPER_DATABASE_URL" and "secretKeyRef" not in (env.get("valueFrom") or {}):
            problems.append(f"{where}: ORGKEEPER_DATABASE_URL must come from a secretKeyRef")
    if not any(e["name"] == "ORGKEEPER_DATABASE_URL" for e in c.get("env", [])):
        problems.append(f"{where}: no ORGKEEPER_DATABASE_URL")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("rendered")
    parser.add_argument("--release-namespace", required=True)
    parser.add_argument("--watch-namespaces", default="")
    args = parser.parse_args()
    watched = [n for n in args.watch_namespaces.split(",") if n]
    problems = []
    try:
        docs = [d for d in yaml.load_all(open(args.rendered), Loader=UniqueKeyLoader) if d]
    except yaml.YAMLError as e:
        print(f"FAIL: {e}")
        return 1

    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    print("rendered:", ", ".join(f"{len(v)} {k}" for k, v in sorted(by_kind.items())))

    if "Secret" in by_kind:
        problems.append("the chart renders a Secret; credentials must come from existing Secrets")

    for dep in by_kind.get("Deployment", []):
        pod = dep["spec"]["template"]["spec"]
        psc = pod.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True or (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"Deployment {dep['metadata']['name']}: pod must run as non-root with RuntimeDefault seccomp")
        for c in pod["containers"] + pod.get("initContainers", []):
            check_container(f"Deployment {dep['metadata']['name']} container {c['name']}", c, problems)

    # RBAC: which rules reach the controller's ServiceAccount, and where.
    controller = [d for d in by_kind.get("Deployment", []) if d["metadata"]["labels"].get("app.kubernetes.io/component") == "controller"]
    if len(controller) != 1:
        problems.append(f"expected one controller Deployment, found {len(controller)}")
        print("\n".join(f"FAIL: {p}" for p in problems))
        return 1
    sa = controller[0]["spec"]["template"]["spec"]["serviceAccountName"]
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): flatten(d.get("rules"))
             for d in by_kind.get("ClusterRole", []) + by_kind.get("Role", [])}
    granted = {}  # namespace (None = cluster-wide) -> rules
    for binding in by_kind.get("ClusterRoleBinding", []) + by_kind.get("RoleBinding", []):
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == sa
                   and s.get("namespace") == args.release_namespace for s in binding.get("subjects", [])):
            continue
        ref = binding["roleRef"]
        ns = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        key = (ref["kind"], ns if ref["kind"] == "Role" else None, ref["name"])
        if key not in roles:
            problems.append(f"{binding['kind']} {binding['metadata']['name']} refers to a missing {ref['kind']} {ref['name']}")
            continue
        granted.setdefault(ns, set()).update(roles[key])

    needed, leader_election_rules = documented_rules()
    expected = {}
    if watched:
        for ns in watched:
            expected[ns] = set(needed)
    else:
        expected[None] = set(needed)
    expected.setdefault(args.release_namespace, set()).update(leader_election_rules)
    for ns in sorted(set(expected) | set(granted), key=lambda n: n or ""):
        where = "cluster-wide" if ns is None else f"in namespace {ns}"
        got, want = granted.get(ns, set()), expected.get(ns, set())
        if got != want:
            problems.append(f"controller rights {where}: extra [{describe(got - want)}], missing [{describe(want - got)}]")
        else:
            print(f"controller rights {where}: {len(got)} rules, as expected")

    # Aggregated roles for people must never be bound to the controller.
    for d in by_kind.get("ClusterRole", []):
        if any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in d["metadata"].get("labels", {})):
            if ("ClusterRole", None, d["metadata"]["name"]) in {(b["roleRef"]["kind"], None, b["roleRef"]["name"]) for b in by_kind.get("ClusterRoleBinding", []) + by_kind.get("RoleBinding", [])}:
                problems.append(f"aggregated ClusterRole {d['metadata']['name']} is bound")

    for p in problems:
        print(f"FAIL: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
