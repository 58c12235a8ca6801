#!/usr/bin/env python3
"""Runs the Argo CD health checks and the Flux healthCheckExprs of every orgkeeper kind on the same test cases.

Test cases use Argo CD's resource_customizations format: tests/chart/argocd-health/orgkeeper.dev/<Kind>/
health_test.yaml lists `inputPath` (a resource in testdata/) and the expected `healthStatus` (status, message).

- Argo CD: each kind's script, rendered from examples/argocd/health.lua.tmpl (one source for the four kinds; Argo
  CD needs a standalone script per kind), runs with the resource as the global `obj`, as Argo CD does, in Lua 5.1 (Argo CD's gopher-lua implements 5.1) and in Lua 5.4 (lupa), with
  only the libraries Argo CD's sandbox offers. Status and message must match exactly.
- Flux: the healthCheckExprs of examples/flux/acme-tenancy.yaml are evaluated with cel-python following the
  kustomize-controller's order (observedGeneration, then inProgress, failed, current, else in progress); the
  result must be the kstatus equivalent of the expected Argo CD status (Healthy=Current, Degraded=Failed,
  Progressing=InProgress). Flux waits when an expression cannot be evaluated, which happens only while a
  resource has no status at all, so that counts as InProgress for such a resource.
- Every test resource must be valid against the CRD (crds/orgkeeper.dev.yaml), so the cases stay true to the
  status the controller can write.
- examples/argocd/argocd-cm.yaml, what users apply, must carry exactly the scripts rendered from the template: a
  copy that drifts fails; `--write` regenerates it.

With --live FILE, evaluates real objects (a `kubectl get -o json` List) instead: all must be healthy.

Prints failures (every case with -v) and ends with "N passed, N failed"; exits 1 on any failure.
"""

import json
import sys
from pathlib import Path

import celpy
import jsonschema
import lupa.lua51
import lupa.lua54
import yaml

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "tests/chart/argocd-health/orgkeeper.dev"
TEMPLATE = ROOT / "examples/argocd/health.lua.tmpl"
ARGOCD_CM = ROOT / "examples/argocd/argocd-cm.yaml"
FLUX = ROOT / "examples/flux/acme-tenancy.yaml"
CRDS = ROOT / "crds/orgkeeper.dev.yaml"
KINDS = ["Organization", "Environment", "User", "ApiKey"]
KSTATUS = {"Healthy": "Current", "Degraded": "Failed", "Progressing": "InProgress"}
# Argo CD's Lua sandbox: base functions without loading or file access, plus string, table and math.
VERBOSE = "-v" in sys.argv[1:]
UNSAFE_GLOBALS = ["os", "io", "require", "dofile", "loadfile", "load", "loadstring", "package", "debug"]


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            if VERBOSE:
                print(f"--- PASS: {name}")
        else:
            self.failed += 1
            print(f"--- FAIL: {name}: {detail}")


def as_json(obj):
    """What Argo CD and Flux see: the object as JSON (YAML timestamps stay strings)."""
    return json.loads(json.dumps(obj, default=str))


