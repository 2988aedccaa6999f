#!/usr/bin/env python3
"""perf/loop_wakes.py TID < `perf script` output — where the pulse's
loop thread spends its CPU, per kind of wake (issue 24).

Input: `perf script -F tid,cpu,time,event,trace` of `perf record -e
sched:sched_switch -e raw_syscalls:sys_enter -e raw_syscalls:sys_exit -C CPU`
over a window. A *run* is the loop thread's time from being switched in to
being switched out (what /proc/PID/task/TID/schedstat sums). Each run is
named by the syscalls it made:
  beat   — write(2): the beat frame written by the loop (with its timer read,
           planner, TX-stamp read and the next arm)
  timer  — a timer read without a frame (the client's PING timer, housekeeping)
  inbound— recvfrom(2) (the echo of its own frame, a PONG, …)
  client — sendto(2) only (a PING or PONG the client queued through the doorway)
  other  — anything else
The beats are the runs that wrote a frame (the loop's direct write(2); a
frame the client writes for it is a sendto and is not counted). Prints the total per beat, then per kind: runs, runs per beat, µs
per run (p50 / mean), µs per beat, and the syscalls per beat.
"""
import re
import sys
from collections import Counter, defaultdict

NAMES = {0: "read", 1: "write", 44: "sendto", 45: "recvfrom", 47: "recvmsg", 55: "getsockopt",
         441: "epoll_pwait2", 232: "epoll_wait", 281: "epoll_pwait", 286: "timerfd_settime",
         202: "futex", 233: "epoll_ctl", 20: "writev", 46: "sendmsg", 7: "poll", 228: "clock_gettime"}

def main():
    tid = int(sys.argv[1])
    line_re = re.compile(r"^\s*(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")
    running_since = None
    run_calls = []
    runs = []  # (duration µs, Counter of syscalls)
    for line in sys.stdin:
        m = line_re.match(line)
        if not m:
            continue
        t_tid, _cpu, t, event, rest = int(m.group(1)), m.group(2), float(m.group(3)), m.group(4), m.group(5)
        if event == "sched:sched_switch":
            nxt = re.search(r"next_pid=(\d+)", rest)
            prv = re.search(r"prev_pid=(\d+)", rest)
            if nxt and int(nxt.group(1)) == tid:
                running_since = t
                run_calls = []
            elif prv and int(prv.group(1)) == tid and running_since is not None:
                runs.append(((t - running_since) * 1e6, Counter(run_calls)))
                running_since = None
        elif event == "raw_syscalls:sys_enter" and t_tid == tid and running_since is not None:
            nr = re.search(r"NR (\d+)", rest)
            if nr:
                run_calls.append(NAMES.get(int(nr.group(1)), "nr" + nr.group(1)))
    kinds = defaultdict(list)
    for dur, calls in runs:
        if calls["write"]:
            kind = "beat"
        elif calls["read"]:
            kind = "timer"
        elif calls["recvfrom"]:
            kind = "inbound"
        elif calls["sendto"]:
            kind = "client"
        else:
            kind = "other"
        kinds[kind].append((dur, calls))
    total = sum(d for d, _ in runs)
    beats = max(1, len(kinds.get("beat", [])))
    print(f"loop thread {tid}: {len(runs)} runs, {total:.0f} µs over {beats} beats (frame writes) = {total / beats:.1f} µs/beat")
    print(f"{'kind':8} {'runs':>6} {'runs/beat':>10} {'µs p50':>8} {'µs mean':>8} {'µs/beat':>8}  syscalls per beat")
    for kind in ["beat", "timer", "inbound", "client", "other"]:
        rs = kinds.get(kind, [])
        if not rs:
            continue
        ds = sorted(d for d, _ in rs)
        calls = Counter()
        for _, c in rs:
            calls.update(c)
        per = ", ".join(f"{n} {c / beats:.2f}" for n, c in calls.most_common())
        print(f"{kind:8} {len(rs):6d} {len(rs) / beats:10.2f} {ds[len(ds) // 2]:8.1f} {sum(ds) / len(ds):8.1f} "
              f"{sum(ds) / beats:8.1f}  {per}")

if __name__ == "__main__":
    main()
