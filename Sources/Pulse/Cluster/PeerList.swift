// Cluster: who is in the cluster. `-peers` takes `host:port` or
// `id@host:port`, comma-separated; every node is started with the same list
// (itself included, or added from -raft-bind). A node finds itself by
// -node-id (for `id@` entries) or by its -raft-bind address. Raft ids are a
// stable 64-bit hash of the peer's name, so every node derives the same ids.
import Foundation
import Raft

/// One member of the cluster.
struct Peer: Equatable {
    /// The name Raft ids derive from: the `id@` part, or `host:port`.
    var name: String
    var host: String
    var port: Int
    var raftId: NodeID

    var address: String { "\(host):\(port)" }
}

/// The parsed, validated cluster membership.
struct PeerList {
    var peers: [Peer]
    var me: Peer

    var others: [Peer] { peers.filter { $0.raftId != me.raftId } }

    func peer(raftId: NodeID) -> Peer? { peers.first { $0.raftId == raftId } }

    /// Parses `-peers` and finds this node. `raftBind` must be a numeric
    /// `host:port` with a real port when peers are given.
    static func parse(peers specs: [String], nodeId: String, raftBind: String) throws -> PeerList {
        var peers: [Peer] = []
        for spec in specs {
            let peer = try parsePeer(spec)
            if peers.contains(where: { $0.address == peer.address }) {
                throw PulseError.config("-peers lists \(peer.address) twice")
            }
            if peers.contains(where: { $0.raftId == peer.raftId }) {
                throw PulseError.config("-peers lists the name \(peer.name) twice")
            }
            peers.append(peer)
        }
        let bind = try parsePeer(raftBind)
        let me: Peer
        if let byId = peers.first(where: { $0.name == nodeId && !nodeId.isEmpty }) {
            me = byId
        } else if let byAddress = peers.first(where: { $0.address == bind.address }) {
            me = byAddress
        } else {
            guard bind.port != 0 else {
                throw PulseError.config("-raft-bind needs a port when -peers is given (got \(raftBind))")
            }
            me = bind
            peers.append(bind)
        }
        guard peers.count <= 9 else { throw PulseError.config("-peers: at most 9 members") }
        return PeerList(peers: peers, me: me)
    }

    static func parsePeer(_ spec: String) throws -> Peer {
        let trimmed = spec.trimmingCharacters(in: .whitespaces)
        var name: String?
        var address = trimmed
        if let at = trimmed.firstIndex(of: "@") {
            name = String(trimmed[..<at])
            address = String(trimmed[trimmed.index(after: at)...])
            if name!.isEmpty { throw PulseError.config("-peers entry '\(spec)' has an empty id") }
        }
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]),
            (0...65535).contains(port)
        else {
            throw PulseError.config("'\(spec)' is not host:port or id@host:port")
        }
        let host = String(address[..<colon])
        var probe = in_addr()
        guard inet_pton(AF_INET, host, &probe) == 1 else {
            throw PulseError.config("'\(spec)': host must be a numeric IPv4 address (no DNS on the beat loop)")
        }
        let canonical = "\(host):\(port)"
        let peerName = name ?? canonical
        return Peer(name: peerName, host: host, port: port, raftId: stableId(peerName))
    }

    /// FNV-1a 64 of the name, never 0 (Raft's "no node").
    static func stableId(_ name: String) -> NodeID {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in name.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        return hash == 0 ? 1 : hash
    }
}
