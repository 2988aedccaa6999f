"""The Python client against a live pulse cluster (3 real `pulse` processes and
a real nats-server on loopback), and every message seen validated against
docs/schema: a consumer started mid-bar answers each beat before its frame
arrives, across a tempo change and a leader failover whose gap and new term
are events.  Bounded: the whole run stops after 50 s.

    PULSE_BIN=.build/debug/pulse python3 clients/python/tests/test_live.py
"""
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(HERE, ".."))

import jsonschema  # noqa: E402
import nats  # noqa: E402
from backbeat_client import BackbeatClient, decode_timeline  # noqa: E402

CLUSTER = "py"
FRAME_KEYS = ["type", "cluster_id", "beat_index", "downbeat", "phase", "hlc", "deadline_at", "tempo_bpm",
              "window_id", "term"]


def schemas():
    directory = os.path.join(ROOT, "docs", "schema")
    store = {}
    for name in os.listdir(directory):
        if name.endswith(".json"):
            with open(os.path.join(directory, name)) as f:
                store[name] = json.load(f)
    registry = {s["$id"]: s for s in store.values()}
    # RefResolver works from Debian's jsonschema 4.10 to 4.2x (deprecated there, in favour of `referencing`).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return {name: jsonschema.Draft202012Validator(s, resolver=jsonschema.RefResolver.from_schema(s, store=registry))
                for name, s in store.items()}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, port, path, body=None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=body.encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def wait_until(seconds, condition):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def nats_ready(port):
    """Whether a nats-server answers on 127.0.0.1:`port`: it sends INFO first. (A bare connect is no
    proof: polling a port of the ephemeral range can connect a socket to itself, which then holds the
    port the server was about to bind.)"""
    with socket.socket() as s:
        s.settimeout(0.5)
        try:
            s.connect(("127.0.0.1", port))
            return s.recv(4).startswith(b"INFO")
        except OSError:
            return False


def start_nats(args=(), env=None, log_path=None, attempts=3):
    """A nats-server on a free loopback port (its process and port), started again on another port
    when it exits or does not answer within 10 s (a port taken meanwhile)."""
    nats_bin = os.environ.get("NATS_SERVER") or shutil.which("nats-server") or "/usr/sbin/nats-server"
    for _ in range(attempts):
        port = free_port()
        command = [nats_bin, *args, "-a", "127.0.0.1", "-p", str(port)] + (["-l", log_path] if log_path else [])
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait_until(10, lambda: process.poll() is not None or nats_ready(port)) and process.poll() is None:
            return process, port
        process.kill()
        process.wait()
    log = ""
    if log_path and os.path.exists(log_path):
        with open(log_path) as f:
            log = f.read()[-2000:]
    raise AssertionError(f"nats-server did not start in {attempts} attempts\n{log}")


def stop_all(processes, log, directory):
    """Kills and reaps `processes`, closes `log` and removes `directory` (a test's teardown)."""
    for p in processes:
        p.kill()
        p.wait()
    log.close()
    shutil.rmtree(directory, ignore_errors=True)


class Cluster:
    def __init__(self, bpm, max_bpm):
        self.dir = tempfile.mkdtemp(prefix="backbeat-py-")
        nats_process, self.nats_port = start_nats()
        self.processes = [nats_process]
        self.url = f"nats://127.0.0.1:{self.nats_port}"
        raft = [free_port() for _ in range(3)]
        self.admin = [free_port() for _ in range(3)]
        peers = ",".join(f"n{i + 1}@127.0.0.1:{raft[i]}" for i in range(3))
        self.nodes = []
        for i in range(3):
            log = open(os.path.join(self.dir, f"n{i + 1}.log"), "w")
            self.nodes.append(subprocess.Popen(
                [os.environ["PULSE_BIN"], "-bootstrap", "-bpm", str(bpm), "-max-bpm", str(max_bpm), "-cluster",
                 CLUSTER, "-node-id", f"n{i + 1}", "-raft-bind", f"127.0.0.1:{raft[i]}", "-peers", peers,
                 "-nats", self.url, "-data-dir", os.path.join(self.dir, f"n{i + 1}"),
                 "-admin-port", str(self.admin[i])], stdout=log, stderr=log))

    def leader(self):
        found = []

        def check():
            for i, node in enumerate(self.nodes):
                if node.poll() is None:
                    status, body = http("GET", self.admin[i], "/leader")
                    if status == 200 and json.loads(body).get("is_leader"):
                        found.append(i)
                        return True
            return False
        return found[0] if wait_until(15, check) else None

    def logs(self):
        out = []
        for i in range(3):
            with open(os.path.join(self.dir, f"n{i + 1}.log")) as f:
                out.append(f"--- n{i + 1}\n" + f.read()[-3000:])
        return "\n".join(out)

    def close(self):
        for p in self.nodes + self.processes:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


