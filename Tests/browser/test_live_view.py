#!/usr/bin/env python3
"""The live view (GET / on the admin port) in real headless Chromium against a
live 3-node cluster: real nats-server, real `pulse` processes, loopback, free
ports, an admin token. An independent NATS subscriber (raw protocol) records
every frame on the beat subject. The page, opened on a follower, must show:

- the beat index advancing in step with the frames on the subject (within one beat);
- the downbeat cell lit on downbeats (and the right cell on other beats);
- the admin token asked for (401), the API's refusals (422, 409) as they are,
  and a tempo change made from the page scheduled (202), then applied, as the
  frames on the subject confirm;
- the leader changing after the leader is killed (SIGKILL), the old leader
  shown gone, and the beat still in step;
- a page on the killed node reconnecting by itself once the node is back.

Saves a screenshot to run/live-view.png (docs/live-view.png with UPDATE_SCREENSHOT=1). Bounded: the whole run is stopped
after 58 s.

    PULSE_BIN=.build/debug/pulse python3 Tests/browser/test_live_view.py
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
CLUSTER = "liveview"
BPM, NEW_BPM, BAR = 240, 264, 8
TOKEN = "page-token"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
except ImportError:
    sys.exit("FAIL test_live_view: python3-selenium is missing (make deps installs chromium chromium-driver "
             "python3-selenium)")
for tool in (CHROMIUM, CHROMEDRIVER):
    if not os.access(tool, os.X_OK):
        sys.exit(f"FAIL test_live_view: {tool} is missing (make deps installs chromium chromium-driver)")
if not os.environ.get("PULSE_BIN"):
    sys.exit("FAIL test_live_view: set PULSE_BIN to the pulse binary (make test-browser does)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(seconds, condition, step=0.05):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    return condition()


def http(method, port, path):
    try:
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method),
                                    timeout=2) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, {}
    except (OSError, ValueError):
        return 0, {}


class Frames(threading.Thread):
    """Every frame on the beat subject, with its arrival time (raw NATS protocol)."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.lock = threading.Lock()
        self.frames = []

    def run(self):
        reader = self.sock.makefile("rb")
        reader.readline()  # INFO
        self.sock.sendall(f"CONNECT {{\"verbose\":false}}\r\nSUB backbeat.{CLUSTER}.beat 1\r\n".encode())
        self.sock.settimeout(None)
        while True:
            line = reader.readline()
            if not line:
                return
            if line.startswith(b"MSG"):
                payload = reader.read(int(line.split()[-1]))
                reader.read(2)
                with self.lock:
                    self.frames.append((time.time(), json.loads(payload)))
            elif line.startswith(b"PING"):
                self.sock.sendall(b"PONG\r\n")

    def latest(self):
        with self.lock:
            return self.frames[-1][1] if self.frames else None

    def all(self):
        with self.lock:
            return [f for _, f in self.frames]


