#!/usr/bin/env python3
"""scripts/test-image.py IMAGE [DEPENDENCIES] — make test-image: the built image, run.

nats-server on the host (loopback, a free port) and three pulse containers
from IMAGE with host networking (rootful podman with the runc runtime: crun
cannot handle this machine's hybrid cgroups; explicit --ulimit nofile at this
shell's limit and nproc 4096: without them, or with nproc above what podman
itself may set, runc refuses to start a container here).
Checks: `pulse --version` in the image is a release build; with
DEPENDENCIES (a make dist tarball's), the image holds every package it
names; each container's data dir is a fresh named volume (the image's dir,
owned by uid 10001, gives it its owner); frames on the subject
from the elected leader; /metrics from each container; the leader's
container killed (`podman kill -s KILL`) and frames again from a new leader
within 1 s of its death; every container and volume removed at the end.
The failover is timed from the moment the leader's process died (its host
pid, polled every millisecond, gone or a zombie), as the process tests time
it from kill(2): `podman kill` itself takes 0.1 to 0.9 s on a loaded machine
before the signal lands, which is not failover (printed as "podman kill
landed after").
Needs nats-py (the project's .venv). Bounded: at most ~90 s.
"""
import asyncio
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import nats

IMAGE = sys.argv[1] if len(sys.argv) > 1 else "backbeat/pulse:0.1.0"
DEPENDENCIES = sys.argv[2] if len(sys.argv) > 2 else None
CLUSTER = "imagetest"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except Exception as e:  # connection refused while starting, HTTP errors
        return 0, str(e)