async def scenario(cluster, leader, validators, failures):
    seen = {"frames": [], "timelines": [], "control": [], "refused": []}
    raw = await nats.connect(cluster.url)

    async def on_frame(msg):
        seen["frames"].append(msg.data)

    async def on_timeline(msg):
        if not msg.reply:
            seen["timelines"].append(msg.data)

    async def on_control(msg):
        if not msg.reply:
            seen["control"].append(msg.data)  # announcements (requests carry a reply subject)

    await raw.subscribe(f"backbeat.{CLUSTER}.beat", cb=on_frame)
    await raw.subscribe(f"backbeat.{CLUSTER}.timeline", cb=on_timeline)
    await raw.subscribe(f"backbeat.{CLUSTER}.control", cb=on_control)

    started = time.time()
    client = await BackbeatClient.connect(cluster.url, cluster=CLUSTER)
    join_s = time.time() - started
    if client.timeline is None:
        failures.append("no timeline after connect")
        return seen
    joined = client.timeline.beat_at(client.now())
    print(f"joined at beat {joined} ({joined % 8} into the bar) in {join_s * 1000:.1f} ms")
    if joined < 8 or joined % 8 == 0:
        failures.append("not started mid-bar")
    initial_term = client.timeline.term

    answers = {}

    async def predictor():
        while True:
            t = client.timeline
            instant = t.next_beat(client.now()).instant_ns
            k = t.beat_at(instant)
            answers.setdefault(k, (t.phase_at(instant), t.window_id_at(instant), t.info_at(instant).downbeat, instant))
            await asyncio.sleep(0.01)

    predicting = asyncio.get_running_loop().create_task(predictor())
    matched = frames = 0
    gaps, terms, scheduled, applied, apply_at, killed = [], [], None, None, None, False
    # A bad frame on the subject: refused with a reason.
    await raw.publish(f"backbeat.{CLUSTER}.beat", b'{"type":"backbeat.beatframe.v1"}')
    async for event in client.events():
        if event.kind == "beat":
            frames += 1
            f = event.frame
            answer = answers.get(f.beat_index)
            if answer is None:
                if f.beat_index > joined + 1:
                    failures.append(f"no answer for beat {f.beat_index}")
            elif answer[:3] != (f.phase, f.window_id, f.downbeat) or abs(answer[3] - f.scheduled_ns) >= 1_000_000:
                failures.append(f"beat {f.beat_index}: answered {answer}, frame {f}")
            else:
                matched += 1
        elif event.kind == "gap":
            gaps.append(event.missed)
        elif event.kind == "leader_changed":
            terms.append(event.term)
        elif event.kind == "tempo_scheduled":
            scheduled = scheduled or (event.bpm, event.at_beat)
        elif event.kind == "tempo_changed":
            applied = (event.bpm, event.at_beat)
        elif event.kind == "refused":
            seen["refused"].append(event.reason)
        elif event.kind == "mismatch":
            failures.append(f"mismatch at {event.frame.beat_index}: {event.reason}")
        if frames == 10 and apply_at is None:
            status, body = http("POST", cluster.admin[leader], "/tempo",
                                '{"tempo_bpm": 480, "justification": "python test"}')
            if status != 202:
                failures.append(f"POST /tempo: {status} {body}")
                break
            apply_at = json.loads(body)["apply_at_beat"]
            # The same over the control subject: refused (a change is pending), and a malformed one.
            for payload in (b'{"tempo_bpm": 470}', b"{"):
                reply = await raw.request(f"backbeat.{CLUSTER}.control", payload, timeout=3)
                seen["control"].append(reply.data)
        if not killed and applied and event.kind == "beat" and event.frame.beat_index >= applied[1] + 5:
            cluster.nodes[leader].send_signal(signal.SIGKILL)
            killed = True
        if matched >= 40 and killed and terms:
            break
    predicting.cancel()
    # Timeline replies (one from a request, the HTTP body of every node still up).
    reply = await raw.request(f"backbeat.{CLUSTER}.timeline", b"{}", timeout=3)
    seen["timelines"].append(reply.data)
    for i in range(3):
        if i != leader:
            status, body = http("GET", cluster.admin[i], "/timeline")
            if status == 200:
                seen["timelines"].append(body)
    final = decode_timeline(reply.data, CLUSTER)
    await client.close()
    await raw.close()
    print(f"answered {matched} beats of {frames} frames; gaps {gaps}; new terms {terms}; scheduled {scheduled};"
          f" applied {applied}; delivery offset {client.delivery_offset_ns} ns")
    if matched < 40:
        failures.append(f"only {matched} beats answered")
    if scheduled != (480, apply_at) or applied != (480, apply_at):
        failures.append(f"tempo change: scheduled {scheduled}, applied {applied}, apply_at {apply_at}")
    if not gaps:
        failures.append("no gap event for the failover")
    if not any(t > initial_term for t in terms) or final.term <= initial_term:
        failures.append(f"no new term: {terms}, timeline term {final.term}")
    if seen["refused"] != ["missing_field"]:
        failures.append(f"refusals: {seen['refused']}")
    return seen