def to_lua(runtime, value):
    if isinstance(value, dict):
        return runtime.table_from({k: to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([to_lua(runtime, v) for v in value])
    return value


def run_lua(module, script, obj):
    runtime = module.LuaRuntime(unpack_returned_tuples=False, register_eval=False, register_builtins=False)
    lua_globals = runtime.globals()
    for name in UNSAFE_GLOBALS:
        lua_globals[name] = None
    lua_globals.obj = to_lua(runtime, obj)
    result = runtime.execute(script)
    if result is None:
        raise AssertionError("the script returned nothing")
    return result["status"], result["message"]


def flux_status(exprs, obj):
    observed = obj.get("status", {}).get("observedGeneration")
    generation = obj.get("metadata", {}).get("generation")
    if observed is not None and generation is not None and observed != generation:
        return "InProgress"
    env = celpy.Environment()
    activation = {key: celpy.json_to_cel(value) for key, value in obj.items()}
    for field, status in (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current")):
        if not exprs.get(field):
            continue
        value = env.program(env.compile(exprs[field])).evaluate(activation)
        if not isinstance(value, celpy.celtypes.BoolType):
            if "status" not in obj:
                return "InProgress"  # Flux waits while an expression cannot be evaluated
            raise AssertionError(f"{field} did not evaluate to a bool: {value!r}")
        if bool(value):
            return status
    return "InProgress"


def unknown_fields(schema, value, path=""):
    """Fields the API server would prune because the CRD schema does not declare them."""
    found = []
    if isinstance(value, dict) and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        for key, item in value.items():
            if path == "" and key == "metadata":
                continue  # ObjectMeta: the API server's, whatever the CRD's schema says about metadata.name
            if key in schema["properties"]:
                found += unknown_fields(schema["properties"][key], item, f"{path}.{key}")
            elif "additionalProperties" not in schema and not (path == "" and key in ("apiVersion", "kind", "metadata")):
                found.append(f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += unknown_fields(schema["items"], item, f"{path}[{index}]")
    return found


def crd_schemas():
    schemas = {}
    for doc in yaml.safe_load_all(CRDS.read_text()):
        if doc:
            schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            schemas[doc["spec"]["names"]["kind"]] = schema
    return schemas


def health_script(kind):
    """The standalone Argo CD script of one kind, rendered from the shared template."""
    template = TEMPLATE.read_text()
    if "@KIND@" not in template:
        raise AssertionError(f"{TEMPLATE.relative_to(ROOT)} has no @KIND@ placeholder")
    return template.replace("@KIND@", kind)


def argocd_cm_text():
    header = (
        "# Generated by tests/chart/health_test.py --write from examples/argocd/health.lua.tmpl, one script per\n"
        "# kind. Do not edit: change the template and regenerate.\n"
        "# Merge into Argo CD's argocd-cm ConfigMap (kubectl -n argocd patch configmap argocd-cm --patch-file\n"
        "# examples/argocd/argocd-cm.yaml), or copy the keys into the argo-cd Helm chart's configs.cm.\n"
    )
    data = {
        f"resource.customizations.health.orgkeeper.dev_{kind}": health_script(kind) for kind in KINDS
    }
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "argocd-cm", "namespace": "argocd"}}

    class Literal(str):
        pass

    def literal(dumper, value):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")

    yaml.add_representer(Literal, literal)
    body["data"] = {key: Literal(value) for key, value in data.items()}
    return header + yaml.dump(body, sort_keys=False, width=120)


def live(path):
    """Health of real objects (a `kubectl get -o json` List): every one must be Healthy and Current."""
    flux = {e["kind"]: e for e in yaml.safe_load(FLUX.read_text())["spec"]["healthCheckExprs"]}
    items = json.loads(Path(path).read_text())["items"]
    unhealthy = 0
    for obj in items:
        kind = obj["kind"]
        argo = run_lua(lupa.lua51, health_script(kind), obj)
        flux_result = flux_status(flux[kind], obj)
        ok = argo[0] == "Healthy" and flux_result == "Current"
        unhealthy += 0 if ok else 1
        name = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        print(f"{'ok ' if ok else 'NOT'} {kind} {name}: Argo CD {argo[0]} ({argo[1]}), Flux {flux_result}")
    return 1 if unhealthy or not items else 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--live":
        return live(sys.argv[2])
    if "--write" in sys.argv[1:]:
        ARGOCD_CM.write_text(argocd_cm_text())
        print(f"wrote {ARGOCD_CM.relative_to(ROOT)}")
        return 0
    results = Results()
    schemas = crd_schemas()
    flux = {
        entry["kind"]: entry
        for entry in yaml.safe_load(FLUX.read_text())["spec"]["healthCheckExprs"]
        if entry["apiVersion"] == "orgkeeper.dev/v1alpha1"
    }
    results.check("argocd-cm.yaml carries the scripts rendered from health.lua.tmpl",
                  ARGOCD_CM.exists() and ARGOCD_CM.read_text() == argocd_cm_text(),
                  "edit examples/argocd/health.lua.tmpl, then run tests/chart/health_test.py --write")
    for kind in KINDS:
        script = health_script(kind)
        cases = yaml.safe_load((CASES / kind / "health_test.yaml").read_text())["tests"]
        results.check(f"{kind}: has Flux healthCheckExprs", kind in flux, "missing in examples/flux/acme-tenancy.yaml")
        results.check(f"{kind}: has test cases", len(cases) >= 5, f"only {len(cases)}")
        for case in cases:
            path = CASES / kind / case["inputPath"]
            obj = as_json(yaml.safe_load(path.read_text()))
            want = case["healthStatus"]
            name = f"{kind} {case['inputPath']}"
            errors = [e.message for e in jsonschema.Draft7Validator(schemas[kind]).iter_errors(obj)]
            errors += [f"{field} is not in the CRD schema" for field in unknown_fields(schemas[kind], obj)]
            results.check(f"{name}: valid against the CRD", obj["kind"] == kind and not errors, "; ".join(errors))
            for label, module in (("lua5.1", lupa.lua51), ("lua5.4", lupa.lua54)):
                try:
                    got = run_lua(module, script, obj)
                except Exception as e:  # a script error is a failed case, not a crash of the runner
                    got = ("error", str(e))
                results.check(f"{name}: Argo CD ({label})", got == (want["status"], want["message"]),
                              f"want {want['status']} {want['message']!r}, got {got[0]} {got[1]!r}")
            if kind in flux:
                try:
                    got = flux_status(flux[kind], obj)
                except Exception as e:
                    got = f"error: {e}"
                results.check(f"{name}: Flux CEL", got == KSTATUS[want["status"]],
                              f"want {KSTATUS[want['status']]}, got {got}")
    print(f"health_test: {results.passed} cases passed, {results.failed} failed")
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
