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
import re
import subprocess
import sys
import time

import jsonschema
import nats

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from backbeat_client import BackbeatClient, BeatPosition, Event, NoPulseError, TempoRefused  # noqa: E402
from test_live import CLUSTER, Cluster, free_port, http, report, schemas  # noqa: E402

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
        if e.subject != "backbeat.nobody.request.timeline" or url not in e.server or not 1.5 <= took < 3:
            failures.append(f"no pulse: {e!r} after {took:.2f} s")
        if "\n" in line or not all(part in line for part in ("backbeat.nobody.request.timeline", url, "1.5 s")):
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
    if example.returncode != 1 or example.stderr.count("\n") != 1 or "backbeat.nobody.request.timeline" not in example.stderr:
        failures.append(f"example: exit {example.returncode}, stderr {example.stderr!r}")


def check_asyncapi(observed, failures):
    """Every message seen live matches one the AsyncAPI document lists for its subject and role
    (a publication: a receive operation's messages; a request: a send operation's; a reply: that
    send operation's reply messages), and every operation was seen at least once."""
    with open(os.path.join(ROOT, "docs", "asyncapi.json")) as f:
        doc = json.load(f)
    validators = schemas()

    def follow(ref):
        node = {"$ref": ref}
        while "$ref" in node and node["$ref"].startswith("#/"):
            target = doc
            for part in node["$ref"][2:].split("/"):
                target = target[part]
            node = target
        return node

    def valid(payload, message):
        schema = message["payload"]
        if "$ref" in schema:
            validator = validators[os.path.basename(schema["$ref"])]
        else:
            validator = jsonschema.Draft202012Validator(schema)
        return validator.is_valid(payload)

    seen_ops = set()
    for subject, role, data in observed:
        payload = json.loads(data)
        matched = False
        for name, op in doc["operations"].items():
            address = follow(op["channel"]["$ref"])["address"].replace("{cluster}", CLUSTER)
            if address != subject:
                continue
            if role == "publication" and op["action"] == "receive":
                candidates = op["messages"]
            elif role == "request" and op["action"] == "send":
                candidates = op["messages"]
            elif role == "reply" and op["action"] == "send" and "reply" in op:
                candidates = op["reply"]["messages"]
            else:
                continue
            if any(valid(payload, follow(m["$ref"])) for m in candidates):
                matched = True
                seen_ops.add(name)
        if not matched:
            failures.append(f"asyncapi: a {role} on {subject} matches no message listed for it: {data[:200]!r}")
    missing = set(doc["operations"]) - seen_ops
    if missing:
        failures.append(f"asyncapi: operations never seen live: {sorted(missing)}")
    print(f"asyncapi: {len(observed)} live messages checked, operations seen: {sorted(seen_ops)}")

    # The error table of docs/protocol.md: every code in the schema's enum, and every refusal seen
    # live (control replies here, HTTP answers in api()) has its row with the same status.
    with open(os.path.join(ROOT, "docs", "protocol.md")) as f:
        rows = {(code, status) for code, status in re.findall(r"^\| `([a-z_]+)` \| (\d+|any) \|", f.read(), re.M)}
    enum = set(validators["error.v1.json"].schema["properties"]["code"]["enum"])
    if not rows or {code for code, _ in rows} - enum:
        failures.append(f"protocol.md codes not in the error schema: {sorted({c for c, _ in rows} - enum)}")
    replies = [json.loads(d) for _, role, d in observed if role == "reply"]
    answered = {(o["code"], str(o["status"])) for o in replies if "code" in o and "status" in o}
    for pair in sorted(answered | REFUSALS_SEEN):
        if pair not in rows:
            failures.append(f"protocol.md has no row for {pair[0]} with status {pair[1]}")
    for o in replies:  # timeline error replies carry no status: the code must have a row
        if "code" in o and "status" not in o and o["code"] not in {code for code, _ in rows}:
            failures.append(f"protocol.md has no row for {o['code']}")
    print(f"protocol.md: {len(rows)} error rows; live refusals {sorted(answered | REFUSALS_SEEN)} match")


REFUSALS_SEEN = set()  # (code, status) answered over HTTP and NATS in api()


async def api(cluster, leader, failures):
    observed = []  # (subject, role, bytes) for check_asyncapi
    raw = await nats.connect(cluster.url)
    for name in ("beat", "timeline", "control", "request.timeline", "request.control"):
        async def seen(msg, name=name):
            observed.append((msg.subject, "request" if msg.reply else "publication", msg.data))
        await raw.subscribe(f"backbeat.{CLUSTER}.{name}", cb=seen)
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
            REFUSALS_SEEN.update({(e.code, str(e.status)), (str(code), str(status))})
    changed, beats, kinds = None, 0, []

    async def watchdog():  # the events end (close) if the change never shows
        await asyncio.sleep(15)
        failures.append(f"no tempo change within 15 s; events {kinds[-20:]}")
        client._emit(Event("closed"))

    guard = asyncio.get_running_loop().create_task(watchdog())
    async for event in client.events():
        kinds.append(event.kind if event.kind != "refused" else f"refused {event.reason}")
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
    guard.cancel()
    if changed != (252, scheduled.apply_at_beat):
        failures.append(f"tempo changed {changed}, scheduled at {scheduled.apply_at_beat}")
    offset, bound, samples = client.clock_offset()
    if not bound < 20_000_000 or abs(offset + SKEW_NS) > bound:
        failures.append(f"clock offset {offset} ± {bound}, true {-SKEW_NS}")
    await asyncio.sleep(2)
    if client.clock_offset()[2] - samples < 5:
        failures.append(f"only {client.clock_offset()[2] - samples} clock samples in 2 s (want one every 200 ms)")
    print(f"python client: clock offset {offset} ± {bound} ns (true {-SKEW_NS})")
    # Replies, as a requester sees them: a timeline, an error, a refusal and an acceptance.
    ask_timeline, ask_tempo = f"backbeat.{CLUSTER}.request.timeline", f"backbeat.{CLUSTER}.request.control"
    for subject, body in ((ask_timeline, b"{}"), (ask_timeline, b'{"pad":"' + b"x" * 2000 + b'"}'),
                          (ask_tempo, b'{"tempo_bpm":1000,"justification":"raw"}'),
                          (ask_tempo, b'{"tempo_bpm":240,"justification":"raw"}')):
        reply = await raw.request(subject, body, timeout=2)
        observed.append((subject, "reply", reply.data))
    await asyncio.sleep(0.2)
    await client.close()
    await raw.close()
    check_asyncapi(observed, failures)


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
    report(failures, logs, "python client api: ok")



def test_main() -> None:
    """pytest entry: the same run as `python test_api.py` against live nodes (PULSE_BIN)."""
    main()


if __name__ == "__main__":
    main()
