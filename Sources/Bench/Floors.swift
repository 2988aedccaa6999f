// Bench/Floors.swift — the same-run floors every figure is compared with.
//
// Timer-wake floor: the kernel's own timer-wake latency on the pulse's core at
// the pulse's real-time priority — cyclictest (rt-tests) when installed, its
// histogram parsed; otherwise our own probe: a CLOCK_REALTIME timerfd (the
// pulse's kind of timer, through CLoop) armed at absolute instants 1 ms apart,
// wake − target recorded.
//
// cyclictest runs with `--laptop`: by default it holds /dev/cpu_dma_latency
// at 0 while it runs, a PM QoS request the pulse never makes. On a KVM guest
// with the `haltpoll` cpuidle driver (this VM) that request keeps the idle
// vCPU polling instead of halting, and a timer then wakes it without a VM
// exit: 2–3× faster on average (cyclictest --laptop at 50 ms: avg 69–83 µs
// alone, 29–33 µs while another process held the request; 2026-12-07). A
// floor measured so is not the pulse's machine state: it was most of the
// "~110 µs" timer-only mode seemed to add (docs/benchmark.md).
// NATS floor: a message stamped with CLOCK_REALTIME just before it is
// published (C client, SendAsap, publisher thread on the pulse's core at its
// priority) and timed on receipt by the same subscriber code as the frames,
// at the scenario's beat rate.

import CLoop
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

struct Floor {
    var latencies = Latencies()
    var source: String
    var notes: [String] = []
}

/// Runs `body` on a new thread and waits for it at most `seconds`.
func runOnThread(seconds: Double, _ body: @escaping () -> Void) -> Bool {
    let done = DispatchSemaphore(value: 0)
    let thread = Thread {
        body()
        done.signal()
    }
    thread.stackSize = 1 << 20
    thread.start()
    return done.wait(timeout: .now() + seconds) == .success
}

// MARK: - Timer-wake floor

/// The kernel's timer-wake latency on `cpu` at `priority`, waking every
/// `intervalUs` (1000: the classic 1 ms loop; the beat period: the pulse's
/// own sleep length, which meets a hypervisor's stalls more often).
func measureTimerFloor(seconds: Int, cpu: Int, priority: Int, tempDir: String, intervalUs: Int = 1000) -> Floor {
    if let cyclictest = findTool("cyclictest") {
        var args = ["-m", "--laptop", "-q", "-D", "\(seconds)", "-a", "\(cpu)", "-i", "\(intervalUs)", "-h", "10000"]
        if priority > 0 { args += ["-p", "\(priority)"] }
        do {
            let child = try Child(
                name: "cyclictest", path: cyclictest, arguments: args,
                outputPath: tempDir + "/cyclictest-\(intervalUs).out")
            let status = child.wait(seconds: Double(seconds) + 15)
            if status == 0,
                let floor = parseCyclictest(child.output, priority: priority, cpu: cpu, intervalUs: intervalUs),
                floor.latencies.count > 0
            {
                return floor
            }
            var floor = timerfdProbe(seconds: seconds, cpu: cpu, priority: priority, intervalUs: intervalUs)
            floor.notes.append("cyclictest failed (status \(status)); used the timerfd probe")
            return floor
        } catch {
            var floor = timerfdProbe(seconds: seconds, cpu: cpu, priority: priority, intervalUs: intervalUs)
            floor.notes.append("cyclictest could not start (\(error)); used the timerfd probe")
            return floor
        }
    }
    var floor = timerfdProbe(seconds: seconds, cpu: cpu, priority: priority, intervalUs: intervalUs)
    floor.notes.append("cyclictest not installed (apt-get install rt-tests); used the timerfd probe")
    return floor
}

/// Parses `cyclictest -h` output: "NNNNNN CCCCCC" lines (µs, count) plus the
/// overflow count, recorded at the reported maximum (an upper bound).
func parseCyclictest(_ text: String, priority: Int, cpu: Int, intervalUs: Int = 1000) -> Floor? {
    var floor = Floor(
        source: "cyclictest --laptop -i \(intervalUs) -a \(cpu)" + (priority > 0 ? " -p \(priority)" : "")
            + " (µs resolution; no PM QoS request, as the pulse)")
    var overflows: UInt64 = 0
    var maxUs: Int64 = 0
    for line in text.split(separator: "\n") {
        if line.hasPrefix("# Histogram Overflows:") {
            overflows = UInt64(line.split(separator: ":").last!.trimmingCharacters(in: .whitespaces)) ?? 0
        } else if line.hasPrefix("# Max Latencies:") {
            maxUs = Int64(line.split(separator: ":").last!.trimmingCharacters(in: .whitespaces)) ?? 0
        } else if !line.hasPrefix("#") {
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            guard parts.count >= 2, let us = Int64(parts[0]), let n = UInt64(parts[1]) else { continue }
            if n > 0 { floor.latencies.record(ns: us * 1000, count: n) }
        }
    }
    if overflows > 0 {
        floor.latencies.record(ns: max(maxUs, 10_000) * 1000, count: overflows)
        floor.notes.append("\(overflows) cyclictest samples above 10 ms counted at its max (\(maxUs) µs)")
    }
    return floor
}

