// Bench/Baseline.swift — the straightforward Swift beat loop the pulse is
// compared with, measured the same way in the same run.
//
// It runs as a child process (`Bench __baseline …`) so it can be pinned to the
// pulse's core at the pulse's priority (threads inherit both) and its CPU time
// read on its own: a DispatchSourceTimer on a serial queue, scheduled on the
// wall clock for each beat's instant; on each fire Foundation's JSONEncoder
// encodes the same frame fields and the NATS C client publishes it in its
// default threaded mode (its flusher thread writes). It prints one line per
// beat (index, scheduled, wake, publish, done, bytes allocated by jemalloc on
// the firing thread) and the process CPU time over the beats.

import CLoop
import CNats
import Dispatch
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

private struct BaselineFrame: Encodable {
    var type = "backbeat.beatframe.v1"
    var cluster_id: String
    var beat_index: Int64
    var downbeat: Bool
    var phase: String
    var hlc: String
    var deadline_at: String
    var tempo_bpm: Int64
    var window_id: String
    var term: Int64
}

let baselineWarmupBeats: Int64 = 2

/// `Bench __baseline URL BPM BEATS CPU PRIORITY START_NS`: the child's entry point.
func baselineChildMain(_ args: [String]) -> Never {
    guard args.count == 6, let bpm = Int64(args[1]), let beats = Int64(args[2]), let cpu = Int32(args[3]),
        let priority = Int32(args[4]), let startNs = Int64(args[5])
    else {
        fputs("Bench __baseline: bad arguments\n", stderr)
        exit(2)
    }
    if cloop_pin_to_cpu(cpu) != 0 { print("note could not pin to cpu \(cpu)") }
    if priority > 0, cloop_set_fifo_priority(priority) != 0 { print("note SCHED_FIFO \(priority) refused") }
    var connection: OpaquePointer?
    guard natsConnection_ConnectTo(&connection, args[0]) == NATS_OK else {
        print("note cannot connect to \(args[0])")
        exit(1)
    }
    let subject = "backbeat.bench-baseline.beat"
    let period = 60_000_000_000 / bpm
    let phases = ["plan", "work", "review"]
    let encoder = JSONEncoder()
    let dates = ISO8601DateFormatter()
    dates.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    let queue = DispatchQueue(label: "baseline.beat", qos: .userInteractive)
    let timer = DispatchSource.makeTimerSource(flags: .strict, queue: queue)
    let finished = DispatchSemaphore(value: 0)
    var lines: [String] = []
    lines.reserveCapacity(Int(beats) + 4)
    var k: Int64 = 0
    var cpuStart: Int64 = 0
    var cpuEnd: Int64 = 0
    func cpuNow() -> Int64 {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return (Int64(usage.ru_utime.tv_sec) + Int64(usage.ru_stime.tv_sec)) * 1_000_000_000
            + (Int64(usage.ru_utime.tv_usec) + Int64(usage.ru_stime.tv_usec)) * 1000
    }
    func schedule(_ beat: Int64) {
        let at = startNs + beat * period
        timer.schedule(
            wallDeadline: DispatchWallTime(
                timespec: timespec(tv_sec: Int(at / 1_000_000_000), tv_nsec: Int(at % 1_000_000_000))),
            leeway: .nanoseconds(0))
    }
    timer.setEventHandler {
        let wake = cloop_realtime_ns()
        // Skip beats whose instant passed half a period ago (as the pulse does).
        while k < beats && wake - (startNs + k * period) >= period / 2 {
            lines.append("missed \(k)")
            k += 1
        }
        if k >= beats {
            finished.signal()
            return
        }
        if k == baselineWarmupBeats { cpuStart = cpuNow() }
        let counter = cloop_thread_allocated_counter()
        let allocated0 = counter?.pointee ?? 0
        let scheduled = startNs + k * period
        let wallMs = wake / 1_000_000
        let frame = BaselineFrame(
            cluster_id: "bench-baseline", beat_index: k, downbeat: k % 8 == 0, phase: phases[Int(k % 8) * 3 / 8],
            hlc: String(format: "%llx:%04x:node", wallMs, 0),  // the §2 form, so the shared decoder reads it
            deadline_at: dates.string(from: Date(timeIntervalSince1970: Double(scheduled + period) / 1e9)),
            tempo_bpm: bpm, window_id: String(format: "%032llx", UInt64(k / 8) &* 0x9E37_79B9_7F4A_7C15), term: 1)
        if let data = try? encoder.encode(frame) {
            _ = data.withUnsafeBytes { natsConnection_Publish(connection, subject, $0.baseAddress, Int32($0.count)) }
        }
        let done = cloop_realtime_ns()
        let allocated = (counter?.pointee ?? 0) &- allocated0
        lines.append("beat \(k) \(scheduled) \(wake) \(wake) \(done) \(allocated)")
        k += 1
        if k >= beats {
            cpuEnd = cpuNow()
            finished.signal()
        } else {
            schedule(k)
        }
    }
    schedule(0)
    timer.resume()
    let waitSeconds = Double(startNs - cloop_realtime_ns()) / 1e9 + Double(beats * period) / 1e9 + 5
    if finished.wait(timeout: .now() + max(1, waitSeconds)) != .success { lines.append("note timed out") }
    timer.cancel()
    natsConnection_FlushTimeout(connection, 2000)
    natsConnection_Destroy(connection)
    queue.sync {}
    let measured = max(0, beats - baselineWarmupBeats)
    if cpuEnd > cpuStart { lines.append("cpu_ns \(cpuEnd - cpuStart) beats \(measured)") }
    if cloop_thread_allocated_counter() == nil { lines.append("note jemalloc counter unavailable") }
    print(lines.joined(separator: "\n"))
    exit(0)
}

