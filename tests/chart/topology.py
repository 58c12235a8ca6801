#!/usr/bin/env python3
"""Checks the data-plane topology of a rendered chart: the limits cannot be skipped by calling the fact store.

usage: topology.py RENDERED.yaml --release-namespace NS [--exposed-facts-from NAMESPACE]
       topology.py --app examples/app/backend.yaml

Without --exposed-facts-from (the default values):
- the fact store listens on the pod's loopback (ORGKEEPER_LISTEN=127.0.0.1:PORT), declares no container port, and
  the data plane's Service has no port that leads to it;
- NetworkPolicies select the controller and the data plane; only the sidecar's port admits any pod; every other
  port (metrics) admits only named peers, and no peer is selected by a pod label alone (anyone who can create a
  pod can set one);
- the controller writes the data plane's Service URL into new keys' Secrets (ORGKEEPER_OSO_URL), and that URL
  resolves to the Service's sidecar port.
With --exposed-facts-from NS (exposeFacts=true): the fact store gets a Service port, and its NetworkPolicy rule
admits exactly the namespace NS.

--app FILE: an application manifest needs no store credentials: no ORGKEEPER_DATABASE_URL, no reference to the
database Secret, no orgkeeper container; it reads OSO_URL and OSO_AUTH from its key's Secret with envFrom.
Prints what it checked; exits 1 with the list of problems otherwise.
"""

import argparse
import sys