/// A probe thread's set-up: pins the calling thread to `cpu` at `priority`
/// with 1 ns timer slack, makes a CLoop with a CLOCK_REALTIME timer and runs
/// `body` with it (problems are appended, naming `what`).
func withPinnedTimer(
    cpu: Int, priority: Int, what: String, problems: inout [String], _ body: (PinnedTimer) -> Void
) {
    if cloop_pin_to_cpu(Int32(cpu)) != 0 { problems.append("could not pin the \(what) to cpu \(cpu)") }
    if priority > 0, cloop_set_fifo_priority(Int32(priority)) != 0 {
        problems.append("SCHED_FIFO \(priority) refused for the \(what)")
    }
    _ = cloop_set_timer_slack_ns(1)
    guard let loop = cloop_create(8, 8) else {
        problems.append("cloop_create failed")
        return
    }
    defer { cloop_destroy(loop) }
    var token: UInt32 = 0
    guard cloop_timer_create(loop, CLOCK_REALTIME, &token) == 0 else {
        problems.append("timerfd_create failed")
        return
    }
    body(PinnedTimer(loop: loop, token: token))
}

/// A CLOCK_REALTIME timer on its own CLoop (`withPinnedTimer`). Waiting
/// allocates nothing (the CPU floor measures the thread's CPU across it).
final class PinnedTimer {
    let loop: OpaquePointer
    let token: UInt32
    private var events = [cloop_event_t](repeating: cloop_event_t(), count: 8)

    init(loop: OpaquePointer, token: UInt32) {
        self.loop = loop
        self.token = token
    }

    /// Sleeps until the timer fires at `targetNs` (absolute): the realtime
    /// clock when the wake was seen (before the timer is read), or nil after
    /// a bounded number of 50 ms waits (a period and 5 s).
    func wait(untilNs targetNs: Int64, periodNs: Int64) -> Int64? {
        _ = cloop_timer_arm_at(loop, token, targetNs, false)
        for _ in 0..<(100 + Int(periodNs / 50_000_000)) {
            let n = events.withUnsafeMutableBufferPointer { cloop_wait(loop, $0.baseAddress, 8, 50_000_000) }
            if n > 0, events.prefix(Int(n)).contains(where: { $0.token == token }) {
                let woke = cloop_realtime_ns()
                _ = cloop_timer_read(loop, token)
                return woke
            }
        }
        return nil
    }
}

/// Our own probe: CLOCK_REALTIME timerfd at absolute instants `intervalUs`
/// apart on `cpu` at `priority`; records wake − target. Bounded by the
/// number of wakes that fit in `seconds`.
func timerfdProbe(seconds: Int, cpu: Int, priority: Int, intervalUs: Int = 1000) -> Floor {
    let intervalNs = Int64(max(1, intervalUs)) * 1000
    var floor = Floor(
        source: "timerfd probe (CLOCK_REALTIME, \(intervalUs) µs, cpu \(cpu), prio \(priority))")
    var samples: [Int64] = []
    var problems: [String] = []
    let ok = runOnThread(seconds: Double(seconds) + 10) {
        withPinnedTimer(cpu: cpu, priority: priority, what: "probe", problems: &problems) { timer in
            let wakes = max(1, Int(Int64(seconds) * 1_000_000_000 / intervalNs))
            samples.reserveCapacity(wakes)
            var target = cloop_realtime_ns() + intervalNs
            for _ in 0..<wakes {
                if let woke = timer.wait(untilNs: target, periodNs: intervalNs) {
                    samples.append(woke - target)
                }
                target = max(target + intervalNs, cloop_realtime_ns() + 100_000)
            }
        }
    }
    if !ok { problems.append("timerfd probe did not finish in time") }
    for s in samples { floor.latencies.record(ns: s) }
    floor.notes += problems
    return floor
}

// MARK: - NATS loopback floor

func measureNatsFloor(url: String, bpm: Int, seconds: Int, cpu: Int, priority: Int) -> Floor {
    var floor = Floor(source: "NATS C client, SendAsap publish → threaded subscriber, \(bpm)/min")
    let subject = "bench.floor.\(getpid()).\(bpm)"
    do {
        let receiver = try Receiver(url: url, subject: subject, payload: .stamp)
        defer { receiver.close() }
        let publisher = try Publisher(url: url, sendAsap: true)
        let period = Int64(60_000_000_000) / Int64(bpm)
        let count = max(1, Int(Int64(seconds) * 1_000_000_000 / period))
        var sent = 0
        var problems: [String] = []
        let ok = runOnThread(seconds: Double(seconds) + 10) {
            if cloop_pin_to_cpu(Int32(cpu)) != 0 { problems.append("could not pin the floor publisher to cpu \(cpu)") }
            if priority > 0, cloop_set_fifo_priority(Int32(priority)) != 0 {
                problems.append("SCHED_FIFO \(priority) refused for the floor publisher")
            }
            var buffer = [UInt8](repeating: 0, count: 32)
            let start = (cloop_realtime_ns() / 100_000_000 + 3) * 100_000_000
            for k in 0..<count {
                sleepUntilRealtime(start + Int64(k) * period)
                let stamp = cloop_realtime_ns()
                var n = 0
                var v = stamp
                var digits = [UInt8](repeating: 0, count: 20)
                while v > 0 && n < 20 {
                    digits[n] = UInt8(48 + v % 10)
                    v /= 10
                    n += 1
                }
                for i in 0..<n { buffer[i] = digits[n - 1 - i] }
                if buffer.withUnsafeBytes({ publisher.publish(subject, UnsafeRawBufferPointer(rebasing: $0[0..<n])) }) {
                    sent += 1
                }
            }
        }
        if !ok { problems.append("NATS floor publisher did not finish in time") }
        waitUntil(seconds: 2) { receiver.received >= sent }
        let got = receiver.snapshot()
        for r in got { floor.latencies.record(ns: r.receivedNs - r.value) }
        if got.count < sent { problems.append("NATS floor: \(sent - got.count) of \(sent) messages not received") }
        floor.notes += problems
    } catch {
        floor.notes.append("NATS floor failed: \(error)")
    }
    return floor
}
