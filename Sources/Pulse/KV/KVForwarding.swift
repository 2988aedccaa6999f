// KV/KVForwarding.swift — `POST /tempo` on a node that does not hold the
// lease, in nats-kv mode (issue 21): forwarded to the holder as Raft mode
// forwards to its leader (TempoForwarder, the same requests, answers,
// bounds and time-out), carried by keys of the lease bucket instead of the
// Raft transport:
//
//   fwd.<to>.<from>.<id>-<type>   value: the ForwardedMessage bytes
//
// with `<to>` and `<from>` the node ids in hex (any id is a valid key then),
// each node watching `fwd.<its id>.>` for updates only. The keys expire with
// the bucket's TTL, so nothing accumulates. Trust: whoever may write these
// keys may write the timeline key itself; with an admin token set, a request
// also carries the token's MAC (TempoForwarder.macKey, as on plain-TCP Raft),
// and every request is validated by the serving node as a `POST /tempo` body
// is (AdminRouter.parseTempoBody).
import CLoop
import Foundation
import PulsePolicy
import Raft

/// TempoForwarder's link over the lease bucket (loop thread).
final class KVForwardLink: ForwardLink {
    weak var forwardInbox: ForwardInbox?
    private let buckets: KVBuckets
    private let rejected: RejectedInput
    private let meHex: String
    /// The hex names behind the member ids handed to TempoForwarder.
    private var names: [NodeID: String] = [:]

    init(buckets: KVBuckets, nodeId: String, rejected: RejectedInput) {
        self.buckets = buckets
        self.rejected = rejected
        meHex = Self.hex(nodeId)
    }

    /// The keys this node watches.
    var inboxKeys: String { "fwd.\(meHex).>" }

    /// The member id of node `nodeId` (a 64-bit FNV-1a of its hex name; never 0).
    func member(nodeId: String) -> NodeID {
        let name = Self.hex(nodeId)
        let id = Self.memberId(name)
        names[id] = name
        return id
    }

    func sendForwarded(_ message: ForwardedMessage, to member: NodeID) -> Bool {
        guard let to = names[member] else { return false }
        buckets.putExpiring(
            key: "fwd.\(to).\(meHex).\(message.id)-\(message.type.rawValue)", value: message.encode())
        return true
    }

    /// A watched key of this node's inbox (loop thread).
    func received(_ entry: KVWatched) {
        guard let value = entry.value else { return }
        let parts = entry.key.split(separator: ".")
        guard parts.count == 4, parts[1] == meHex[...], let message = ForwardedMessage.decode(value[...]) else {
            rejected.record(.kv, "bad_forward")
            return
        }
        let from = String(parts[2])
        let id = Self.memberId(from)
        names[id] = from
        forwardInbox?.forwardedReceived(message, from: id)
    }

    private static func hex(_ nodeId: String) -> String {
        nodeId.utf8.map { String(format: "%02x", $0) }.joined()
    }

    private static func memberId(_ name: String) -> NodeID {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in name.utf8 {
            h ^= UInt64(byte)
            h &*= 0x100_0000_01b3
        }
        return h == 0 ? 1 : h
    }
}
