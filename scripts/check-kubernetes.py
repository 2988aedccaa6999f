#!/usr/bin/env python3
"""scripts/check-kubernetes.py — deploy/kubernetes, rendered and checked.

    scripts/check-kubernetes.py VALIDATOR     (make test-kubernetes, part of make test)

For the base (deploy/kubernetes) and each overlay: `kubectl kustomize DIR`,
then VALIDATOR (kubernetes-validate) --strict on the output (offline schemas;
the PodMonitor is a CRD it has no schema for, checked here instead), then the
invariants the design rests on. Last, it proves the invariant check can fail:
the rendered base with `podManagementPolicy` or `publishNotReadyAddresses`
removed (or changed) must be refused.
"""
import copy
import os
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deploy", "kubernetes")
OVERLAYS = ["overlays/pinned"]
# The slowest tempo (-min-bpm default 4): one beat every 15 s. A leader hands
# over after its next beat comes back on the subject, so the grace period must
# cover a whole beat, the transfer, and margin.
SLOWEST_BEAT_S = 60 / 4


def render(path):
    out = subprocess.run(["kubectl", "kustomize", path], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"check-kubernetes: kubectl kustomize {path}: {out.stderr.strip()}")
    return out.stdout


def validate(validator, text, name):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    try:
        out = subprocess.run([validator, "--strict", "--quiet", f.name], capture_output=True, text=True, check=False)
    finally:
        os.unlink(f.name)
    noise = [l for l in (out.stdout + out.stderr).splitlines() if l.strip() and "kind PodMonitor" not in l]
    if out.returncode != 0 or noise:
        raise SystemExit(f"check-kubernetes: {name}: kubernetes-validate --strict:\n" + "\n".join(noise))


def one(docs, kind):
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def invariants(docs, overlay=None):
    """Every failed rule, as text (empty: all hold)."""
    problems = []

    def rule(ok, text):
        if not ok:
            problems.append(text)

    sts = one(docs, "StatefulSet")
    svc = one(docs, "Service")
    pdb = one(docs, "PodDisruptionBudget")
    mon = one(docs, "PodMonitor")
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    container = pod["containers"][0]
    args = container.get("args", [])
    flags = dict(a.lstrip("-").split("=", 1) for a in args if "=" in a)

    rule(spec.get("podManagementPolicy") == "Parallel",
         "StatefulSet podManagementPolicy must be Parallel (readiness needs a leader: ordered start-up deadlocks)")
    rule(svc["spec"].get("clusterIP") == "None", "the Service must be headless (clusterIP: None)")
    rule(svc["spec"].get("publishNotReadyAddresses") is True,
         "the Service must set publishNotReadyAddresses: true (peers must resolve before any pod is ready)")
    rule(spec.get("serviceName") == svc["metadata"]["name"], "StatefulSet serviceName must be the headless Service")
    for what, selector in [("Service", svc["spec"]["selector"]), ("PodDisruptionBudget", pdb["spec"]["selector"]["matchLabels"]),
                           ("PodMonitor", mon["spec"]["selector"]["matchLabels"])]:
        rule(all(labels.get(k) == v for k, v in selector.items()), f"the {what} selector must match the pods' labels")

    # Identity and peers: the pod name is the node id; peers by stable DNS names.
    env = {e["name"]: e for e in container.get("env", [])}
    rule(env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
         "POD_NAME must come from metadata.name")
    rule(flags.get("node-id") == "$(POD_NAME)", "-node-id must be the pod name")
    replicas = spec["replicas"]
    name, service = sts["metadata"]["name"], svc["metadata"]["name"]
    raft_port = flags.get("raft-bind", ":").rsplit(":", 1)[1]
    want = [f"{name}-{i}@{name}-{i}.{service}:{raft_port}" for i in range(replicas)]
    rule(flags.get("peers", "").split(",") == want, f"-peers must be {','.join(want)}")
    rule(replicas % 2 == 1 and replicas >= 3, "an odd number of voters, at least 3")
    suffixes = {f"{name}-{i}"[-4:] for i in range(replicas)}
    rule(len(suffixes) == replicas, "node ids must differ in their last 4 characters (the HLC suffix)")

    # Storage: a claim per pod, mounted above the data dir.
    claims = [c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])]
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    rule(len(claims) == 1 and claims[0] in mounts, "one volume claim per pod, mounted in the container")
    rule(pod.get("securityContext", {}).get("fsGroupChangePolicy") == "OnRootMismatch",
         "fsGroupChangePolicy: OnRootMismatch (a recursive g+rw would make the data dir group-writable: refused)")
    rule(bool(claims) and claims[0] in mounts and flags.get("data-dir", "").startswith(mounts[claims[0]] + "/"),
         "-data-dir must be inside the claimed volume")

    # Probes and shutdown.
    def probe(kind, path):
        p = container.get(kind, {}).get("httpGet", {})
        rule(p.get("path") == path and p.get("port") == "admin", f"{kind} must GET {path} on the admin port")
    probe("livenessProbe", "/live")
    probe("readinessProbe", "/ready")
    probe("startupProbe", "/live")
    rule(pod.get("terminationGracePeriodSeconds", 30) > 2 * SLOWEST_BEAT_S,
         f"terminationGracePeriodSeconds must exceed a leader's hand-over ({2 * SLOWEST_BEAT_S:.0f} s)")
    rule(pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") == replicas // 2 + 1,
         "the PodDisruptionBudget must keep a quorum")

    # Raft mutual TLS from a Secret, per pod; the admin token from a Secret file.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    tls_mount = next((m for m in container.get("volumeMounts", []) if m["mountPath"] == "/etc/backbeat/raft-tls"), None)
    rule(tls_mount is not None and "secret" in volumes.get(tls_mount["name"], {}), "Raft TLS files come from a Secret")
    rule(flags.get("raft-tls-cert", "").endswith("/$(POD_NAME).pem") and flags.get("raft-tls-key", "").endswith("/$(POD_NAME).key")
         and bool(flags.get("raft-tls-ca")), "Raft TLS: each pod's own certificate and key, and the CA")
    rule("admin-token-file" in flags and "admin-token" not in flags, "the admin token from a file, never an argument")

    # The PodMonitor scrapes the admin port with the labels the alerts use.
    endpoint = mon["spec"]["podMetricsEndpoints"][0]
    rule(endpoint.get("port") == "admin" and endpoint.get("path") == "/metrics", "the PodMonitor scrapes /metrics on admin")
    relabel = {r.get("targetLabel"): r for r in endpoint.get("relabelings", [])}
    rule(relabel.get("job", {}).get("replacement") == "backbeat-pulse", "the PodMonitor sets job=backbeat-pulse (alerts.yml)")

    if overlay == "overlays/pinned":
        sc = container.get("securityContext", {})
        caps = sc.get("capabilities", {})
        rule({"SYS_NICE", "IPC_LOCK"} <= set(caps.get("add", [])), "pinned: SYS_NICE for -rt-priority, IPC_LOCK for -mlock")
        rule(caps.get("drop") == ["ALL"], "pinned: every other capability dropped")
        # Added capabilities are effective only for root: Kubernetes sets no
        # ambient capabilities and the base forbids privilege escalation.
        user = sc.get("runAsUser", pod.get("securityContext", {}).get("runAsUser"))
        rule(user == 0, f"pinned: the container must run as uid 0 for its capabilities to take effect (runAsUser {user})")
        res = container.get("resources", {})
        cpu_req, cpu_lim = str(res.get("requests", {}).get("cpu")), str(res.get("limits", {}).get("cpu"))
        rule(cpu_req == cpu_lim and re.fullmatch(r"\d+", cpu_req) is not None,
             "pinned: whole CPUs with requests == limits (Guaranteed, for the static CPU manager)")
        rule(res.get("requests", {}).get("memory") == res.get("limits", {}).get("memory"), "pinned: memory requests == limits")
        rule(any("-cpu=" in c for c in container.get("command", [])), "pinned: the loop pinned with -cpu")
        env_names = {e["name"]: e.get("value") for e in container.get("env", [])}
        rule(env_names.get("BACKBEAT_RT_PRIORITY") not in (None, "0"), "pinned: BACKBEAT_RT_PRIORITY set")
    return problems


