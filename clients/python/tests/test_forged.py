"""Issue 20, item 2, for the Python client, against a real `pulse` and a real,
unauthenticated nats-server (as `make cluster` runs it): a timeline
publication with term 2^63-1, one with a forged `pending` change, a copy of a
real frame with term + 8 and the next frame predicted with term + 8 leave the
client's beat, phase and downbeats right, its timeline the committed one, and
its beats flowing, each within one period of its instant.  Bounded (30 s).

    PULSE_BIN=.build/debug/pulse python3 clients/python/tests/test_forged.py
"""
import asyncio
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import nats  # noqa: E402
from backbeat_client import BackbeatClient, decode_frame, decode_timeline  # noqa: E402
from test_live import free_port, http, start_nats, wait_until  # noqa: E402

CLUSTER = "pyforged"
PERIOD_NS = 100_000_000  # 600 bpm


def predicted(k, t, term, hlc):
    """Beat k of timeline t as the pulse would publish it, with `term` and `hlc`."""
    ms = t.instant_ns(k + 1) // 1_000_000
    deadline = datetime.datetime.fromtimestamp(ms // 1000, datetime.timezone.utc)
    return json.dumps({
        "type": "backbeat.beatframe.v1", "cluster_id": CLUSTER, "beat_index": k, "downbeat": t.is_downbeat(k),
        "phase": t.phase_of(k), "hlc": hlc,
        "deadline_at": deadline.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z",
        "tempo_bpm": t.bpm_of(k), "window_id": t.window_id_of(k), "term": term}, separators=(",", ":")).encode()


async def scenario(url, body, failures):
    real = decode_timeline(body, CLUSTER)
    client = await BackbeatClient.connect(url, cluster=CLUSTER)
    attacker = await nats.connect(url)
    frames = asyncio.Queue()

    async def on_frame(msg):
        frames.put_nowait(msg.data)

    await attacker.subscribe(f"backbeat.{CLUSTER}.beat", cb=on_frame)
    await asyncio.sleep(0.5)
    while not frames.empty():
        frames.get_nowait()
    copy = await asyncio.wait_for(frames.get(), 2)
    frame = decode_frame(copy)
    beat, timeline = f"backbeat.{CLUSTER}.beat", f"backbeat.{CLUSTER}.timeline"
    # 1. The real frame k again, term + 8; 2. frame k + 1 before its time, term + 8.
    await attacker.publish(beat, copy.replace(f'"term":{frame.term}'.encode(), f'"term":{frame.term + 8}'.encode()))
    await attacker.publish(beat, predicted(frame.beat_index + 1, real, frame.term + 8, frame.hlc))
    # 3. A timeline publication with term 2^63 - 1; 4. the real one with a forged pending change.
    forged = json.loads(body)
    forged["term"] = (1 << 63) - 1
    await attacker.publish(timeline, json.dumps(forged).encode())
    at = real.next_downbeat(real.instant_ns(frame.beat_index + 16)).index
    forged = json.loads(body)
    forged["pending"] = {"at_beat": at, "at_ns": real.instant_ns(at), "at": "2026-01-01T00:00:00.000Z", "bpm": 300}
    await attacker.publish(timeline, json.dumps(forged).encode())
    await attacker.flush()
    copied = frame.beat_index

    beats, gaps, refusals = [], [], []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    events = client.events()
    while loop.time() < deadline and len(beats) < 30:
        try:
            event = await asyncio.wait_for(events.__anext__(), deadline - loop.time())
        except (asyncio.TimeoutError, StopAsyncIteration):
            break
        if event.kind == "beat" and event.frame.beat_index > copied:
            beats.append(event)
        elif event.kind == "gap":
            gaps.append(event.missed)
        elif event.kind in ("refused", "mismatch"):
            refusals.append(event.reason)

    indices = [e.frame.beat_index for e in beats]
    if len(beats) < 30:
        failures.append(f"only {len(beats)} beats after the attack (refused: {refusals})")
    if indices != list(range(copied + 1, copied + 1 + len(indices))):
        failures.append(f"beats missing after the attack: {indices}")
    if gaps:
        failures.append(f"gaps: {gaps}")
    if "stale_term" in refusals:
        failures.append(f"real frames fenced out: {refusals}")
    if not any(e.frame.beat_index == copied + 1 and e.frame.term == real.term + 8 for e in beats):
        failures.append("the predicted copy did not reach the client")
    for e in beats:
        k = e.frame.beat_index
        if e.frame.phase != real.phase_of(k) or e.frame.downbeat != real.is_downbeat(k):
            failures.append(f"beat {k}: {e.frame.phase} downbeat={e.frame.downbeat}")
        if e.received_ns - real.instant_ns(k) >= PERIOD_NS:
            failures.append(f"beat {k} {(e.received_ns - real.instant_ns(k)) / 1e6:.1f} ms after its instant")
    held = client.timeline
    if held.term != real.term or held.epoch != real.epoch or held.pending is not None:
        failures.append(f"the held timeline moved: term {held.term}, epoch {held.epoch}, pending {held.pending}")
    now = client.now()
    for k in range(16):
        at = now + k * PERIOD_NS
        if client.beat(at).index != real.beat_at(at) or client.next_downbeat(at).index != real.next_downbeat(at).index:
            failures.append(f"answers at +{k} periods differ from the committed timeline")
            break
    print(f"python forged: {len(beats)} beats after the attack at {copied}, refused {refusals}")
    await attacker.close()
    await client.close()


def main():
    directory = tempfile.mkdtemp(prefix="backbeat-pyforged-")
    nats_process, nats_port = start_nats()
    processes = [nats_process]
    admin = free_port()
    log = open(os.path.join(directory, "node.log"), "w")
    url = f"nats://127.0.0.1:{nats_port}"
    processes.append(subprocess.Popen(
        [os.environ["PULSE_BIN"], "-bootstrap", "-bpm", "600", "-max-bpm", "600", "-cluster", CLUSTER,
         "-nats", url, "-data-dir", os.path.join(directory, "node"), "-admin-port", str(admin)],
        stdout=log, stderr=log))
    failures = []
    try:
        if not wait_until(10, lambda: http("GET", admin, "/timeline")[0] == 200):
            failures.append("no timeline from the node")
        else:
            asyncio.run(asyncio.wait_for(scenario(url, http("GET", admin, "/timeline")[1], failures), 30))
    finally:
        for p in processes:
            p.kill()
            p.wait()
        log.close()
        if failures:
            with open(os.path.join(directory, "node.log")) as f:
                print(f.read()[-3000:])
        shutil.rmtree(directory, ignore_errors=True)
    if failures:
        print("FAIL:\n" + "\n".join(failures[:10]))
        sys.exit(1)
    print("OK")



def test_main() -> None:
    """pytest entry: the same run as `python test_forged.py` against forged messages against a live node (PULSE_BIN)."""
    main()


if __name__ == "__main__":
    main()