def validate(seen, validators, failures):
    counts = {}
    for data in seen["frames"]:
        o = json.loads(data)
        for e in validators["beatframe.v1.json"].iter_errors(o):
            if o != {"type": "backbeat.beatframe.v1"}:  # our own bad frame must fail it
                failures.append(f"frame {data}: {e.message}")
        if o != {"type": "backbeat.beatframe.v1"} and list(o)[:10] != FRAME_KEYS:
            failures.append(f"frame keys out of order: {list(o)}")
        counts["frames"] = counts.get("frames", 0) + 1
    if not any(validators["beatframe.v1.json"].iter_errors({"type": "backbeat.beatframe.v1"})):
        failures.append("the schema accepts a frame with missing fields")
    for data in seen["timelines"]:
        for e in validators["timeline.v1.json"].iter_errors(json.loads(data)):
            failures.append(f"timeline {data}: {e.message}")
        counts["timelines"] = counts.get("timelines", 0) + 1
    for data in seen["control"]:
        o = json.loads(data)
        name = "tempo-change.v1.json" if o.get("type") == "backbeat.tempo_change.v1" else "control-reply.v1.json"
        for e in validators[name].iter_errors(o):
            failures.append(f"control {data}: {e.message}")
        counts[name] = counts.get(name, 0) + 1
    print(f"validated against docs/schema: {counts}")
    if counts.get("tempo-change.v1.json", 0) < 1 or counts.get("control-reply.v1.json", 0) < 2:
        failures.append(f"expected a tempo announcement and two control replies: {counts}")


def main():
    validators = schemas()
    cluster = Cluster(bpm=500, max_bpm=600)
    failures = []
    try:
        leader = cluster.leader()
        if leader is None:
            print(cluster.logs())
            sys.exit("no leader")
        # Start mid-bar.
        def mid_bar():
            status, body = http("GET", cluster.admin[leader], "/timeline")
            if status != 200:
                return False
            k = decode_timeline(body, CLUSTER).beat_at(time.time_ns())
            return k >= 8 and 2 <= k % 8 <= 5
        if not wait_until(10, mid_bar):
            sys.exit("no timeline on the leader\n" + cluster.logs())
        seen = asyncio.run(asyncio.wait_for(scenario(cluster, leader, validators, failures), 50))
        validate(seen, validators, failures)
    finally:
        logs = cluster.logs()
        cluster.close()
    report(failures, logs, "python client: ok")


def report(failures, logs, ok):
    """The first failures and the nodes' logs, exit status 1; or `ok`."""
    if failures:
        print("\n".join(failures[:10]))
        print(logs)
        sys.exit(1)
    print(ok)



def test_main() -> None:
    """pytest entry: the same run as `python test_live.py` against a live 3-node cluster (PULSE_BIN)."""
    main()


if __name__ == "__main__":
    main()
