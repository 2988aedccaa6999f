// Cluster: who is in the cluster. `-peers` takes `host:port` or
// `id@host:port`, comma-separated; every node is started with the same list
// (itself included, or added from -raft-bind). A node finds itself by
// -node-id (for `id@` entries) or by its -raft-bind address. Raft ids are a
// stable 64-bit hash of the peer's name, so every node derives the same ids.
//
// A host is a numeric IPv4 address or a DNS name (containers and
// orchestrators name their nodes, and their addresses change on restart).
// Names are resolved by `PeerResolver` on a helper thread, never on the loop
// (getaddrinfo blocks for seconds against a dead resolver), and again before
// every reconnection, so a peer that came back with a new address is found.
// The listening address is numeric: this node's entry when it is numeric,
// else -raft-bind (e.g. 0.0.0.0:7000 in a container).
import CLoop
import Foundation
import Glibc
import PulseCore
import Raft

/// One member of the cluster.
public struct Peer: Equatable, Sendable {
    /// The name Raft ids derive from: the `id@` part, or `host:port`.
    public var name: String
    var host: String
    var port: Int
    var raftId: NodeID
    /// Whether the entry named the node (`id@host:port`): then `name` is its
    /// node id, and the last 4 characters of it its HLC suffix.
    public var hasId = false

    var address: String { "\(host):\(port)" }
    /// What the Raft voter set keeps for this member (`Member.context`):
    /// its name and Raft address, `name\nhost:port` in UTF-8.
    var memberContext: [UInt8] { Array("\(name)\n\(address)".utf8) }
    /// Whether `host` is a numeric IPv4 address (else a DNS name to resolve).
    var isNumeric: Bool { PeerList.isIPv4(host) }
    /// On this machine by its spelling (no DNS needed to say so).
    var isLoopback: Bool { host.hasPrefix("127.") || host == "localhost" }
}

/// The parsed, validated cluster membership.
public struct PeerList {
    var peers: [Peer]
    var me: Peer
    /// Where this node listens: numeric IPv4 host and port.
    var bindHost: String
    var bindPort: Int

    var others: [Peer] { peers.filter { $0.raftId != me.raftId } }

    func peer(raftId: NodeID) -> Peer? { peers.first { $0.raftId == raftId } }

    /// The member a voter-set entry names (`Peer.memberContext`), or nil
    /// when its context is empty, malformed (it came from the log: a peer's
    /// input, bounded by the core to 512 bytes), or its name does not hash
    /// to its id. Pure, never traps.
    static func peer(member: Member) -> Peer? {
        guard !member.context.isEmpty, let text = String(validating: member.context, as: UTF8.self) else {
            return nil
        }
        let parts = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard parts.count == 2, let name = parts.first, !name.isEmpty, name.utf8.count <= 253,
            name.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value != 0x7F && $0 != "@" && $0 != "," }),
            var peer = try? parsePeer(String(parts[1])), !parts[1].contains("@")
        else { return nil }
        peer.name = String(name)
        peer.hasId = peer.name != peer.address
        peer.raftId = stableId(peer.name)
        return peer.raftId == member.id ? peer : nil
    }

    /// This node's view of the cluster under the voter set `members` (the
    /// latest configuration in its Raft log): each voter from its context,
    /// else (a bootstrap voter set has empty contexts) from `fallback` (the
    /// -peers list); this node is always in `peers`, voter or not. The ids
    /// neither names are returned as `unknown` (no address to dial).
    func reconfigured(members: [Member], fallback: PeerList) -> (list: PeerList, unknown: [NodeID]) {
        var result: [Peer] = []
        var unknown: [NodeID] = []
        for member in members {
            if member.id == me.raftId {
                result.append(me)
            } else if let peer = Self.peer(member: member) ?? fallback.peer(raftId: member.id)
                ?? peer(raftId: member.id)
            {
                result.append(peer)
            } else {
                unknown.append(member.id)
            }
        }
        if !result.contains(where: { $0.raftId == me.raftId }) { result.append(me) }
        return (PeerList(peers: result, me: me, bindHost: bindHost, bindPort: bindPort), unknown)
    }

    /// A single node (no -peers) as a lone voter: named by its node id (its
    /// Raft id derives from it, so the data dir's node id keeps it stable),
    /// with no address anyone dials (it listens nowhere: `NoPeerLink`).
    static func alone(nodeId: String) -> PeerList {
        let me = Peer(name: nodeId, host: "127.0.0.1", port: 0, raftId: stableId(nodeId), hasId: true)
        return PeerList(peers: [me], me: me, bindHost: me.host, bindPort: 0)
    }

    /// Parses `-peers` and finds this node. `raftBind` must be a numeric
    /// `host:port`, with a real port when this node is not in the list or is
    /// listed by a host name.
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
        guard bind.isNumeric else {
            throw PulseError.config("-raft-bind must be a numeric IPv4 address and port (got \(raftBind))")
        }
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
        var bindHost = me.host
        var bindPort = me.port
        if !me.isNumeric {
            guard bind.port != 0 else {
                throw PulseError.config(
                    "-peers names this node by host name (\(me.address)): give -raft-bind with a numeric address to listen on, e.g. 0.0.0.0:\(me.port)"
                )
            }
            bindHost = bind.host
            bindPort = bind.port
        }
        let list = PeerList(peers: peers, me: me, bindHost: bindHost, bindPort: bindPort)
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

    public static func parsePeer(_ spec: String) throws -> Peer {
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
        guard isIPv4(host) || isHostName(host) else {
            throw PulseError.config("'\(spec)': host must be a numeric IPv4 address or a DNS name")
        }
        let canonical = "\(host):\(port)"
        let peerName = name ?? canonical
        return Peer(name: peerName, host: host, port: port, raftId: stableId(peerName), hasId: name != nil)
    }

    static func isIPv4(_ host: String) -> Bool {
        var probe = in_addr()
        return inet_pton(AF_INET, host, &probe) == 1
    }

    /// RFC 1123 host name: dot-separated labels of letters, digits and
    /// hyphens (not at either end), each 1-63 bytes, 253 in all. Pure.
    static func isHostName(_ host: String) -> Bool {
        let bytes = Array(host.utf8)
        guard !bytes.isEmpty, bytes.count <= 253 else { return false }
        for label in bytes.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false) {
            guard (1...63).contains(label.count), label.first != UInt8(ascii: "-"), label.last != UInt8(ascii: "-")
            else { return false }
            let ok = label.allSatisfy {
                (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0 | 0x20)
                    || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || $0 == UInt8(ascii: "-")
            }
            guard ok else { return false }
        }
        // All-numeric dotted names are malformed addresses, not names.
        return !bytes.allSatisfy { $0 == UInt8(ascii: ".") || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }
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

