// An independent check of received BeatFrames against the contract (§1–§3),
// written from the spec, not from the encoder: its own arithmetic, Foundation's
// date formatter and swift-crypto's SHA-256. Frames are read with the one
// shared `BeatFrameDecoder` (whose own tests hold it to the spec).
import Crypto
import Foundation
import PulseCore
import XCTest

struct ContractEpoch: Decodable {
    var clusterId: String
    var startBeat: Int64
    var startNs: Int64
    var bpm: Int64
    var bar: Int

    /// The committed timeline's epoch as a running node serves it
    /// (`GET /timeline`, requirements §12), read with JSONSerialization, not
    /// the node's types; waits (bounded) for a node still electing itself.
    static func load(adminPort: Int, seconds: Double = 10) throws -> ContractEpoch {
        var found: ContractEpoch?
        _ = Harness.waitUntil(seconds: seconds) {
            let body = PulseCluster.adminJSON(port: adminPort, "/timeline")
            guard let epoch = body["epoch"] as? [String: Any], let cluster = body["cluster_id"] as? String,
                let startBeat = (epoch["start_beat"] as? NSNumber)?.int64Value,
                let startNs = (epoch["start_ns"] as? NSNumber)?.int64Value,
                let bpm = (epoch["bpm"] as? NSNumber)?.int64Value, let bar = body["bar"] as? Int
            else { return false }
            found = ContractEpoch(clusterId: cluster, startBeat: startBeat, startNs: startNs, bpm: bpm, bar: bar)
            return true
        }
        guard let found else {
            throw NSError(domain: "no committed timeline on GET /timeline at \(adminPort)", code: 1)
        }
        return found
    }

    func instantNs(_ k: Int64) -> Int64 { startNs + (k - startBeat) * 60_000_000_000 / bpm }
}

struct FrameChecker {
    let epoch: ContractEpoch
    let phases: [String]
    let nodeId: String
    static let keyOrder = [
        "type", "cluster_id", "beat_index", "downbeat", "phase", "hlc", "deadline_at", "tempo_bpm", "window_id", "term",
    ]

    static func rfc3339(ns: Int64) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        formatter.timeZone = TimeZone(identifier: "UTC")
        let ms = ns / 1_000_000
        return formatter.string(from: Date(timeIntervalSince1970: Double(ms) / 1000))
    }

    static func windowId(cluster: String, barStart: Int64) -> String {
        let digest = SHA256.hash(data: Data("\(cluster):\(barStart)".utf8))
        return String(digest.map { String(format: "%02x", $0) }.joined().prefix(32))
    }

    /// Keys of a compact JSON object in the order they appear in the text.
    static func keysInOrder(_ text: String) -> [String] {
        var keys: [String] = []
        var depth = 0
        var i = text.startIndex
        var expectKey = false
        while i < text.endIndex {
            let c = text[i]
            if c == "{" {
                depth += 1
                expectKey = true
            } else if c == "}" {
                depth -= 1
            } else if c == "," && depth == 1 {
                expectKey = true
            } else if c == "\"" {
                // Scan the string, honouring escapes.
                var j = text.index(after: i)
                var value = ""
                while j < text.endIndex && text[j] != "\"" {
                    if text[j] == "\\" { j = text.index(after: j) }
                    value.append(text[j])
                    j = text.index(after: j)
                }
                if expectKey && depth == 1 { keys.append(value) }
                expectKey = false
                i = j
            }
            i = text.index(after: i)
        }
        return keys
    }

    /// Checks every frame and the sequence; returns the failures (empty when all hold).
    /// Frames are decoded by the shared `BeatFrameDecoder` (types, ranges,
    /// the hlc form); the expected values come from this file's own arithmetic.
    func check(_ frames: [ReceivedFrame], expectTerm: Int64 = 1) -> [String] {
        var failures: [String] = []
        var previous: (index: Int64, hlc: HLCStamp)?
        let suffix = String(nodeId.suffix(4))
        for frame in frames {
            let o: DecodedBeatFrame
            switch BeatFrameDecoder.result([UInt8](frame.raw)) {
            case .success(let decoded): o = decoded
            case .failure(let error):
                failures.append("undecodable frame (\(error)) \(frame.text)")
                continue
            }
            let k = o.beatIndex
            func expect(_ ok: Bool, _ what: String) {
                if !ok { failures.append("beat \(k): \(what) in \(frame.text)") }
            }
            var order = Self.keyOrder
            if o.degraded { order.append("degraded") }
            expect(Self.keysInOrder(frame.text) == order, "key order \(Self.keysInOrder(frame.text))")
            expect(o.clusterId == epoch.clusterId, "cluster_id")
            expect(o.downbeat == (k % Int64(epoch.bar) == 0), "downbeat")
            let phase = phases[Int(k % Int64(epoch.bar)) * phases.count / epoch.bar]
            expect(o.phase == phase, "phase \(phase)")
            expect(o.deadlineUnixMs == epoch.instantNs(k + 1) / 1_000_000, "deadline_at")
            expect(
                frame.text.contains("\"deadline_at\":\"\(Self.rfc3339(ns: epoch.instantNs(k + 1)))\""),
                "deadline_at text")
            expect(o.tempoBpm == epoch.bpm, "tempo_bpm")
            expect(
                o.windowId == Self.windowId(cluster: epoch.clusterId, barStart: k - k % Int64(epoch.bar)), "window_id")
            expect(o.term == UInt64(expectTerm), "term")
            // hlc: <ms hex>:<counter hex, ≥4 digits>:<node suffix> (the form is the decoder's to check)
            expect(o.hlcSuffix == suffix, "hlc suffix \(suffix)")
            // The HLC's physical part tracks the publish time, which is the instant.
            let instantMs = epoch.instantNs(k) / 1_000_000
            expect(abs(o.hlc.wallMs - instantMs) < 1000, "hlc ms \(o.hlc.wallMs) far from instant \(instantMs)")
            if let previous {
                expect(o.hlc > previous.hlc, "hlc not increasing")
                expect(k == previous.index + 1, "index after \(previous.index) (gap or repeat)")
            }
            previous = (k, o.hlc)
            // Sanity only (timing is measured by Bench, not asserted here):
            // frames are not sent early and arrive within a second.
            let lateNs = frame.receivedNs - epoch.instantNs(k)
            expect(lateNs > -5_000_000 && lateNs < 1_000_000_000, "received \(lateNs) ns from its instant")
        }
        return failures
    }
}
