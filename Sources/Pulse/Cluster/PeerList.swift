// Cluster: who is in the cluster. `-peers` takes `host:port` or
// `id@host:port`, comma-separated; every node is started with the same list
// (itself included, or added from -raft-bind). A node finds itself by
// -node-id (for `id@` entries) or by its -raft-bind address. Raft ids are a
// stable 64-bit hash of the peer's name, so every node derives the same ids.
import Foundation
import PulseCore
import Raft

/// One member of the cluster.
struct Peer: Equatable {
    /// The name Raft ids derive from: the `id@` part, or `host:port`.
    var name: String
    var host: String
    var port: Int
    var raftId: NodeID
    /// Whether the entry named the node (`id@host:port`): then `name` is its
    /// node id, and the last 4 characters of it its HLC suffix.
    var hasId = false

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
        let list = PeerList(peers: peers, me: me)
        try list.checkSuffixes(nodeId: nodeId)
        return list
    }

    /// The node ids known to publish: peers named with `id@`, and this node
    /// (by `nodeId`, when it is known).
    private func publisherIds(nodeId: String) -> [String] {
        var ids = others.filter(\.hasId).map(\.name)
        let own = nodeId.isEmpty && me.hasId ? me.name : nodeId
        if !own.isEmpty { ids.append(own) }
        return ids
    }

    /// Frames on the beat subject are told apart by the HLC suffix, the last
    /// 4 characters of the node id: refuse ids that share it (`pulse-east-1`
    /// and `pulse-west-1`), or the echo filter could not tell them apart.
    private func checkSuffixes(nodeId: String) throws {
        // This node stamps the suffix of its own node id: the id its peers
        // know it by must be the same, or they would not recognise its frames.
        if me.hasId && !nodeId.isEmpty && nodeId != me.name {
            throw PulseError.config(
                "-peers names this node (\(me.address)) '\(me.name)' but its node id is '\(nodeId)': start it with -node-id \(me.name)"
            )
        }
        var bySuffix: [String: String] = [:]
        for id in publisherIds(nodeId: nodeId) {
            let suffix = String(id.suffix(4))
            if let other = bySuffix[suffix], other != id {
                throw PulseError.config(
                    "-peers: node ids '\(other)' and '\(id)' end in the same 4 characters '\(suffix)' (frames are told apart by them); rename one"
                )
            }
            bySuffix[suffix] = id
        }
    }

    /// Who may publish on the beat subject, by HLC suffix: every peer's id
    /// and this node's, or `.any` when a peer other than this node was given
    /// without an id (its suffix cannot be known).
    func publishers(nodeId: String) -> EchoPublishers {
        if others.contains(where: { !$0.hasId }) { return .any }
        return .known(Set(publisherIds(nodeId: nodeId).map { String($0.suffix(4)) }))
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
        return Peer(name: peerName, host: host, port: port, raftId: stableId(peerName), hasId: name != nil)
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
