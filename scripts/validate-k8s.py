"""Validates deploy/kubernetes/*.yaml offline (run by scripts/validate-k8s.sh in its venv).

1. Every resource against the Kubernetes JSON schemas of the two most recent versions the
   pinned kubernetes-validate knows, strictly (unknown fields are errors, and so is a kind
   without a schema).
2. What schemas cannot see: selectors that match the pod labels, the preStop drain ending
   before the grace period, probes and ports on the API port of the embedded config.
3. The embedded turnpike.toml passes `turnpike check-config` (the binary given as argv[1]).
4. The checker itself: a manifest broken on purpose must fail the schema check.

Exit status 0 when everything holds; the failures are printed.
"""

import copy
import glob
import os
import re
import subprocess
import sys
import tempfile

import yaml
from kubernetes_validate import utils
from packaging.version import Version

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MANIFESTS = sorted(glob.glob(os.path.join(ROOT, "deploy", "kubernetes", "*.yaml")))

failures = []


def fail(message):
    failures.append(message)
    print("FAIL " + message)


def schema_errors(resource, version):
    """The schema validation error for one resource, or None."""
    try:
        utils.validate(resource, version, True)
    except utils.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        return "%s: %s" % (path, e.message)
    except (utils.SchemaNotFoundError, utils.InvalidSchemaError) as e:
        return e.message
    return None


def name(resource):
    return "%s/%s" % (resource.get("kind"), resource.get("metadata", {}).get("name"))


def main():
    turnpike = sys.argv[1]
    versions = sorted(set(utils.all_versions()), key=Version)[-2:]
    print("kubernetes-validate %s; Kubernetes %s" % (utils.__version__, " and ".join(versions)))

    resources = {}
    for path in MANIFESTS:
        with open(path) as f:
            for resource in yaml.safe_load_all(f):
                if not resource:
                    continue
                resources[name(resource)] = resource
                for version in versions:
                    error = schema_errors(resource, version)
                    if error:
                        fail("%s %s (Kubernetes %s): %s" % (os.path.basename(path), name(resource), version, error))
                    else:
                        print("ok   %s %s (Kubernetes %s)" % (os.path.basename(path), name(resource), version))

    ds = resources.get("DaemonSet/turnpike")
    secret = resources.get("Secret/turnpike")
    if ds is None or secret is None:
        fail("DaemonSet/turnpike and Secret/turnpike must both exist")
        return
    pod = ds["spec"]["template"]
    labels = pod["metadata"]["labels"]

    def selects(selector, what):
        wanted = selector.get("matchLabels", selector)
        if not all(labels.get(k) == v for k, v in wanted.items()):
            fail("%s selects %s, the pods are labelled %s" % (what, wanted, labels))

    selects(ds["spec"]["selector"], "DaemonSet/turnpike")
    for key, resource in resources.items():
        if key.startswith("PodDisruptionBudget/"):
            selects(resource["spec"]["selector"], key)
        if key.startswith("Service/"):
            selects(resource["spec"]["selector"], key)
        if resource.get("metadata", {}).get("namespace", "turnpike") != "turnpike" and not key.startswith("Namespace/"):
            fail("%s is not in the turnpike namespace" % key)

    spec = pod["spec"]
    if not spec.get("hostNetwork"):
        fail("the DaemonSet must use hostNetwork (relay port ranges)")
    (container,) = spec["containers"]
    prestop = container["lifecycle"]["preStop"]["exec"]["command"]
    if prestop[1:3] != ["drain", "--config=/etc/turnpike/turnpike.toml"] or "--wait" not in prestop:
        fail("preStop must run `turnpike drain --config=... --wait`: %s" % prestop)
    timeout = next((int(a.split("=", 1)[1]) for a in prestop if a.startswith("--timeout=")), 3600)
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace <= timeout:
        fail("terminationGracePeriodSeconds %d must exceed the drain timeout %d" % (grace, timeout))

    config = secret["stringData"]["turnpike.toml"]
    api_port = int(re.search(r'^listen = "[^"]*:(\d+)"$', config.split("[api]", 1)[1], re.M).group(1))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    if ports.get("api") != api_port:
        fail("container port api %s is not api.listen's port %d" % (ports.get("api"), api_port))
    for probe in ("readinessProbe", "livenessProbe"):
        if container[probe]["httpGet"]["port"] != api_port:
            fail("%s is not on the API port %d" % (probe, api_port))
    if container["readinessProbe"]["httpGet"]["path"] != "/readyz":
        fail("readiness must be /readyz (503 while draining)")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    if mounts.get("config") != "/etc/turnpike":
        fail("the config Secret must be mounted at /etc/turnpike")
    if spec["securityContext"].get("runAsNonRoot") is not True:
        fail("the pod must run as non-root")

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "turnpike.toml")
        with open(path, "w") as f:
            f.write(config)
        checked = subprocess.run([turnpike, "check-config", path], capture_output=True, text=True)
        if checked.returncode != 0:
            fail("turnpike check-config on the Secret's turnpike.toml: " + checked.stderr.strip())
        else:
            print("ok   the Secret's turnpike.toml passes turnpike check-config")

    # The schema check must catch a broken manifest, or it proves nothing.
    wrong_type = copy.deepcopy(ds)
    wrong_type["spec"]["template"]["spec"]["hostNetwork"] = "yes"
    misspelt = copy.deepcopy(ds)
    misspelt["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    for what, broken in (("hostNetwork: \"yes\"", wrong_type), ("a misspelt livenesProbe", misspelt)):
        for version in versions:
            if schema_errors(broken, version) is None:
                fail("a DaemonSet with %s passed Kubernetes %s" % (what, version))


if __name__ == "__main__":
    main()
    if failures:
        print("%d check(s) failed" % len(failures))
        sys.exit(1)
    print("all Kubernetes manifests valid")
