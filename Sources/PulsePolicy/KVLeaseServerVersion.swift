// PulsePolicy/KVLeaseServerVersion.swift — which nats-server versions the
// lease may run on with replicated buckets (issue 21, review of 2026-12-07).
//
// The lease's argument (KVLease.swift) needs a linearizable compare-and-set:
// of two writes expecting the same last revision, at most one is stored.
// Before nats-server 2.11 that does not hold on a clustered (R > 1) stream:
// the expected-last-subject-sequence check was a pre-check on the stream
// leader, outside the stream's Raft proposal, so concurrent writes in flight
// could all pass it (nats-server issues #4320, #5794, #6194, #6485; the
// consistency of "expected per subject" through the proposal is 2.11's).
// What those sources show is narrower than a proof (docs/decisions.md, "The
// server version"): #4320 and #5794 were addressed in 2.9.x/2.10.x, #5840/
// #5841 were a 2.10.x regression where CAS failed on R1 buckets, and the
// proposal nats-server#8469 says the check is still leader-local state
// cleared on a stream-leader change. 2.11 is the floor this node enforces,
// not a version proven linearizable. Pre-releases order below their release.
// Two pulses could then both hold the lease. An R1 bucket is checked by its
// one server in order and is not affected. So a node with `-kv-replicas` > 1
// refuses to start on an older server unless told to accept the risk
// (`-kv-allow-old-server`). Pure: the adapter reads each server's INFO.
import Foundation

/// A nats-server version as its INFO line announces it (`2.10.7`, `2.11.0-RC.2`).
public struct NatsServerVersion: Comparable, Sendable, CustomStringConvertible {
    public var major: Int
    public var minor: Int
    public var patch: Int
    /// A pre-release (`2.11.0-RC.2`, `-dev`, `-beta`): below its release,
    /// which may hold fixes the pre-release does not.
    public var preRelease: Bool

    public init(major: Int, minor: Int, patch: Int, preRelease: Bool = false) {
        self.major = major
        self.minor = minor
        self.patch = patch
        self.preRelease = preRelease
    }

    /// The first nats-server whose compare-and-set is linearizable on a replicated stream.
    public static let linearizableCAS = NatsServerVersion(major: 2, minor: 11, patch: 0)

    /// Parses `2.10.7`, `v2.11.0`, `2.11.0-RC.2` (a pre-release orders below
    /// its release; `+build` metadata is ignored); nil when there are not
    /// two or three numbers.
    public init?(_ text: String) {
        var core = Substring(text)
        if core.first == "v" { core = core.dropFirst() }
        if let plus = core.firstIndex(of: "+") { core = core[..<plus] }
        var preRelease = false
        if let dash = core.firstIndex(of: "-") {
            core = core[..<dash]
            preRelease = true
        }
        let parts = core.split(separator: ".", omittingEmptySubsequences: false)
        guard (2...3).contains(parts.count), parts.allSatisfy({ !$0.isEmpty && $0.count <= 6 }) else { return nil }
        let numbers = parts.compactMap { Int($0) }
        guard numbers.count == parts.count, numbers.allSatisfy({ $0 >= 0 }) else { return nil }
        self.init(
            major: numbers[0], minor: numbers[1], patch: numbers.count == 3 ? numbers[2] : 0, preRelease: preRelease)
    }

    public static func < (a: Self, b: Self) -> Bool {
        (a.major, a.minor, a.patch, a.preRelease ? 0 : 1) < (b.major, b.minor, b.patch, b.preRelease ? 0 : 1)
    }

    public var description: String { "\(major).\(minor).\(patch)\(preRelease ? "-pre" : "")" }

    /// What a server's INFO line (`INFO {...}`) says: its version text and
    /// the client URLs of its cluster's other servers; nil when the line is
    /// not an INFO with a JSON object. Untrusted input: bounded by the caller.
    public static func info(line: String) -> (version: String?, connectURLs: [String])? {
        guard line.hasPrefix("INFO "), let data = line.dropFirst(5).data(using: .utf8),
            let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
        else { return nil }
        let urls = (object["connect_urls"] as? [Any] ?? []).compactMap { $0 as? String }
        return (object["version"] as? String, urls)
    }

    /// Why a lease with `replicas` replicas may not run on `version` (the
    /// start-up line), or nil. `server` names where it was read.
    public static func refusal(version: String?, server: String, replicas: Int) -> String? {
        guard replicas > 1 else { return nil }
        let minimum = "\(linearizableCAS.major).\(linearizableCAS.minor)"
        let advice =
            "the lease needs nats-server \(minimum) or later with -kv-replicas \(replicas)"
            + " (or -kv-replicas 1, or -kv-allow-old-server to accept the risk)"
        guard let text = version, let parsed = NatsServerVersion(text) else {
            return "-election nats-kv: the NATS server at \(server) announces no version this node can read; \(advice)"
        }
        guard parsed < linearizableCAS else { return nil }
        return "-election nats-kv: nats-server \(text) at \(server) is older than \(minimum): its compare-and-set is"
            + " not linearizable on replicated streams (nats-server issues 4320, 6194), so two pulses could hold the"
            + " lease at once; \(advice)"
    }
}
