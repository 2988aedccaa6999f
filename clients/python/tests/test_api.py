"""The Python client's timing API against a live 3-node cluster (real pulse
processes and nats-server): connect fails within its timeout with one error
when no pulse answers (and the example prints it as one line and exits 1);
request_tempo changes the tempo and returns the API's refusals unchanged; the
fractional position agrees with every frame's instant to the nanosecond; the
clock offset of a client whose clock runs 1.5 s ahead is found within its
error bound, sampled continuously. Bounded: the run stops after 60 s.

    PULSE_BIN=.build/debug/pulse python3 clients/python/tests/test_api.py
"""
import asyncio
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from backbeat_client import BackbeatClient, BeatPosition, NoPulseError, TempoRefused  # noqa: E402
from test_live import CLUSTER, Cluster, free_port, http  # noqa: E402

ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
SKEW_NS = 1_500_000_000


async def no_pulse(url, failures):
    began = time.monotonic()
    try:
        await BackbeatClient.connect(url, cluster="nobody", connect_timeout=1.5)
        failures.append("connected with no pulse")
    except NoPulseError as e:
        took = time.monotonic() - began
        line = str(e)
        if e.subject != "backbeat.nobody.timeline" or url not in e.server or not 1.5 <= took < 3:
            failures.append(f"no pulse: {e!r} after {took:.2f} s")
        if "\n" in line or not all(part in line for part in ("backbeat.nobody.timeline", url, "1.5 s")):
            failures.append(f"not one line naming subject, server and wait: {line}")
    dead = f"nats://127.0.0.1:{free_port()}"
    began = time.monotonic()
    try:
        await BackbeatClient.connect(dead, connect_timeout=1.0)
        failures.append("connected to nothing")
    except NoPulseError as e:
        if e.subject or dead not in str(e) or time.monotonic() - began > 2.5:
            failures.append(f"no NATS: {e}")
    # The example: one line on stderr, exit status 1.
    example = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "python", "consumer.py"), url, "nobody",
                              "1"], capture_output=True, text=True, timeout=20,
                             env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "clients", "python")))
    if example.returncode != 1 or example.stderr.count("\n") != 1 or "backbeat.nobody.timeline" not in example.stderr:
        failures.append(f"example: exit {example.returncode}, stderr {example.stderr!r}")


async def api(cluster, leader, failures):
    client = await BackbeatClient.connect(cluster.url, cluster=CLUSTER, connect_timeout=10,
                                          clock_sample_interval=0.2, local_clock=lambda: time.time_ns() + SKEW_NS)
    scheduled = await client.request_tempo(252, "python client test")
    if (scheduled.tempo_bpm, scheduled.previous_bpm, scheduled.apply_at_beat % 8, scheduled.justification) != \
            (252, 240, 0, "python client test"):
        failures.append(f"scheduled {scheduled}")
    # Refusals come back unchanged: the status and code the admin API answers.
    for bpm in (260, 1000, 0):
        try:
            await client.request_tempo(bpm, "again")
            failures.append(f"{bpm} accepted")
        except TempoRefused as e:
            status, body = http("POST", cluster.admin[leader], "/tempo",
                                json.dumps({"tempo_bpm": bpm, "justification": "again"}))
            code = json.loads(body).get("code") if body else None
            if (e.status, e.code) != (status, code) or not e.code:
                failures.append(f"{bpm}: NATS refusal {e.status} {e.code}, HTTP {status} {code}")
    changed, beats = None, 0
    async for event in client.events():
        if event.kind == "tempo_changed":
            changed = (event.bpm, event.at_beat)
        elif event.kind == "beat":
            beats += 1
            t = client.timeline
            k = event.frame.beat_index
            instant = t.instant_ns(k)
            length = t.instant_ns(k + 1) - instant
            # To the nanosecond: at the instant, beat k and 0 ns into it; 1 ns before, the last ns of k-1.
            if client.position(instant) != BeatPosition(k, 0, length):
                failures.append(f"position at beat {k}'s instant: {client.position(instant)}")
            before = client.position(instant - 1)
            if (before.beat, before.offset_ns) != (k - 1, before.length_ns - 1):
                failures.append(f"position 1 ns before beat {k}: {before}")
            if client.beat_at_time(instant) != float(k) or client.phase_at_time(instant, 8) != float(k % 8):
                failures.append(f"beat_at_time/phase_at_time at beat {k}")
            if event.frame.deadline_ms != t.instant_ns(k + 1) // 1_000_000:
                failures.append(f"beat {k}: deadline {event.frame.deadline_ms}")
            # Arrival on the estimated timeline clock: after the instant, or before it by less than the bound.
            bound = client.clock_offset()[1]
            if not instant - bound <= event.received_ns < instant + length:
                failures.append(f"beat {k} arrived at {event.received_ns - instant} ns from its instant")
        if changed and beats:
            break
    if changed != (252, scheduled.apply_at_beat):
        failures.append(f"tempo changed {changed}, scheduled at {scheduled.apply_at_beat}")
    offset, bound, samples = client.clock_offset()
    if not bound < 20_000_000 or abs(offset + SKEW_NS) > bound:
        failures.append(f"clock offset {offset} ± {bound}, true {-SKEW_NS}")
    await asyncio.sleep(2)
    if client.clock_offset()[2] - samples < 5:
        failures.append(f"only {client.clock_offset()[2] - samples} clock samples in 2 s (want one every 200 ms)")
    print(f"python client: clock offset {offset} ± {bound} ns (true {-SKEW_NS})")
    await client.close()


def main():
    failures = []
    cluster = Cluster(240, 600)
    try:
        leader = cluster.leader()
        if leader is None:
            sys.exit("no leader\n" + cluster.logs())
        asyncio.run(asyncio.wait_for(no_pulse(cluster.url, failures), 30))
        asyncio.run(asyncio.wait_for(api(cluster, leader, failures), 30))
    finally:
        logs = cluster.logs()
        cluster.close()
    if failures:
        print("\n".join(failures[:10]))
        print(logs)
        sys.exit(1)
    print("python client api: ok")


if __name__ == "__main__":
    main()