/// Resolves peer host names off the loop thread: one detached helper thread
/// per lookup (the transport starts at most one per peer at a time), placed
/// off the beat core first, answering through the loop's doorway. After
/// `close()` nothing more is posted (the loop may be gone by then).
final class PeerResolver: @unchecked Sendable {
    /// Why a name did not resolve (getaddrinfo's reason).
    struct Failure: Error, Equatable {
        var reason: String
    }

    private let loop: EventLoop
    private let lock = NSLock()
    private var open = true

    init(loop: EventLoop) { self.loop = loop }

    /// Looks `host` up on a helper thread; `done` runs on the loop thread
    /// (unless the resolver was closed, or the doorway was full: then never,
    /// and the caller's own timeout gives up on it).
    func resolve(host: String, port: Int, done: @escaping (Result<sockaddr_in, Failure>) -> Void) {
        let job = Unmanaged.passRetained(Job(resolver: self, host: host, port: port, done: done)).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(
            &thread, nil,
            { arg in
                ThreadPlacement.placeCurrentHelperThread()
                let job = Unmanaged<Job>.fromOpaque(arg!).takeRetainedValue()
                let result = PeerResolver.lookup(host: job.host, port: job.port)
                job.resolver.deliver { job.done(result) }
                return nil
            }, job)
        if rc == 0 {
            pthread_detach(thread)
        } else {
            Unmanaged<Job>.fromOpaque(job).release()
            let reason = "cannot start a resolver thread: \(String(cString: strerror(rc)))"
            _ = loop.postCallback { done(.failure(Failure(reason: reason))) }
        }
    }

    /// No more answers are delivered (the transport stopped).
    func close() { lock.withLock { open = false } }

    private func deliver(_ body: @escaping () -> Void) {
        lock.withLock {
            if open { _ = loop.postCallback(body) }
        }
    }

    /// getaddrinfo for IPv4 (the transport speaks IPv4); the first address.
    /// Blocking: helper threads and tests only.
    static func lookup(host: String, port: Int) -> Result<sockaddr_in, Failure> {
        var hints = addrinfo()
        hints.ai_family = AF_INET
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, nil, &hints, &list)
        guard rc == 0 else { return .failure(Failure(reason: String(cString: gai_strerror(rc)))) }
        defer { freeaddrinfo(list) }
        var next = list
        while let entry = next {
            if entry.pointee.ai_family == AF_INET, let raw = entry.pointee.ai_addr {
                var address = raw.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee }
                address.sin_port = UInt16(port).bigEndian
                return .success(address)
            }
            next = entry.pointee.ai_next
        }
        return .failure(Failure(reason: "no IPv4 address"))
    }

    /// The dotted form of `address` (for logs).
    static func text(_ address: sockaddr_in) -> String {
        var copy = address.sin_addr
        var buffer = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
        guard inet_ntop(AF_INET, &copy, &buffer, socklen_t(buffer.count)) != nil else { return "?" }
        return String(cString: buffer) + ":\(UInt16(bigEndian: address.sin_port))"
    }

    private final class Job {
        let resolver: PeerResolver
        let host: String
        let port: Int
        let done: (Result<sockaddr_in, Failure>) -> Void
        init(resolver: PeerResolver, host: String, port: Int, done: @escaping (Result<sockaddr_in, Failure>) -> Void) {
            self.resolver = resolver
            self.host = host
            self.port = port
            self.done = done
        }
    }
}