class Cluster:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="backbeat-live-")
        self.nats_port = free_port()
        nats_bin = shutil.which("nats-server") or "/usr/sbin/nats-server"
        self.nats = subprocess.Popen([nats_bin, "-a", "127.0.0.1", "-p", str(self.nats_port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(10, lambda: socket.socket().connect_ex(("127.0.0.1", self.nats_port)) == 0)
        raft = [free_port() for _ in range(3)]
        self.admin = [free_port() for _ in range(3)]
        self.peers = ",".join(f"n{i + 1}@127.0.0.1:{raft[i]}" for i in range(3))
        self.raft = raft
        self.nodes = [self.start(i) for i in range(3)]

    def start(self, i):
        log = open(os.path.join(self.dir, f"n{i + 1}.log"), "a")
        return subprocess.Popen(
            [os.environ["PULSE_BIN"], "-bootstrap", "-bpm", str(BPM), "-max-bpm", "600", "-bar", str(BAR),
             "-cluster", CLUSTER, "-node-id", f"n{i + 1}", "-raft-bind", f"127.0.0.1:{self.raft[i]}",
             "-peers", self.peers, "-nats", f"nats://127.0.0.1:{self.nats_port}", "-admin-token", TOKEN,
             "-data-dir", os.path.join(self.dir, f"n{i + 1}"), "-admin-port", str(self.admin[i])],
            stdout=log, stderr=log)

    def leader(self, seconds=15):
        def find():
            for i, node in enumerate(self.nodes):
                if node.poll() is None:
                    status, body = http("GET", self.admin[i], "/leader")
                    if status == 200 and body.get("is_leader"):
                        return f"n{i + 1}"
            return None
        return wait_until(seconds, find)

    def logs(self):
        out = []
        for i in range(3):
            with open(os.path.join(self.dir, f"n{i + 1}.log")) as f:
                out.append(f"--- n{i + 1}\n" + f.read()[-2500:])
        return "\n".join(out)

    def close(self):
        for p in self.nodes + [self.nats]:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def browser():
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,860", "--hide-scrollbars"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


SHOWN = """
const cells = [...document.querySelectorAll('#bar .cell')];
const lit = cells.filter(c => c.classList.contains('lit'));
return {beat: document.body.dataset.beat === undefined ? null : Number(document.body.dataset.beat),
        text: document.getElementById('beat-index').textContent,
        lit: lit.map(c => Number(c.dataset.i)), litDown: lit.length === 1 && lit[0].classList.contains('down'),
        cells: cells.length, leader: document.body.dataset.leader, term: Number(document.body.dataset.term),
        tempo: Number(document.body.dataset.tempo), pending: document.body.dataset.pending,
        pendingText: document.getElementById('tempo-pending').textContent,
        stream: document.getElementById('stream-status').textContent,
        peers: [...document.querySelectorAll('#peers tr')].map(r => r.textContent),
        result: document.getElementById('tempo-result').textContent,
        status: document.getElementById('tempo-result').dataset.status || '',
        tokenShown: !document.getElementById('token').hidden};
"""


def check_in_step(driver, frames, failures, samples, label):
    """The page's beat index is within one beat of the newest frame on the subject."""
    seen = []
    for _ in range(samples):
        before = frames.latest()["beat_index"]
        shown = driver.execute_script(SHOWN)
        after = frames.latest()["beat_index"]
        if shown["beat"] is None or not (before - 1 <= shown["beat"] <= after + 1) or shown["text"] != str(shown["beat"]):
            failures.append(f"{label}: page shows {shown['beat']} ({shown['text']!r}), subject {before}..{after}")
        seen.append(shown["beat"])
        time.sleep(0.17)
    if len(set(seen)) < samples // 3:
        failures.append(f"{label}: the beat index did not advance: {seen}")
    return seen


def check_downbeat(driver, failures):
    """Wait for a downbeat and another beat; check which cell is lit."""
    states = {"down": None, "other": None}

    def look():
        shown = driver.execute_script(SHOWN)
        if shown["beat"] is not None:
            key = "down" if shown["beat"] % BAR == 0 else "other"
            states[key] = states[key] or shown
        return states["down"] and states["other"]
    wait_until(5, look, step=0.02)
    down, other = states["down"], states["other"]
    if not down or down["lit"] != [0] or not down["litDown"]:
        failures.append(f"downbeat: {down}")
    if not other or other["lit"] != [other["beat"] % BAR] or other["litDown"]:
        failures.append(f"other beat: {other}")
    if down and down["cells"] != BAR:
        failures.append(f"the bar has {down['cells']} cells, not {BAR}")


def submit(driver, bpm, token=None):
    driver.execute_script("document.getElementById('tempo-result').dataset.status = '';")
    field = driver.find_element("id", "tempo-input")
    field.clear()
    field.send_keys(str(bpm))
    if token is not None:
        driver.find_element("id", "token").clear()
        driver.find_element("id", "token").send_keys(token)
    driver.find_element("id", "tempo-submit").click()
    return wait_until(5, lambda: (lambda s: s if s["status"] else None)(driver.execute_script(SHOWN)))


def check_tempo(driver, frames, failures):
    shown = driver.execute_script(SHOWN)
    if not shown["tokenShown"]:
        failures.append("the page does not show the token field although the node has a token")
    answer = submit(driver, NEW_BPM, token="")
    if not answer or answer["status"] != "401":
        failures.append(f"without the token: {answer}")
    answer = submit(driver, 400, token=TOKEN)
    if not answer or answer["status"] != "422" or "delta" not in answer["result"]:
        failures.append(f"+67 %: expected 422 delta_too_large, got {answer}")
    # A change applies at the first downbeat at least one commit round after its
    # commit, which may be very soon: the pending checks need a second or so, so
    # a change scheduled closer than that is let through and another one made.
    tempo = BPM
    for attempt in range(3):
        target = NEW_BPM if tempo == BPM else BPM
        answer = submit(driver, target)
        if not answer or answer["status"] != "202":
            failures.append(f"tempo change to {target}: expected 202, got {answer}")
            return None
        at_beat = int(answer["result"].split("at beat ")[1].split()[0])
        apply_at = datetime.fromisoformat(answer["result"].split("(")[1].rstrip(")").replace("Z", "+00:00"))
        roomy = apply_at.timestamp() - time.time() > 1.2
        if roomy:
            pending = wait_until(1, lambda: (lambda s: s if s["pending"] else None)(driver.execute_script(SHOWN)))
            if not pending or pending["pending"] != f"{target}@{at_beat}" or f"beat {at_beat}, in" not in pending["pendingText"]:
                failures.append(f"pending change not shown with its countdown: {pending}")
            os.makedirs(os.path.join(ROOT, "docs"), exist_ok=True)
            # docs/live-view.png (the README's picture) only when asked, so that
            # `make test` leaves the tree clean: UPDATE_SCREENSHOT=1 make test-browser.
            shot = os.path.join(ROOT, "docs" if os.environ.get("UPDATE_SCREENSHOT") else "run", "live-view.png")
            os.makedirs(os.path.dirname(shot), exist_ok=True)
            driver.save_screenshot(shot)
            # Within 10 % of the tempo in force (so the pending change, not the delta, refuses it).
            refused = submit(driver, (tempo + target) // 2)
            if not refused or refused["status"] != "409":
                failures.append(f"second change while one is pending: expected 409, got {refused}")
        applied = wait_until(8, lambda: (lambda s: s if s["tempo"] == target and not s["pending"] else None)(
            driver.execute_script(SHOWN)))
        if not applied:
            failures.append(f"the change was not shown applied: {driver.execute_script(SHOWN)}")
            return None
        confirmed = [f for f in frames.all() if f["beat_index"] >= at_beat - 2]
        for f in confirmed:
            expected = target if f["beat_index"] >= at_beat else tempo
            if f["tempo_bpm"] != expected:
                failures.append(f"frame {f['beat_index']} at {f['tempo_bpm']} bpm, expected {expected}")
        if not any(f["beat_index"] >= at_beat for f in confirmed):
            failures.append("no frame after the change on the subject")
        print(f"tempo: 401, 422, 202 ({tempo} -> {target} at beat {at_beat}), "
              f"{'pending and 409 shown, ' if roomy else ''}applied")
        tempo = target
        if roomy:
            return at_beat
    failures.append("three changes in a row were scheduled too soon to watch them pending")
    return None


def scenario(cluster, frames, failures):
    leader = cluster.leader()
    if not leader:
        failures.append("no leader")
        return
    wait_until(10, lambda: frames.latest())
    follower = next(i for i in range(3) if f"n{i + 1}" != leader)
    driver = browser()
    try:
        driver.set_page_load_timeout(10)
        driver.get(f"http://127.0.0.1:{cluster.admin[follower]}/")
        if not wait_until(8, lambda: driver.execute_script(SHOWN)["beat"] is not None):
            failures.append(f"the page shows no beat: {driver.execute_script(SHOWN)}")
            return
        shown = driver.execute_script(SHOWN)
        if shown["leader"] != leader:
            failures.append(f"the page shows leader {shown['leader']!r}, the cluster says {leader}")
        print(f"page on n{follower + 1} (a follower); leader {leader}, term {shown['term']}")
        seen = check_in_step(driver, frames, failures, 10, "in step")
        print(f"in step: {seen}")
        check_downbeat(driver, failures)
        check_tempo(driver, frames, failures)

        # A second page, on the leader, that will lose its node.
        old = leader
        old_index = int(old[1:]) - 1
        term = driver.execute_script(SHOWN)["term"]
        driver.switch_to.new_window("tab")
        driver.get(f"http://127.0.0.1:{cluster.admin[old_index]}/")
        if not wait_until(5, lambda: driver.execute_script(SHOWN)["stream"] == "live"):
            failures.append("the page on the leader did not go live")
        leader_tab = driver.current_window_handle
        driver.switch_to.window(driver.window_handles[0])

        cluster.nodes[old_index].send_signal(signal.SIGKILL)
        killed_at = time.time()
        changed = wait_until(10, lambda: (lambda s: s if s["leader"] not in ("", old) and s["term"] > term else None)(
            driver.execute_script(SHOWN)))
        if not changed:
            failures.append(f"the page did not show a new leader: {driver.execute_script(SHOWN)}")
            return
        print(f"leader {old} killed; page shows {changed['leader']} (term {changed['term']}) after "
              f"{time.time() - killed_at:.2f} s")
        if changed["leader"] != cluster.leader(5):
            failures.append(f"the page shows {changed['leader']}, the cluster says {cluster.leader(1)}")
        # Seen from a follower the old leader is out of sight; from the new leader, silent.
        silent = wait_until(5, lambda: any(r.startswith(old) and ("silent" in r or "no contact" in r)
                                           for r in driver.execute_script(SHOWN)["peers"]))
        if not silent:
            failures.append(f"the killed leader is not shown gone: {driver.execute_script(SHOWN)['peers']}")
        wait_until(3, lambda: frames.latest()["term"] > term)
        check_in_step(driver, frames, failures, 6, "in step after failover")

        # The page on the killed node reconnects by itself once the node is back.
        driver.switch_to.window(leader_tab)
        if driver.execute_script(SHOWN)["stream"] == "live":
            failures.append("the page on the killed node still says live")
        cluster.nodes[old_index] = cluster.start(old_index)
        back = wait_until(12, lambda: (lambda s: s if s["stream"] == "live" and s["leader"] == changed["leader"] else None)(
            driver.execute_script(SHOWN)))
        if not back:
            failures.append(f"the page did not reconnect to the restarted node: {driver.execute_script(SHOWN)}")
        else:
            print(f"the page on {old} reconnected by itself after the restart")
    finally:
        driver.quit()


def main():
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("over 58 s")))
    signal.alarm(58)
    cluster = Cluster()
    failures = []
    started = time.time()
    try:
        frames = Frames(cluster.nats_port)
        frames.start()
        scenario(cluster, frames, failures)
    except Exception as e:  # noqa: BLE001 — any error is a failure, reported with the logs
        failures.append(f"{type(e).__name__}: {e}")
    finally:
        signal.alarm(0)
        if failures:
            print(cluster.logs())
        cluster.close()
    print(f"test_live_view: {time.time() - started:.1f} s")
    if failures:
        print("FAIL test_live_view:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("ok test_live_view")


if __name__ == "__main__":
    main()