import yaml


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def component(doc):
    return doc["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def only_pod_labels(peer):
    """A peer that any pod creator could join: a podSelector without a namespace by name, or no namespace at all."""
    if "ipBlock" in peer:
        return False
    ns = peer.get("namespaceSelector")
    if ns is None:
        return False  # same namespace as the policy: only pods of the release namespace
    named = any(e.get("key") == "kubernetes.io/metadata.name" for e in ns.get("matchExpressions", []))
    named = named or "kubernetes.io/metadata.name" in ns.get("matchLabels", {})
    return not named and "podSelector" in peer


def check_chart(docs, namespace, exposed_from, problems, say):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    deployments = {component(d): d for d in by_kind.get("Deployment", [])}
    plane = deployments.get("data-plane")
    if plane is None:
        problems.append("no data-plane Deployment (dataPlane.enabled should default to true)")
        return
    pod = plane["spec"]["template"]
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    facts, sidecar = containers.get("facts"), containers.get("sidecar")
    if facts is None or sidecar is None:
        problems.append(f"data-plane containers are {sorted(containers)}, expected sidecar and facts")
        return
    facts_listen = env_of(facts)["ORGKEEPER_LISTEN"]["value"]
    facts_port = int(facts_listen.rsplit(":", 1)[1])
    upstream = env_of(sidecar)["ORGKEEPER_UPSTREAM"]["value"]
    if upstream != f"http://127.0.0.1:{facts_port}":
        problems.append(f"the sidecar's upstream is {upstream}, not the fact store on loopback")
    if "orgkeeper.dev/sidecar" in pod["metadata"].get("labels", {}):
        problems.append("the data-plane pod carries the label orgkeeper.dev/sidecar, which any pod can copy")

    services = {component(s): s for s in by_kind.get("Service", [])}
    plane_service = services.get("data-plane")
    service_ports = {p["name"]: p for p in plane_service["spec"]["ports"]}
    to_facts = [p for p in service_ports.values() if p["targetPort"] == "facts" or p["targetPort"] == facts_port]
    facts_container_ports = [p for p in facts.get("ports", []) if p["containerPort"] == facts_port]

    policies = {component(p): p for p in by_kind.get("NetworkPolicy", [])}
    for part in ("controller", "data-plane"):
        if part not in policies:
            problems.append(f"no NetworkPolicy for the {part} (networkPolicy.enabled should default to true)")
    if problems:
        return
    sidecar_port = int(env_of(sidecar)["ORGKEEPER_LISTEN"]["value"].rsplit(":", 1)[1])
    facts_rules = []
    for part, policy in policies.items():
        for rule in policy["spec"].get("ingress", []):
            ports = {int(p["port"]) for p in rule.get("ports", [])}
            peers = rule.get("from")
            if part == "data-plane" and facts_port in ports:
                facts_rules.append(rule)
                continue
            if part == "data-plane" and ports == {sidecar_port}:
                continue  # the front door: the sidecar authenticates and limits every request
            if not peers:
                problems.append(f"NetworkPolicy {part}: ports {sorted(ports)} admit every pod")
            for peer in peers or []:
                if only_pod_labels(peer):
                    problems.append(f"NetworkPolicy {part}: ports {sorted(ports)} admit pods picked by labels, not by namespace name: {peer}")
    say(f"NetworkPolicies select the controller and the data plane; only the sidecar's port {sidecar_port} is open to any pod")

    if exposed_from is None:
        if not facts_listen.startswith("127.0.0.1:"):
            problems.append(f"the fact store listens on {facts_listen}, not on loopback")
        if to_facts or facts_container_ports:
            problems.append(f"the fact store's port {facts_port} is exposed: Service ports {to_facts}, container ports {facts_container_ports}")
        if facts_rules:
            problems.append(f"NetworkPolicy admits callers to the fact store's port {facts_port}: {facts_rules}")
        say(f"the fact store listens on {facts_listen}: no Service port, no container port, no NetworkPolicy rule")
    else:
        if not to_facts:
            problems.append("exposeFacts=true but the Service has no port for the fact store")
        wanted = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": exposed_from}}}]
        if [r.get("from") for r in facts_rules] != [wanted]:
            problems.append(f"the fact store's NetworkPolicy rules are {facts_rules}, expected only {wanted}")
        say(f"exposed fact store: a Service port, admitted only from namespace {exposed_from}")

    controller = deployments["controller"]["spec"]["template"]["spec"]["containers"][0]
    oso_url = env_of(controller)["ORGKEEPER_OSO_URL"]["value"]
    expected = f"http://{plane_service['metadata']['name']}.{namespace}.svc:{service_ports['http']['port']}"
    if oso_url != expected:
        problems.append(f"new keys' OSO_URL is {oso_url}, expected the data plane's Service {expected}")
    if service_ports["http"]["targetPort"] != "http" or sidecar_port != next(
            p["containerPort"] for p in sidecar["ports"] if p["name"] == "http"):
        problems.append("the data plane Service's http port does not lead to the sidecar")
    say(f"new keys' Secrets carry OSO_URL={oso_url}, the sidecar behind the data plane's Service")


def check_app(path, problems, say):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"):
            continue
        spec = doc["spec"]["template"]["spec"] if doc["kind"] != "Pod" else doc["spec"]
        where = f"{doc['kind']} {doc['metadata']['name']}"
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            if "orgkeeper" in c.get("image", "").split("/")[-1]:
                problems.append(f"{where}: runs an orgkeeper container ({c['name']}); apps use the data plane's Service")
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef") or {}
                if e["name"] == "ORGKEEPER_DATABASE_URL" or ref.get("name") == "orgkeeper-database":
                    problems.append(f"{where} container {c['name']}: holds the store's credentials ({e['name']})")
            for source in c.get("envFrom", []):
                if (source.get("secretRef") or {}).get("name") == "orgkeeper-database":
                    problems.append(f"{where} container {c['name']}: envFrom the database Secret")
        for volume in spec.get("volumes", []):
            if (volume.get("secret") or {}).get("secretName") == "orgkeeper-database":
                problems.append(f"{where}: mounts the database Secret")
        key_secrets = [s["secretRef"]["name"] for c in spec.get("containers", []) for s in c.get("envFrom", [])
                       if "secretRef" in s]
        if not key_secrets:
            problems.append(f"{where}: reads no key Secret with envFrom")
        say(f"{where}: no store credentials, no orgkeeper container; OSO_URL and OSO_AUTH from Secret(s) {key_secrets}")


def main():
    problems = []

    def say(line, before=[0]):
        """Prints what was checked, unless that step found a problem."""
        if len(problems) == before[0]:
            print(line)
        before[0] = len(problems)

    parser = argparse.ArgumentParser()
    parser.add_argument("rendered", nargs="?")
    parser.add_argument("--release-namespace")
    parser.add_argument("--exposed-facts-from")
    parser.add_argument("--app")
    args = parser.parse_args()
    if args.app:
        check_app(args.app, problems, say)
    else:
        docs = [d for d in yaml.safe_load_all(open(args.rendered)) if d]
        check_chart(docs, args.release_namespace, args.exposed_facts_from, problems, say)
    for p in problems:
        print(f"FAIL: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
