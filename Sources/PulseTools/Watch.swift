import ArgumentParser
import CLoop
import CNats
import Foundation
import Glibc
// PulseTools/Watch.swift: `pulse watch` subscribes to a cluster's beat subject and prints one
// readable line per frame, flagging gaps, repeats and a term that goes back.
// It uses the NATS client's own threads (it is a client, not the pulse) and
// decodes with the shared `BeatFrameDecoder` (PulseCore), so it refuses
// exactly what a node refuses and says why.
import Pulse
import PulseCore

/// `pulse watch` options.
struct WatchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pulse watch")

    @Option(
        name: FlagName.both("cluster"), help: "Cluster to watch (env BACKBEAT_CLUSTER_ID; default chorus-aus-01)")
    var cluster: String?
    @Option(name: FlagName.both("nats"), help: "NATS server URL (default nats://localhost:4222)")
    var nats = "nats://localhost:4222"
    @Option(name: FlagName.both("count"), help: "Exit after this many frames (default: run until interrupted)")
    var count: Int?
    @Option(
        name: FlagName.both("timeout-s"),
        help: "Exit with status 1 if no frame arrives for this long (default 0: wait)")
    var timeoutS: Int = 0
    @Flag(name: FlagName.both("raw"), help: "Print each frame's JSON as received")
    var raw = false
}

/// Prints frames from `backbeat.<cluster>.beat` until interrupted or `count` is reached.
final class Watcher {
    private let options: WatchCommand
    private let lock = NSLock()
    private var seen = 0
    private var last: DecodedBeatFrame?
    private var anomalies = 0
    private let done = DispatchSemaphore(value: 0)

    init(options: WatchCommand) { self.options = options }

    func run(environment: [String: String]) throws -> Int32 {
        let cluster = options.cluster ?? environment["BACKBEAT_CLUSTER_ID"] ?? "chorus-aus-01"
        try PulseConfig.checkToken(cluster, what: "-cluster")
        var nc: OpaquePointer?
        var status = natsConnection_ConnectTo(&nc, options.nats)
        guard status == NATS_OK else {
            throw PulseError.startup(
                "cannot connect to \(options.nats): \(String(cString: natsStatus_GetText(status)))")
        }
        defer { natsConnection_Destroy(nc) }
        var sub: OpaquePointer?
        let subject = "backbeat.\(cluster).beat"
        status = natsConnection_Subscribe(
            &sub, nc, subject,
            { _, _, msg, closure in
                let watcher = Unmanaged<Watcher>.fromOpaque(closure!).takeUnretainedValue()
                let receivedNs = cloop_realtime_ns()
                let length = Int(natsMsg_GetDataLength(msg))
                let data = Data(bytes: natsMsg_GetData(msg), count: length)
                natsMsg_Destroy(msg)
                watcher.handle(data, receivedNs: receivedNs)
            }, Unmanaged.passUnretained(self).toOpaque())
        guard status == NATS_OK else {
            throw PulseError.startup("cannot subscribe to \(subject): \(String(cString: natsStatus_GetText(status)))")
        }
        defer { natsSubscription_Destroy(sub) }
        FileHandle.standardError.write(Data("watching \(subject) on \(options.nats)\n".utf8))
        while true {
            let timeout: DispatchTime = options.timeoutS > 0 ? .now() + .seconds(options.timeoutS) : .distantFuture
            if done.wait(timeout: timeout) == .timedOut {
                lock.lock()
                let progressed = seen
                lock.unlock()
                FileHandle.standardError.write(Data("no frame for \(options.timeoutS) s (seen \(progressed))\n".utf8))
                return 1
            }
            lock.lock()
            let finished = options.count.map { seen >= $0 } ?? false
            let bad = anomalies
            lock.unlock()
            if finished { return bad == 0 ? 0 : 3 }
        }
    }

    private func handle(_ data: Data, receivedNs: Int64) {
        lock.lock()
        defer {
            lock.unlock()
            done.signal()
        }
        if let count = options.count, seen >= count { return }
        seen += 1
        if options.raw {
            print(String(decoding: data, as: UTF8.self))
            fflush(stdout)
            return
        }
        let frame: DecodedBeatFrame
        switch data.withUnsafeBytes({ BeatFrameDecoder.result($0) }) {
        case .success(let decoded):
            frame = decoded
        case .failure(let error):
            anomalies += 1
            print("?? not a BeatFrame (\(error)): \(String(decoding: data.prefix(200), as: UTF8.self))")
            return
        }
        var notes: [String] = []
        if let last {
            if frame.beatIndex == last.beatIndex {
                notes.append("REPEAT")
            } else if frame.beatIndex < last.beatIndex {
                notes.append("BACKWARDS from \(last.beatIndex)")
            } else if frame.beatIndex - last.beatIndex > 1 {  // both ≥ 0: no overflow
                notes.append("GAP of \(frame.beatIndex - last.beatIndex - 1)")
            }
            if frame.term < last.term { notes.append("TERM BACK from \(last.term)") }
        }
        anomalies += notes.isEmpty ? 0 : 1
        if frame.degraded { notes.append("degraded") }
        let late =
            frame.scheduledNs.map { String(format: "%+9.3f ms", (Double(receivedNs) - Double($0)) / 1e6) }
            ?? "        ?"
        let marker = frame.downbeat ? "●" : "·"
        let line = String(
            format: "#%-8lld %@ %-8@ %4lld bpm  from %@  term %llu  late %@%@", frame.beatIndex, marker,
            frame.phase, frame.tempoBpm, frame.hlcSuffix, frame.term, late,
            notes.isEmpty ? "" : "  " + notes.joined(separator: ", "))
        print(line)
        fflush(stdout)
        last = frame
    }
}