/// Runs the baseline child at `bpm` for the scenario window and measures it like the pulse.
func runBaseline(_ ctx: BenchContext, bpm: Int, timerFloor: Floor, natsFloor: Floor) throws -> ScenarioResult {
    var result = ScenarioResult(name: "baseline", bpm: bpm, timerFloor: timerFloor, natsFloor: natsFloor)
    let period = Int64(60_000_000_000) / Int64(bpm)
    let beats = Int64(ctx.options.seconds) * 1_000_000_000 / period + baselineWarmupBeats
    let receiver = try Receiver(url: ctx.natsURL, subject: "backbeat.bench-baseline.beat", payload: .beatFrame)
    defer { receiver.close() }
    let startNs = (cloop_realtime_ns() / 1_000_000_000 + 2) * 1_000_000_000
    let child = try Child(
        name: "baseline", path: executableDirectory() + "/Bench",
        arguments: ["__baseline", ctx.natsURL, "\(bpm)", "\(beats)", "\(ctx.cpu)", "\(ctx.priority)", "\(startNs)"],
        outputPath: ctx.tempDir + "/baseline.out")
    let status = child.wait(seconds: Double(startNs - cloop_realtime_ns()) / 1e9 + Double(beats * period) / 1e9 + 15)
    if status != 0 { result.notes.append("baseline child exited with status \(status)") }
    sleepSeconds(0.3)
    var publishByIndex: [Int64: Int64] = [:]
    var allocated: UInt64 = 0
    var cpuNs: Int64? = nil
    for line in child.output.split(separator: "\n") {
        let f = line.split(separator: " ")
        switch f.first {
        case "beat":
            guard f.count == 7, let k = Int64(f[1]), let sched = Int64(f[2]), let pub = Int64(f[4]),
                let bytes = UInt64(f[6]), k >= baselineWarmupBeats
            else { continue }
            result.published += 1
            publishByIndex[k] = pub
            result.jitter.record(ns: abs(pub - sched))
            allocated += bytes
        case "cpu_ns": cpuNs = f.count >= 2 ? Int64(f[1]) : nil
        case "note": result.notes.append(f.dropFirst().joined(separator: " "))
        default: break
        }
    }
    result.beats = Int(beats - baselineWarmupBeats)
    var seen = Set<Int64>()
    for rx in receiver.snapshot() where rx.value >= baselineWarmupBeats && rx.value < beats && !seen.contains(rx.value)
    {
        seen.insert(rx.value)
        result.received += 1
        result.delivery.record(ns: rx.receivedNs - (startNs + rx.value * period))
        if let pub = publishByIndex[rx.value], rx.receivedNs < pub { result.crossCheckViolations += 1 }
    }
    if result.published > 0 {
        result.allocatedBytesPerBeat = Double(allocated) / Double(result.published)
        if let cpuNs { result.cpuUsPerBeat = Double(cpuNs) / 1000 / Double(result.published) }
    }
    if result.published < result.beats { result.notes.append("\(result.beats - result.published) beats missed") }
    if result.received < result.published {
        result.notes.append("\(result.published - result.received) published frames not received")
    }
    result.notes.append(
        "allocation counted on the firing thread (encode + publish call); the flusher thread's writes not included")
    return result
}
