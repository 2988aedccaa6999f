// Bench/SendFloor.swift — the bare C publisher (Sources/BenchFloor) measured in
// the same run as the pulse: what a beat costs on this machine when nothing
// but the beat is done. Two runs of it, each `--seconds` long at the beat
// rate on the pulse's core and priority:
//
// - spin: woken `leadNs` early by a CLOCK_REALTIME timerfd, spins to the
//   instant, writes the frame: its decision → TX timestamp is the send-path
//   floor the spin mode's jitter is judged against (issue 24);
// - timer only: woken at the instant, writes the frame: its |decision −
//   instant| is a timerfd wake (beside cyclictest's clock_nanosleep wake at
//   the period), and its thread CPU for the wake and the write is the CPU
//   floor of one beat (one timer wake + one frame write).
//
// The frame is a real BeatFrame from PulseCore's encoder (this cluster's id,
// the default phases, a 4-character node id), sent as one `PUB` to the same
// nats-server on a socket with the pulse's options and TX timestamps.

import BenchFloor
import CLoop
import Foundation
import PulseCore

#if canImport(Glibc)
    import Glibc
#endif

/// What one run of the bare publisher measured.
struct SendFloor {
    var leadNs: Int64
    var beats = 0
    /// |spin exit (or wake) − instant|.
    var decision = Latencies()
    var decisionToTx = Latencies()
    var decisionToWrite = Latencies()
    /// Thread CPU per beat: the wake and the write; the write alone; reading the TX stamp.
    var cpuWakeWriteUs: Double? = nil
    var cpuWriteUs: Double? = nil
    var cpuTxUs: Double? = nil
    var frameBytes = 0
    var source: String
    var notes: [String] = []
}

/// The `PUB` the pulse writes for one beat: a real frame on `subject`.
func benchFramePUB(clusterId: String, subject: String) -> [UInt8] {
    let encoder = BeatFrameEncoder(clusterId: clusterId, phases: ["plan", "work", "review"], nodeId: "bench-node")
    let windowIds = WindowIdCache(clusterId: clusterId)
    windowIds.prepare(barStart: 1_000_000)
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: encoder.maxFrameBytes, alignment: 8)
    defer { buffer.deallocate() }
    let nowMs = cloop_realtime_ns() / 1_000_000
    let length = encoder.encode(
        into: buffer, beatIndex: 1_000_001, downbeat: false, phaseIndex: 1,
        hlc: HLCStamp(wallMs: nowMs, counter: 0), deadlineUnixMs: nowMs + 100, tempoBpm: 600,
        windowId: windowIds.lookup(barStart: 1_000_000)!, term: 1, degraded: false)
    let frame = Array(UnsafeRawBufferPointer(rebasing: buffer[0..<max(0, length)]))
    return Array("PUB \(subject) \(frame.count)\r\n".utf8) + frame + Array("\r\n".utf8)
}

/// Runs the bare publisher for `seconds` at `bpm` (see the file header).
func measureSendFloor(url: String, bpm: Int, seconds: Int, cpu: Int, priority: Int, leadNs: Int64) -> SendFloor {
    var floor = SendFloor(
        leadNs: leadNs,
        source: "bare C: CLOCK_REALTIME timerfd + epoll"
            + (leadNs > 0 ? ", \(leadNs / 1000) µs early + spin" : " at the instant")
            + ", one frame PUB write(2) + TX stamp, cpu \(cpu)" + (priority > 0 ? ", SCHED_FIFO \(priority)" : ""))
    let hostPort = url.replacingOccurrences(of: "nats://", with: "").split(separator: ",").first.map(String.init) ?? ""
    let parts = hostPort.split(separator: ":")
    guard parts.count == 2, let port = Int32(parts[1]) else {
        floor.notes.append("send floor: bad URL \(url)")
        return floor
    }
    let message = benchFramePUB(clusterId: "bench-floor", subject: "bench.sendfloor.\(getpid())")
    floor.frameBytes = message.count
    let periodNs = Int64(60_000_000_000) / Int64(max(1, bpm))
    let beats = max(1, Int(Int64(seconds) * 1_000_000_000 / periodNs))
    var records = [bench_floor_beat_t](repeating: bench_floor_beat_t(), count: beats)
    var error = [CChar](repeating: 0, count: 128)
    var notes = [CChar](repeating: 0, count: 256)
    var done: Int32 = 0
    let host = String(parts[0])
    let ok = runOnThread(seconds: Double(seconds) + 15) {
        host.withCString { hostC in
            message.withUnsafeBufferPointer { bytes in
                var config = bench_floor_config_t(
                    host: hostC, port: port, message: bytes.baseAddress, message_len: Int32(bytes.count),
                    period_ns: periodNs, lead_ns: leadNs, beats: Int32(beats), cpu: Int32(cpu),
                    priority: Int32(priority))
                done = bench_floor_run(&config, &records, &error, &notes)
            }
        }
    }
    if !ok { floor.notes.append("send floor did not finish in time") }
    if error[0] != 0 { floor.notes.append("send floor: " + String(cString: error)) }
    if notes[0] != 0 { floor.notes.append("send floor: " + String(cString: notes)) }
    guard done > 0 else { return floor }
    var cpuWakeWrite: Int64 = 0
    var cpuWrite: Int64 = 0
    var cpuTx: Int64 = 0
    for b in records.prefix(Int(done)) {
        floor.decision.record(ns: abs(b.decision_ns - b.instant_ns))
        floor.decisionToWrite.record(ns: b.write_ns - b.decision_ns)
        if b.tx_ns != 0 { floor.decisionToTx.record(ns: b.tx_ns - b.decision_ns) }
        cpuWakeWrite += b.cpu_wake_write_ns
        cpuWrite += b.cpu_write_ns
        cpuTx += b.cpu_tx_ns
    }
    floor.beats = Int(done)
    floor.cpuWakeWriteUs = Double(cpuWakeWrite) / 1000 / Double(done)
    floor.cpuWriteUs = Double(cpuWrite) / 1000 / Double(done)
    floor.cpuTxUs = Double(cpuTx) / 1000 / Double(done)
    return floor
}

extension CpuFloor {
    /// The CPU floor of one beat from the timer-only bare publisher: one
    /// timer wake and one frame write (its TX-stamp read shown apart).
    init(_ send: SendFloor) {
        self.init()
        usPerBeat = send.cpuWakeWriteUs
        writeUsPerBeat = send.cpuWriteUs
        wakes = send.beats
        source = send.source
        notes = send.notes
    }
}