def main():
    validator = sys.argv[1]
    base_text = render(ROOT)
    validate(validator, base_text, "deploy/kubernetes")
    base = [d for d in yaml.safe_load_all(base_text) if d]
    problems = invariants(base)
    assert not problems, "deploy/kubernetes: " + "; ".join(problems)
    print(f"ok  deploy/kubernetes ({len(base)} resources: kubernetes-validate --strict, invariants)")
    for overlay in OVERLAYS:
        text = render(os.path.join(ROOT, overlay))
        validate(validator, text, overlay)
        problems = invariants([d for d in yaml.safe_load_all(text) if d], overlay)
        assert not problems, f"{overlay}: " + "; ".join(problems)
        print(f"ok  deploy/kubernetes/{overlay} (kubernetes-validate --strict, invariants)")

    # The check must catch the two settings whose loss breaks start-up.
    def mutated(kind, key, value):
        docs = copy.deepcopy(base)
        spec = next(d for d in docs if d["kind"] == kind)["spec"]
        if value is None:
            del spec[key]
        else:
            spec[key] = value
        return docs
    for kind, key, value in [("StatefulSet", "podManagementPolicy", None), ("StatefulSet", "podManagementPolicy", "OrderedReady"),
                             ("Service", "publishNotReadyAddresses", None), ("Service", "publishNotReadyAddresses", False)]:
        caught = invariants(mutated(kind, key, value))
        assert any(key in p for p in caught), f"removing {kind}.{key} was not caught: {caught}"
    print("ok  the invariant check refuses a base without podManagementPolicy: Parallel or publishNotReadyAddresses")
    pinned = [d for d in yaml.safe_load_all(render(os.path.join(ROOT, "overlays/pinned"))) if d]
    sts = next(d for d in pinned if d["kind"] == "StatefulSet")
    del sts["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsUser"]
    caught = invariants(pinned, "overlays/pinned")
    assert any("uid 0" in p for p in caught), f"a pinned overlay running as uid 10001 was not caught: {caught}"
    print("ok  the invariant check refuses a pinned overlay whose capabilities cannot take effect (non-root)")


if __name__ == "__main__":
    main()
