// An independent check of received BeatFrames against the contract (§1–§3),
// written from the spec, not from the encoder: its own arithmetic, Foundation's
// date formatter, swift-crypto's SHA-256 and JSONSerialization.
import Crypto
import Foundation
import XCTest

struct ContractEpoch: Decodable {
    var clusterId: String
    var startBeat: Int64
    var startNs: Int64
    var bpm: Int64
    var bar: Int

    static func load(dataDir: String) throws -> ContractEpoch {
        try JSONDecoder().decode(
            ContractEpoch.self, from: Data(contentsOf: URL(fileURLWithPath: dataDir + "/epoch.json")))
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
    func check(_ frames: [ReceivedFrame], expectTerm: Int64 = 1) -> [String] {
        var failures: [String] = []
        var previous: (index: Int64, hlc: (Int64, Int64))?
        let suffix = String(nodeId.suffix(4))
        for frame in frames {
            let o = frame.object
            guard let k = (o["beat_index"] as? NSNumber)?.int64Value else {
                failures.append("unparseable frame \(frame.text)")
                continue
            }
            func expect(_ ok: Bool, _ what: String) {
                if !ok { failures.append("beat \(k): \(what) in \(frame.text)") }
            }
            var order = Self.keyOrder
            if o["degraded"] != nil { order.append("degraded") }
            expect(Self.keysInOrder(frame.text) == order, "key order \(Self.keysInOrder(frame.text))")
            expect(o["type"] as? String == "backbeat.beatframe.v1", "type")
            expect(o["cluster_id"] as? String == epoch.clusterId, "cluster_id")
            expect(o["downbeat"] as? Bool == (k % Int64(epoch.bar) == 0), "downbeat")
            let phase = phases[Int(k % Int64(epoch.bar)) * phases.count / epoch.bar]
            expect(o["phase"] as? String == phase, "phase \(phase)")
            expect(o["deadline_at"] as? String == Self.rfc3339(ns: epoch.instantNs(k + 1)), "deadline_at")
            expect((o["tempo_bpm"] as? NSNumber)?.int64Value == epoch.bpm, "tempo_bpm")
            expect(
                o["window_id"] as? String
                    == Self.windowId(cluster: epoch.clusterId, barStart: k - k % Int64(epoch.bar)),
                "window_id")
            expect((o["term"] as? NSNumber)?.int64Value == expectTerm, "term")
            // hlc: <ms hex>:<counter hex, ≥4 digits>:<node suffix>
            let parts = (o["hlc"] as? String ?? "").split(separator: ":", omittingEmptySubsequences: false)
            let lowerHex = { (s: Substring) in !s.isEmpty && s.allSatisfy { "0123456789abcdef".contains($0) } }
            expect(parts.count == 3 && lowerHex(parts[0]) && lowerHex(parts[1]) && parts[1].count >= 4, "hlc format")
            if parts.count == 3 {
                expect(String(parts[2]) == suffix, "hlc suffix \(suffix)")
                let stamp = (Int64(parts[0], radix: 16) ?? 0, Int64(parts[1], radix: 16) ?? 0)
                // The HLC's physical part tracks the publish time, which is the instant.
                let instantMs = epoch.instantNs(k) / 1_000_000
                expect(abs(stamp.0 - instantMs) < 1000, "hlc ms \(stamp.0) far from instant \(instantMs)")
                if let previous {
                    expect(stamp > previous.hlc, "hlc not increasing")
                }
                if let previous {
                    expect(k == previous.index + 1, "index after \(previous.index) (gap or repeat)")
                }
                previous = (k, stamp)
            }
            // Sanity only (timing is measured by Bench, not asserted here):
            // frames are not sent early and arrive within a second.
            let lateNs = frame.receivedNs - epoch.instantNs(k)
            expect(lateNs > -5_000_000 && lateNs < 1_000_000_000, "received \(lateNs) ns from its instant")
        }
        return failures
    }
}