def podman(*args: str, check: bool = True) -> str:
    out = subprocess.run(["podman", "--runtime", "runc", *args], capture_output=True, text=True, timeout=60)
    if check and out.returncode != 0:
        raise SystemExit(f"test-image: podman {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


def main() -> int:
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    nproc = min(4096, resource.getrlimit(resource.RLIMIT_NPROC)[0])
    limits = ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]
    nats_port = free_port()
    nats_bin = shutil.which("nats-server") or "/usr/sbin/nats-server"
    server = subprocess.Popen([nats_bin, "-a", "127.0.0.1", "-p", str(nats_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    names = [f"bbtest-n{i}-{os.getpid()}" for i in (1, 2, 3)]
    failures = image_contents(limits)
    if failures:
        server.terminate()
        server.wait(timeout=10)
        return report(failures, names)
    # The image was just built (hundreds of MB of layers still being written
    # back): an fsync in a container would wait behind that writeback, and
    # an election waits for two syncs in a row (the clean-clone run of
    # 2026-12-07 09:05: a 0.5 s sync right after the build, failover 1.03 s).
    # This test measures the failover, not the build's writeback: flush first.
    flushed = time.monotonic()
    os.sync()
    print(f"writeback before the run: sync took {(time.monotonic() - flushed) * 1000:.0f} ms")
    raft = [free_port() for _ in names]
    admin = [free_port() for _ in names]
    peers = ",".join(f"n{i + 1}@127.0.0.1:{raft[i]}" for i in range(3))
    try:
        for i, name in enumerate(names):
            podman("run", "-d", "--name", name, "--network", "host", "--log-driver", "k8s-file", *limits,
                   "--volume", f"{name}-data:/var/lib/backbeat/data", IMAGE,
                   "-bootstrap=true", f"-node-id=n{i + 1}", f"-cluster={CLUSTER}", "-bpm=600", "-max-bpm=600",
                   f"-raft-bind=127.0.0.1:{raft[i]}", f"-peers={peers}", "-admin-bind=127.0.0.1",
                   f"-admin-port={admin[i]}", f"-nats=nats://127.0.0.1:{nats_port}")
        deadline = time.monotonic() + 30
        leader = None
        while time.monotonic() < deadline and leader is None:
            for i in range(3):
                status, body = get(admin[i], "/leader")
                if status == 200 and json.loads(body).get("is_leader"):
                    leader = i
            time.sleep(0.2)
        if leader is None:
            failures.append("no leader elected within 30 s")
            return report(failures, names)
        print(f"leader: n{leader + 1} ({names[leader]})")
        for i in range(3):
            status, body = get(admin[i], "/metrics")
            if status != 200 or "backbeat_beats_total" not in body or "process_open_fds" not in body:
                failures.append(f"n{i + 1}: /metrics answered {status}")
            else:
                print(f"n{i + 1}: /metrics ok ({len(body.splitlines())} lines)")
        pid = int(podman("inspect", "--format", "{{.State.Pid}}", names[leader]))
        frames = asyncio.run(watch(nats_port, names[leader], pid))
        before = [f for f in frames if f["t"] < f["killed"]]
        old_term = max((f["term"] for f in before), default=0)
        old = [f for f in frames if f["term"] == old_term]
        new = [f for f in frames if f["term"] > old_term]
        if len(before) < 5:
            failures.append(f"only {len(before)} frames before the kill")
        if not new:
            failures.append("no frame from a new term after the leader's container was killed")
        elif old:
            # From the leader's death, as the process tests measure it
            # (ClusterProcessTests, 1 s from kill(2)).
            gap = new[0]["t"] - new[0]["killed"]
            print(f"failover: last frame of term {old_term} #{old[-1]['index']}; first of term {new[0]['term']} "
                  f"#{new[0]['index']} {gap * 1000:.0f} ms after the leader died (podman kill landed after "
                  f"{new[0]['landed'] * 1000:.0f} ms); {len(new)} frames from the new leader")
            if gap > 1.0:
                failures.append(f"frames resumed {gap:.3f} s after the leader's container was killed (limit 1 s)")
            # The same bound as a subscriber sees it, independent of when the
            # poller noticed the death: the old leader's last frame came at
            # most a period (100 ms at 600 bpm) before it died.
            silence = new[0]["t"] - old[-1]["t"]
            print(f"silence on the subject: {silence * 1000:.0f} ms (last frame of term {old_term} to the first of "
                  f"term {new[0]['term']}; at most 1 s + one period)")
            if silence > 1.1:
                failures.append(f"the subject was silent {silence:.3f} s across the failover (limit 1.1 s)")
            # The new leader keeps the beat: each index once and in order,
            # after the old leader's last (no index republished). A beat it
            # missed on a starved machine is printed, not failed (the node
            # counts it in backbeat_beats_missed_total).
            indexes = [f["index"] for f in new]
            if indexes[0] <= old[-1]["index"] or any(b <= a for a, b in zip(indexes, indexes[1:])):
                failures.append(f"the new leader's frames are not increasing after #{old[-1]['index']}: {indexes[:12]}")
            skipped = sum(b - a - 1 for a, b in zip(indexes, indexes[1:]))
            if skipped:
                print(f"the new leader skipped {skipped} beat(s) after its first frame")
            if len(new) < 25:
                failures.append(f"only {len(new)} frames from the new leader in the 4 s after the kill (want >= 25)")
        for i in range(3):
            if i == leader:
                continue
            status, body = get(admin[i], "/metrics")
            if status != 200:
                failures.append(f"n{i + 1}: /metrics after the failover")
            else:
                print(f"n{i + 1}: {fsync_summary(body)}")
        print(f"load average after the failover: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    finally:
        logs = {n: container_log(n) for n in names}
        for name in names:
            podman("rm", "-f", "-t", "2", name, check=False)
            podman("volume", "rm", "-f", f"{name}-data", check=False)
        server.terminate()
        server.wait(timeout=10)
    if failures:
        for n, text in logs.items():
            print(f"--- {n}\n{text}")
    return report(failures, names)


def fsync_summary(metrics: str) -> str:
    """A survivor's syncs so far (`backbeat_fsync_duration_seconds`, all files):
    an election waits for the candidate's and the voter's term and vote to be
    synced, so a slow disk shows here when a failover is slow."""
    count, total, buckets = 0.0, 0.0, {}
    for line in metrics.splitlines():
        if not line.startswith("backbeat_fsync_duration_seconds"):
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith("backbeat_fsync_duration_seconds_count"):
            count += float(value)
        elif name.startswith("backbeat_fsync_duration_seconds_sum"):
            total += float(value)
        elif match := re.search(r'[{,]le="([^"]+)"', name):
            buckets[match[1]] = buckets.get(match[1], 0.0) + float(value)
    if count == 0:
        return "no fsync recorded"
    # The smallest bucket bound that holds every sync: the slowest sync is at most that.
    bounded = sorted((float(le), n) for le, n in buckets.items() if le != "+Inf")
    slowest = next((f"<= {le * 1000:g} ms" for le, n in bounded if n >= count), "above the last bucket")
    return f"{count:.0f} syncs, mean {total / count * 1000:.1f} ms, slowest {slowest}"


def container_log(name: str) -> str:
    """The container's last log lines (pulse logs to stderr, which `podman logs` passes on as its own)."""
    out = subprocess.run(["podman", "--runtime", "runc", "logs", "--tail", "25", name],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    return out.stdout.strip()


def image_contents(limits: list) -> list:
    """What is wrong with the image itself: its pulse, and the DEPENDENCIES packages."""
    failures = []
    version = podman("run", "--rm", *limits, IMAGE, "--version", check=False)
    if not (version.startswith("pulse ") and version.endswith(", release)")):
        failures.append(f"pulse --version in the image: '{version}' (want a release build)")
    else:
        print(f"image: {version}")
    if DEPENDENCIES:
        wanted = {}
        with open(DEPENDENCIES) as f:
            for line in f:
                if line.strip() and not line.startswith("#"):
                    package, version_, _ = line.rstrip("\n").split("\t")
                    wanted[package] = version_
        query = "dpkg-query -W -f '${Package}\\t${Version}\\n' " + " ".join(sorted(wanted))
        out = podman("run", "--rm", *limits, "--entrypoint", "sh", IMAGE, "-c", query, check=False)
        found = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
        # The package names are the libraries' sonames: present is what counts;
        # the image's Debian point release may be newer than the build host's.
        absent = sorted(p for p in wanted if p not in found)
        if absent:
            failures.append("packages DEPENDENCIES names that the image lacks: " + ", ".join(absent))
        else:
            other = [f"{p} {found[p]} (built with {v})" for p, v in sorted(wanted.items()) if found[p] != v]
            print(f"image: holds all {len(wanted)} packages DEPENDENCIES names"
                  + (f"; other versions: {', '.join(other)}" if other else ", at its versions"))
    return failures


def dead(pid: int) -> bool:
    """Whether host process `pid` has died (gone, or a zombie not reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


def wait_dead(pid: int, seconds: float) -> float:
    """The monotonic time at which `pid` was first seen dead (polled every ms); inf if it lives on."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if dead(pid):
            return time.monotonic()
        time.sleep(0.001)
    return float("inf")


async def watch(nats_port: int, leader_container: str, pid: int) -> list:
    """Frames for 3 s, then the leader's container killed, then 4 s more.
    Each frame gets `killed`: when the leader's process `pid` died (or, if
    it was never seen dead, when `podman kill` started), and `landed`: how
    long `podman kill` took to get there."""
    frames = []
    nc = await nats.connect(f"nats://127.0.0.1:{nats_port}")

    async def on_frame(msg) -> None:
        o = json.loads(msg.data)
        frames.append({"t": time.monotonic(), "index": o["beat_index"], "term": o["term"]})

    await nc.subscribe(f"backbeat.{CLUSTER}.beat", cb=on_frame)
    await asyncio.sleep(3)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, os.sync)  # the containers' start-up writes, as above
    started = time.monotonic()
    death = loop.run_in_executor(None, lambda: wait_dead(pid, 30))
    await loop.run_in_executor(None, lambda: podman("kill", "-s", "KILL", leader_container))
    died = await death
    killed = started if died == float("inf") else died
    await asyncio.sleep(4)
    await nc.close()
    for f in frames:
        f["killed"] = killed
        f["landed"] = killed - started
    return frames


def report(failures: list, names: list) -> int:
    if failures:
        print("test-image: FAILED: " + "; ".join(failures))
        return 1
    print("test-image: ok (3 containers, frames, leader killed, failover within 1 s, /metrics from each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
