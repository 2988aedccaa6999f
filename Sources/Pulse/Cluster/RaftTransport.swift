// Cluster: Raft messages over TCP on the loop.
//
// Each node listens on its -raft-bind address and keeps one outbound
// connection to every peer (non-blocking connect, reconnect with exponential
// backoff from 50 ms to 2 s). A peer given by DNS name is resolved before
// each connection attempt by `PeerResolver` on a helper thread (the loop
// never calls getaddrinfo); its answer arrives through the doorway. Messages travel one
// way per connection: a node reads only from connections it accepted and
// writes only to connections it opened. Frames are versioned and
// length-prefixed:
//
//   [0xBB][version 2][kind u8][0][length u32 LE]
//   [send_ns i64][echo_send_ns i64][echo_recv_ns i64]   wall clock, for clock sync
//   [payload: Raft.Message encoding (kind 0), or a forwarded admin request
//    or answer (kind 1, RaftForwarding.swift)]
//
// The three timestamps make every exchange an NTP sample for free: a frame
// carries its own send time and echoes the send time of the last frame
// received from the destination with the time it arrived, so the receiver
// has t1..t4 of a round trip (see PulseCore's ClockSync).
//
// A frame with length 0 is a keepalive: it carries no message, and its
// second timestamp slot carries the sender's Raft id instead (0 from older
// versions). A connector sends one as soon as its connection is up and
// whenever it has written nothing for `RaftTransportLimits.keepaliveNs`
// (followers send each other nothing between elections, yet their
// connections must stay up for the next one).
//
// Slots (adversarial review of #9): an inbound connection is *proven* once
// it names a configured peer — a decoded message from one, or a keepalive
// carrying its id (with TLS: its certificate's member, from its first
// frame) — and is bound to that peer from then on (`peer_mismatch`). A
// keepalive without an id proves nothing and does not keep an unproven
// connection open: it is closed `handshakeTimeoutNs` after accept. At most
// one proven connection per peer: a newer one replaces the older (a peer
// that restarted is back at once). When the slots are full a newcomer takes
// the slot of the oldest unproven connection; proven ones are at most one
// per other member, so there always is one. Without TLS a peer's id is a
// public hash that anyone can claim: this bounds what an outsider holds to
// one slot per member, it does not authenticate (TLS does).
//
// A frame with a bad header, an oversized length, an undecodable payload, a
// message not addressed to this node or from a node that is not a configured
// peer closes the connection and is counted (`badFrames`, and
// `backbeat_rejected_input_total{surface="raft",reason}`); nothing a peer
// sends can trap the process. Inbound connections are bounded and closed
// when they do not prove themselves in time or go idle (see
// `RaftTransportLimits` and "Slots" above), so idle, half-open or
// keepalive-only connections cannot starve the peers' slots. Raft
// tolerates loss, so when a peer is unreachable or its output buffer is full,
// messages are dropped.
//
// With `RaftTLS` (-raft-tls-cert/-key/-ca), every connection is TLS 1.3 with
// mutual authentication and the same frames travel inside it. The handshake
// runs on the loop, non-blocking (SSL_do_handshake/SSL_read/SSL_write return
// WANT_READ/WANT_WRITE and the connection's epoll interest follows): each
// step is a few hundred microseconds of ECDSA/X25519 work at most, dispatched
// after the beat timer like any other fd (beats first), and bounded in time
// by `handshakeTimeoutNs` on both sides. Inbound: the first byte must open a
// TLS record (`tls_required`), the certificate must chain to the CA
// (`tls_untrusted_certificate`) and name exactly one other member
// (`tls_unknown_peer`, `tls_ambiguous_peer`); then every frame's `from` must
// be that member (`tls_identity_mismatch`). Outbound: the server's
// certificate must name the member dialled (`tls_wrong_server`).
// Without TLS, plain TCP: for loopback development; start() warns when a
// peer is not on loopback.
//
// Membership: `setPeers` replaces the members when the Raft voter set
// changes (new ones dialled, removed ones closed and refused from then on).
//
// Rate (adversarial review of #9): each inbound connection may deliver at
// most `maxFramesPerSecond` frames (bursts of `frameBurst`); frames beyond
// are skipped before decoding and counted (`rate_limited`), so a flood costs
// the loop a header check per frame, not a Raft step and a clock sample. A
// real peer sends a few dozen a second (heartbeats every tick, appends per
// proposal, answers).
import CLoop
import Foundation
import Glibc
import Logging
import PulseCore
import Raft

/// Counters of the transport, for metrics and tests.
struct RaftTransportStats {
    var framesIn: UInt64 = 0
    var framesOut: UInt64 = 0
    var badFrames: UInt64 = 0
    var dropped: UInt64 = 0
    var connects: UInt64 = 0
    /// Inbound frames skipped over their connection's rate (`FrameBudget`).
    var rateLimited: UInt64 = 0
}

/// Limits of the Raft transport's inbound side. Every one bounds the slots,
/// memory or time that a connection from outside can claim; the peers are
/// at most 9 (PeerList), so each has room to reconnect several times over.
struct RaftTransportLimits {
    /// Open inbound connections. Each peer keeps one proven connection (a
    /// newer one replaces it); the rest is room for connections not yet
    /// proven. When full, a new connection takes the slot of the oldest
    /// unproven one (there always is one: at most 8 are proven), or is
    /// closed at once (`connection_limit`).
    var maxInbound = 32
    /// Time from accept to proof (a message, or a keepalive with the
    /// sender's id; a real peer sends one at once); an unproven connection
    /// is closed then whatever else it sent (`handshake_timeout`).
    var handshakeTimeoutNs: Int64 = 2_000_000_000
    /// Time without a valid frame on a proven connection; then closed
    /// (`idle_timeout`). The service sets a few election timeouts; peers send
    /// a keepalive every `keepaliveNs`, so only a silent or trickling connection
    /// reaches it (bytes that never complete a valid frame do not count).
    var idleTimeoutNs: Int64 = 4_000_000_000
    /// An outbound connection that wrote nothing for this long sends a keepalive.
    var keepaliveNs: Int64 = 500_000_000
    /// Frames (messages and keepalives) one inbound connection may deliver
    /// per second on average; beyond, frames are skipped and counted
    /// (`rate_limited`). A real peer sends a few dozen a second.
    var maxFramesPerSecond: Int64 = 2_000
    /// Frames one inbound connection may deliver at once above that rate.
    var frameBurst: Int64 = 1_000
    /// Connections accepted per listener callback.
    var maxAcceptsPerEvent = 16

    /// Limits for a cluster whose election timeout is `electionTimeoutNs`:
    /// idle after four election timeouts (at least 2 s).
    static func forElectionTimeout(_ electionTimeoutNs: Int64) -> RaftTransportLimits {
        var limits = RaftTransportLimits()
        limits.idleTimeoutNs = max(2_000_000_000, 4 * electionTimeoutNs)
        return limits
    }
}

/// A token bucket of frames for one inbound connection, in integer math
/// that cannot overflow: the rate is at most 10^9 a second and the burst at
/// most 2^32, so `burst × 10^9` fits, and refills are capped at the burst.
struct FrameBudget {
    let perSecond: Int64
    let burst: Int64
    private(set) var tokens: Int64
    private var lastNs: Int64

    init(perSecond: Int64, burst: Int64, nowNs: Int64) {
        self.perSecond = min(max(1, perSecond), 1_000_000_000)
        self.burst = min(max(1, burst), 1 << 32)
        tokens = self.burst
        lastNs = nowNs
    }

    /// Takes one frame's token at monotonic time `nowNs`; false when none is left.
    mutating func take(nowNs: Int64) -> Bool {
        if nowNs > lastNs {
            // Only whole tokens are added; the remainder of the time is kept.
            let fullAfterNs = burst * 1_000_000_000 / perSecond + 1
            let (gap, overflow) = nowNs.subtractingReportingOverflow(lastNs)
            let elapsed = overflow ? fullAfterNs : min(gap, fullAfterNs)
            let added = elapsed * perSecond / 1_000_000_000
            if added > 0 {
                tokens = min(burst, tokens + added)
                lastNs = elapsed == fullAfterNs ? nowNs : lastNs + added * 1_000_000_000 / perSecond
            }
        }
        guard tokens > 0 else { return false }
        tokens -= 1
        return true
    }
}

/// Where the transport hands what it received (loop thread).
protocol RaftInbox: AnyObject {
    /// A decoded message addressed to this node from a configured peer, with
    /// the clock sample its frame carried (nil without an echo). The sample is
    /// untrusted like the message: the inbox validates both.
    func transportReceived(_ message: Message, clockSample: SyncSample?, peerWallNs: Int64)
}

final class RaftTransport: LoopHandler {
    static let magic: UInt8 = 0xBB
    static let version: UInt8 = 2
    static let headerBytes = 32
    static let maxFrameBytes = 8 << 20
    static let maxOutputBytes = 4 << 20
    /// Header byte 2: the payload is a Raft message (0) or a forwarded request or answer.
    static let messageKind: UInt8 = 0
    static let forwardedKind: UInt8 = 1

    private unowned let loop: EventLoop
    private let me: Peer
    private let logger: Logger
    private unowned let inbox: RaftInbox
    private let rejected: RejectedInput
    let limits: RaftTransportLimits
    /// Per peer: (its send time, our receive time) of the last frame it sent us.
    private var lastFrom: [NodeID: (sendNs: Int64, recvNs: Int64)] = [:]
    private var listenToken: UInt32?
    private var timerToken: UInt32 = 0
    private var outbound: [NodeID: Outbound] = [:]
    private var inbound: [UInt32: Inbound] = [:]
    /// The members a frame may come from, and who they are (`setPeers`).
    private var knownIds: Set<NodeID>
    private var peers: [Peer]
    /// Mutual TLS on every connection, or nil for plain TCP.
    private let tls: RaftTLS?
    private(set) var stats = RaftTransportStats()
    /// Where forwarded requests and answers from proven members go (RaftForwarding.swift).
    weak var forwardInbox: ForwardInbox?
    /// Resolves peers given by DNS name (PeerList.swift).
    private let resolver: PeerResolver
    /// A lookup that has not answered after this long is abandoned (its
    /// thread still ends on its own: getaddrinfo has its own timeouts).
    static let resolveTimeoutNs: Int64 = 30_000_000_000
    private let bindHost: String
    private let bindPort: Int

    init(
        loop: EventLoop, peers: PeerList, limits: RaftTransportLimits, rejected: RejectedInput, logger: Logger,
        inbox: RaftInbox, tls: RaftTLS? = nil
    ) throws {
        self.loop = loop
        self.me = peers.me
        self.peers = peers.peers
        self.tls = tls
        self.logger = logger
        self.inbox = inbox
        self.rejected = rejected
        self.limits = limits
        self.knownIds = Set(peers.peers.map(\.raftId))
        self.resolver = PeerResolver(loop: loop)
        self.bindHost = peers.bindHost
        self.bindPort = peers.bindPort
        for peer in peers.others { outbound[peer.raftId] = Outbound(peer: peer) }
        timerToken = try loop.makeTimer(clock: CLOCK_MONOTONIC, priority: false, handler: self)
    }

    /// Listens on this node's address and starts connecting to the peers.
    func start() throws {
        let fd = socket(
            AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw PulseError.startup("raft socket: \(String(cString: strerror(errno)))") }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var addr = Self.ipv4Address(bindHost, bindPort)
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0, listen(fd, 64) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw PulseError.startup("-raft-bind \(bindHost):\(bindPort): \(reason)")
        }
        listenToken = try loop.register(fd: fd, interest: UInt32(CLOOP_READ), owned: true, handler: self)
        if tls == nil, let remote = outbound.values.first(where: { !$0.peer.isLoopback }) {
            logger.warning(
                "raft: plain TCP to a peer off loopback; anyone who can reach the port can join: give -raft-tls-cert, -raft-tls-key and -raft-tls-ca",
                metadata: ["peer": "\(remote.peer.address)"])
        }
        try loop.armTimer(timerToken, afterNs: 50_000_000, intervalNs: 50_000_000)
        for connection in outbound.values { connect(connection) }
    }

    func stop() {
        resolver.close()
        for connection in outbound.values { closeOutbound(connection, backoff: false) }
        for (token, _) in inbound { loop.remove(token: token) }
        inbound.removeAll()
        if let listenToken { loop.remove(token: listenToken) }
        listenToken = nil
        loop.disarmTimer(timerToken)
    }

    /// The voter set changed (ClusterNode, on the loop): from now on frames
    /// are accepted from `list`'s members only (and TLS certificates matched
    /// against them); proven inbound connections of members no longer listed
    /// are closed; an outbound connection is opened to each new member (by
    /// name through the resolver, as at start), and closed to each removed
    /// one or replaced when a member's address changed.
    func setPeers(_ list: PeerList) {
        peers = list.peers
        knownIds = Set(list.peers.map(\.raftId))
        for (token, connection) in inbound {
            if let id = connection.provenPeer, !knownIds.contains(id) { dropInbound(token) }
        }
        let wanted = list.others
        for (id, connection) in outbound
        where !wanted.contains(where: { $0.raftId == id && $0.address == connection.peer.address }) {
            closeOutbound(connection, backoff: false)
            connection.resolving = false  // a late lookup answer is ignored
            outbound[id] = nil
            lastFrom[id] = nil
        }
        for peer in wanted where outbound[peer.raftId] == nil {
            let connection = Outbound(peer: peer)
            outbound[peer.raftId] = connection
            if listenToken != nil { connect(connection) }
        }
    }

    /// Sends `message` to `message.to`, or drops it if that peer is not connected.
    func send(_ message: Message) {
        guard let connection = outbound[message.to] else { return }
        guard connection.token != nil, connection.ready else {
            stats.dropped &+= 1
            return
        }
        var payload = [UInt8]()
        message.encode(into: &payload)
        guard payload.count <= Self.maxFrameBytes, connection.output.count + payload.count < Self.maxOutputBytes else {
            stats.dropped &+= 1
            return
        }
        appendFrame(to: connection, payload: payload, echo: lastFrom[message.to] ?? (0, 0))
        stats.framesOut &+= 1
        flush(connection)
    }

    /// Queues a forwarded request or answer to `member` (RaftForwarding.swift);
    /// false when that member is not connected or its output is full.
    func sendForwarded(_ message: ForwardedMessage, to member: NodeID) -> Bool {
        guard let connection = outbound[member], connection.token != nil, connection.ready else { return false }
        let payload = message.encode()
        guard connection.output.count + payload.count < Self.maxOutputBytes else { return false }
        appendFrame(to: connection, payload: payload, echo: lastFrom[member] ?? (0, 0), kind: Self.forwardedKind)
        stats.framesOut &+= 1
        flush(connection)
        return true
    }

    /// Appends a frame (header, timestamps, payload) to the output of `connection`.
    private func appendFrame(
        to connection: Outbound, payload: [UInt8], echo: (sendNs: Int64, recvNs: Int64), kind: UInt8 = messageKind
    ) {
        var length = UInt32(payload.count).littleEndian
        connection.output += [Self.magic, Self.version, kind, 0]
        withUnsafeBytes(of: &length) { connection.output += $0 }
        for value in [cloop_realtime_ns(), echo.sendNs, echo.recvNs] {
            var little = value.littleEndian
            withUnsafeBytes(of: &little) { connection.output += $0 }
        }
        connection.output += payload
        connection.lastWriteMonoNs = cloop_monotonic_ns()
    }

    /// Queues a keepalive (a frame of length 0, carrying our Raft id: see the
    /// file header) on `connection`; the caller flushes.
    private func queueKeepalive(_ connection: Outbound) {
        guard connection.output.count + Self.headerBytes < Self.maxOutputBytes else { return }
        appendFrame(to: connection, payload: [], echo: (Int64(bitPattern: me.raftId), 0))
    }

    // MARK: events

    func loopEvent(token: UInt32, events: UInt32) {
        if token == listenToken {
            acceptAll()
        } else if token == timerToken {
            loop.readTimer(timerToken)
            let now = cloop_monotonic_ns()
            for connection in outbound.values
            where connection.resolving && now - connection.resolveStartedMonoNs > Self.resolveTimeoutNs {
                connection.resolving = false
                logger.warning("raft: peer name lookup timed out", metadata: ["peer": "\(connection.peer.address)"])
            }
            for connection in outbound.values where connection.token == nil && now >= connection.retryAtNs {
                connect(connection)
            }
            for connection in outbound.values
            where connection.ready && now - connection.lastWriteMonoNs >= limits.keepaliveNs {
                queueKeepalive(connection)
                flush(connection)
            }
            // A connect or TLS handshake that does not finish in time is retried.
            for connection in outbound.values
            where connection.token != nil && !connection.ready
                && now - connection.startedMonoNs >= limits.handshakeTimeoutNs
            {
                logger.info(
                    "raft: connection not established in time", metadata: ["peer": "\(connection.peer.address)"])
                closeOutbound(connection, backoff: true)
            }
            sweepInbound(nowMonoNs: now)
        } else if let connection = inbound[token] {
            readInbound(token: token, connection)
        } else if let connection = outbound.values.first(where: { $0.token == token }) {
            outboundEvent(connection, events: events)
        }
    }

    private func acceptAll() {
        guard let listenToken else { return }
        let listenFd = loop.fd(listenToken)
        for _ in 0..<limits.maxAcceptsPerEvent {
            let fd = accept(listenFd, nil, nil)
            guard fd >= 0 else { return }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            if inbound.count >= limits.maxInbound {
                // Full: a connection that has not proved itself gives way to the
                // newcomer (so silent sockets, or ones that send keepalives
                // without an id, cannot hold every slot); else refuse.
                let pending = inbound.filter { $0.value.provenPeer == nil }
                guard let oldest = pending.min(by: { $0.value.acceptedMonoNs < $1.value.acceptedMonoNs }) else {
                    close(fd)
                    rejected.record(.raft, "connection_limit")
                    continue
                }
                rejected.record(.raft, "connection_limit")
                dropInbound(oldest.key)
            }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            do {
                let token = try loop.register(fd: fd, interest: UInt32(CLOOP_READ), owned: true, handler: self)
                let now = cloop_monotonic_ns()
                inbound[token] = Inbound(
                    acceptedMonoNs: now,
                    budget: FrameBudget(perSecond: limits.maxFramesPerSecond, burst: limits.frameBurst, nowNs: now))
            } catch {
                close(fd)
            }
        }
    }

    /// Closes unproven connections `handshakeTimeoutNs` after accept (a
    /// keepalive without an id does not extend that), and proven ones idle
    /// for `idleTimeoutNs`.
    private func sweepInbound(nowMonoNs now: Int64) {
        for (token, connection) in inbound {
            if connection.provenPeer != nil {
                guard now - connection.lastValidMonoNs >= limits.idleTimeoutNs else { continue }
                rejected.record(.raft, "idle_timeout")
            } else {
                guard now - connection.acceptedMonoNs >= limits.handshakeTimeoutNs else { continue }
                rejected.record(.raft, "handshake_timeout")
            }
            logger.info("raft: closing a silent inbound connection")
            dropInbound(token)
        }
    }

    private func readInbound(token: UInt32, _ connection: Inbound) {
        let fd = loop.fd(token)
        if let tls {
            readInboundTLS(token: token, fd: fd, connection, tls)
            return
        }
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) {
            dropInbound(token)
            return
        }
        guard n > 0 else { return }
        connection.buffer += chunk[0..<n]
        parseInbound(token: token, connection)
    }

    /// TLS inbound: classify the first byte, drive the handshake, bind the
    /// certificate to a member, then read records until the socket is drained.
    private func readInboundTLS(token: UInt32, fd: Int32, _ connection: Inbound, _ tls: RaftTLS) {
        if connection.session == nil {
            // A TLS connection opens with a handshake record (0x16); anything
            // else is a plain client on a TLS port, refused before OpenSSL sees it.
            var first: UInt8 = 0
            let n = recv(fd, &first, 1, Int32(MSG_PEEK))
            if n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) {
                dropInbound(token)
                return
            }
            guard n == 1 else { return }
            guard first == 0x16 else {
                refuseInbound(token, "tls_required", "not a TLS client")
                return
            }
            guard let session = tls.session(fd: fd, server: true) else {
                refuseInbound(token, "tls_handshake_failed", RaftTLS.lastError())
                return
            }
            connection.session = session
        }
        guard let session = connection.session else { return }
        if !session.established {
            switch session.handshake() {
            case .done:
                let names = session.peerNames
                switch PeerIdentity.match(names: names, peers: peers) {
                case .peer(let peer) where peer.raftId != me.raftId:
                    connection.peer = peer
                case .ambiguous:
                    refuseInbound(token, "tls_ambiguous_peer", "certificate names several members: \(names)")
                    return
                default:
                    refuseInbound(token, "tls_unknown_peer", "certificate names no other member: \(names)")
                    return
                }
            case .wantRead:
                setInboundInterest(token, connection, wantWrite: false)
                return
            case .wantWrite:
                setInboundInterest(token, connection, wantWrite: true)
                return
            case .closed:
                dropInbound(token)
                return
            case .failed(let detail):
                if session.peerVerified {
                    refuseInbound(token, "tls_handshake_failed", detail)
                } else {
                    refuseInbound(token, "tls_untrusted_certificate", "\(session.verifyError) (\(detail))")
                }
                return
            }
        }
        // Drain what OpenSSL can decrypt now: records it already pulled off
        // the socket would not wake a level-triggered epoll again. Bounded.
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        for _ in 0..<(Self.maxFrameBytes / chunk.count + 2) {
            switch chunk.withUnsafeMutableBytes({ session.read(into: $0) }) {
            case .done(let n):
                connection.buffer += chunk[0..<n]
                parseInbound(token: token, connection)
                guard inbound[token] != nil else { return }
            case .wantRead:
                setInboundInterest(token, connection, wantWrite: false)
                return
            case .wantWrite:
                setInboundInterest(token, connection, wantWrite: true)
                return
            case .closed:
                dropInbound(token)
                return
            case .failed(let detail):
                logger.info("raft: TLS connection failed", metadata: ["error": "\(detail)"])
                dropInbound(token)
                return
            }
        }
    }

    private func setInboundInterest(_ token: UInt32, _ connection: Inbound, wantWrite: Bool) {
        guard connection.wantWrite != wantWrite else { return }
        connection.wantWrite = wantWrite
        loop.modify(token: token, interest: UInt32(CLOOP_READ) | (wantWrite ? UInt32(CLOOP_WRITE) : 0))
    }

    /// Counts a refused TLS connection under `reason` and closes it.
    private func refuseInbound(_ token: UInt32, _ reason: String, _ detail: String) {
        rejected.record(.raft, reason)
        logger.warning("raft: TLS peer refused, closing the connection", metadata: ["reason": "\(reason): \(detail)"])
        dropInbound(token)
    }

    /// Delivers the complete frames in `connection.buffer`.
    private func parseInbound(token: UInt32, _ connection: Inbound) {
        var offset = 0
        // Refuse a wrong magic or version as soon as the first bytes arrive,
        // not only once a whole header is in.
        if let first = connection.buffer.first, first != Self.magic {
            badFrame(token, "bad_magic", "bad magic")
            return
        }
        if connection.buffer.count >= 2, connection.buffer[1] != Self.version {
            badFrame(token, "unsupported_version", "unsupported version \(connection.buffer[1])")
            return
        }
        let nowMono = cloop_monotonic_ns()
        while connection.buffer.count - offset >= Self.headerBytes {
            let b = connection.buffer
            guard b[offset] == Self.magic, b[offset + 1] == Self.version else {
                badFrame(token, "bad_magic", "bad header")
                return
            }
            let length =
                Int(b[offset + 4]) | Int(b[offset + 5]) << 8 | Int(b[offset + 6]) << 16 | Int(b[offset + 7]) << 24
            guard length <= Self.maxFrameBytes else {
                badFrame(token, "frame_too_large", "frame of \(length) bytes")
                return
            }
            let start = offset + Self.headerBytes
            guard b.count - start >= length else { break }
            let kind = b[offset + 2]
            offset = start + length
            guard connection.budget.take(nowNs: nowMono) else {
                // Over this connection's rate: skipped before decoding (see the header).
                stats.rateLimited &+= 1
                rejected.record(.raft, "rate_limited")
                if !connection.rateLimitLogged {
                    connection.rateLimitLogged = true
                    logger.warning(
                        "raft: an inbound connection exceeds its frame rate; frames skipped (counted as rate_limited)")
                }
                continue
            }
            if length == 0 {
                // A keepalive: with an id (or TLS) it proves and refreshes the
                // connection; without, it proves nothing and extends nothing.
                let claimed = UInt64(bitPattern: Self.i64(b, start - 16))
                if let id = claimed != 0 ? claimed : connection.peer?.raftId {
                    guard prove(token, connection, id) else { return }
                    connection.lastValidMonoNs = nowMono
                }
                continue
            }
            if kind == Self.forwardedKind {
                guard forwarded(token, connection, b[start..<(start + length)], nowMonoNs: nowMono) else { return }
                continue
            }
            guard kind == Self.messageKind else {
                badFrame(token, "unknown_kind", "frame of kind \(kind)")
                return
            }
            let message: Message
            do {
                message = try Message.decode(b[start..<(start + length)])
            } catch {
                badFrame(token, "undecodable", "undecodable message: \(error)")
                return
            }
            guard message.to == me.raftId else {
                badFrame(token, "misaddressed", "message to \(message.to)")
                return
            }
            guard prove(token, connection, message.from) else { return }
            connection.lastValidMonoNs = nowMono
            stats.framesIn &+= 1
            let nowNs = cloop_realtime_ns()
            let sendNs = Self.i64(b, start - 24)
            let echoSendNs = Self.i64(b, start - 16)
            let echoRecvNs = Self.i64(b, start - 8)
            lastFrom[message.from] = (sendNs, nowNs)
            let sample = echoSendNs != 0 ? SyncSample(t1: echoSendNs, t2: echoRecvNs, t3: sendNs, t4: nowNs) : nil
            inbox.transportReceived(message, clockSample: sample, peerWallNs: sendNs)
            guard inbound[token] != nil else { return }
        }
        if offset > 0 { connection.buffer.removeFirst(offset) }
    }

    /// A forwarded request or answer (RaftForwarding.swift): only on a
    /// connection already proven to speak for a member (with TLS, its
    /// certificate's); else, or when it does not decode, the connection is
    /// closed. False when it was.
    private func forwarded(
        _ token: UInt32, _ connection: Inbound, _ payload: ArraySlice<UInt8>, nowMonoNs: Int64
    ) -> Bool {
        guard let member = connection.provenPeer ?? connection.peer?.raftId,
            prove(token, connection, member)
        else {
            if inbound[token] != nil { badFrame(token, "unproven_forward", "forwarded frame before proof") }
            return false
        }
        guard let message = ForwardedMessage.decode(payload) else {
            badFrame(token, "bad_forward", "undecodable forwarded frame")
            return false
        }
        connection.lastValidMonoNs = nowMonoNs
        stats.framesIn &+= 1
        forwardInbox?.forwardedReceived(message, from: member)
        return inbound[token] != nil
    }

    /// Binds `connection` to the member `id` it speaks for (see the file
    /// header), replacing an older connection proven for the same member;
    /// false (and the connection closed and counted) when `id` is not another
    /// member, or not the one the connection is bound to.
    private func prove(_ token: UInt32, _ connection: Inbound, _ id: NodeID) -> Bool {
        guard id != me.raftId, knownIds.contains(id) else {
            badFrame(token, "unknown_sender", "frame from \(id)")
            return false
        }
        // TLS: the certificate decides who speaks on this connection.
        if let peer = connection.peer, id != peer.raftId {
            badFrame(token, "tls_identity_mismatch", "frame from \(id) on \(peer.name)'s connection")
            return false
        }
        if let proven = connection.provenPeer {
            guard proven == id else {
                badFrame(token, "peer_mismatch", "frame from \(id) on a connection of \(proven)")
                return false
            }
            return true
        }
        connection.provenPeer = id
        for (other, older) in inbound where other != token && older.provenPeer == id {
            logger.info(
                "raft: a newer connection from a peer replaces its older one",
                metadata: ["peer": "\(peers.first { $0.raftId == id }?.name ?? "\(id)")"])
            dropInbound(other)
        }
        return true
    }

    /// Counts a bad frame under `reason` (snake_case) and closes its connection.
    private func badFrame(_ token: UInt32, _ reason: String, _ detail: String) {
        stats.badFrames &+= 1
        rejected.record(.raft, reason)
        logger.warning("raft: bad frame, closing the connection", metadata: ["reason": "\(detail)"])
        dropInbound(token)
    }

    private func dropInbound(_ token: UInt32) {
        loop.remove(token: token)
        inbound[token] = nil
    }

    /// Starts a connection attempt: at once to a numeric address, else after
    /// a fresh lookup of the peer's name (one in flight per peer).
    private func connect(_ connection: Outbound) {
        if connection.peer.isNumeric {
            connect(connection, to: Self.ipv4Address(connection.peer.host, connection.peer.port))
            return
        }
        guard !connection.resolving else { return }
        connection.resolving = true
        connection.resolveGeneration &+= 1
        connection.resolveStartedMonoNs = cloop_monotonic_ns()
        let generation = connection.resolveGeneration
        resolver.resolve(host: connection.peer.host, port: connection.peer.port) { [weak self] result in
            // Loop thread. A late answer to an abandoned lookup is ignored.
            guard let self, connection.resolving, connection.resolveGeneration == generation,
                self.listenToken != nil, self.outbound[connection.peer.raftId] === connection
            else { return }
            connection.resolving = false
            switch result {
            case .success(let address):
                let text = PeerResolver.text(address)
                if text != connection.lastResolved {
                    self.logger.info(
                        "raft: peer resolved", metadata: ["peer": "\(connection.peer.address)", "address": "\(text)"])
                    connection.lastResolved = text
                }
                self.connect(connection, to: address)
            case .failure(let failure):
                if connection.lastResolved != "" {
                    self.logger.warning(
                        "raft: peer name does not resolve",
                        metadata: ["peer": "\(connection.peer.address)", "error": "\(failure.reason)"])
                    connection.lastResolved = ""
                }
                self.scheduleRetry(connection)
            }
        }
    }

    private func connect(_ connection: Outbound, to address: sockaddr_in) {
        let fd = socket(
            AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = address
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard rc == 0 || errno == EINPROGRESS else {
            close(fd)
            scheduleRetry(connection)
            return
        }
        do {
            connection.token = try loop.register(
                fd: fd, interest: UInt32(CLOOP_READ | CLOOP_WRITE), owned: true, handler: self)
            connection.connected = false
            connection.startedMonoNs = cloop_monotonic_ns()
        } catch {
            close(fd)
            scheduleRetry(connection)
        }
    }

    private func outboundEvent(_ connection: Outbound, events: UInt32) {
        guard let token = connection.token else { return }
        let fd = loop.fd(token)
        if !connection.connected {
            var error: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
            guard error == 0, events & UInt32(CLOOP_ERROR) == 0 else {
                closeOutbound(connection, backoff: true)
                return
            }
            connection.connected = true
            if let tls {
                guard let session = tls.session(fd: fd, server: false) else {
                    logger.warning("raft: TLS session", metadata: ["error": "\(RaftTLS.lastError())"])
                    closeOutbound(connection, backoff: true)
                    return
                }
                connection.session = session
            } else {
                established(connection)
            }
        }
        if events & UInt32(CLOOP_HANGUP | CLOOP_ERROR) != 0 {
            closeOutbound(connection, backoff: true)
            return
        }
        if let session = connection.session, !session.established {
            guard handshakeOutbound(connection, token: token, session) else { return }
        }
        if events & UInt32(CLOOP_READ) != 0 {
            // Peers never write on our outbound connections: drain and detect
            // EOF (with TLS: alerts, e.g. the peer refusing our certificate).
            var scratch = [UInt8](repeating: 0, count: 4096)
            if let session = connection.session {
                for _ in 0..<64 {
                    let step = scratch.withUnsafeMutableBytes { session.read(into: $0) }
                    if case .done = step { continue }
                    if case .failed(let detail) = step {
                        logger.warning(
                            "raft: TLS connection to a peer failed",
                            metadata: ["peer": "\(connection.peer.address)", "error": "\(detail)"])
                        closeOutbound(connection, backoff: true)
                        return
                    }
                    if step == .closed {
                        closeOutbound(connection, backoff: true)
                        return
                    }
                    break
                }
            } else {
                let n = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) {
                    closeOutbound(connection, backoff: true)
                    return
                }
            }
        }
        flush(connection)
    }

    /// Advances the client side of the TLS handshake; true once established
    /// (the server's certificate names the member dialled), false while
    /// waiting or after closing the connection.
    private func handshakeOutbound(_ connection: Outbound, token: UInt32, _ session: TLSSession) -> Bool {
        switch session.handshake() {
        case .done:
            let names = session.peerNames
            guard case .peer(let peer) = PeerIdentity.match(names: names, peers: peers),
                peer.raftId == connection.peer.raftId
            else {
                rejected.record(.raft, "tls_wrong_server")
                logger.warning(
                    "raft: the peer's certificate does not name it, closing",
                    metadata: ["peer": "\(connection.peer.address)", "names": "\(names)"])
                closeOutbound(connection, backoff: true)
                return false
            }
            established(connection)
            return true
        case .wantRead:
            loop.modify(token: token, interest: UInt32(CLOOP_READ))
        case .wantWrite:
            loop.modify(token: token, interest: UInt32(CLOOP_READ | CLOOP_WRITE))
        case .closed:
            closeOutbound(connection, backoff: true)
        case .failed(let detail):
            if !session.peerVerified { rejected.record(.raft, "tls_untrusted_certificate") }
            logger.warning(
                "raft: TLS handshake with a peer failed",
                metadata: ["peer": "\(connection.peer.address)", "error": "\(detail)"])
            closeOutbound(connection, backoff: true)
        }
        return false
    }

    /// The connection carries frames from now on.
    private func established(_ connection: Outbound) {
        connection.backoffNs = 50_000_000
        stats.connects &+= 1
        logger.info(
            "raft: connected", metadata: ["peer": "\(connection.peer.address)", "tls": "\(connection.session != nil)"])
        // Prove at once that this is a peer, not a silent socket (handshake
        // timeout); the caller flushes.
        queueKeepalive(connection)
    }

    private func flush(_ connection: Outbound) {
        guard let token = connection.token, connection.ready else { return }
        let fd = loop.fd(token)
        var wantWrite = false
        while !connection.output.isEmpty {
            if let session = connection.session {
                // Retried with the same bytes at the front (OpenSSL's rule after WANT_WRITE).
                let step = connection.output.withUnsafeBytes { session.write($0) }
                switch step {
                case .done(let n):
                    connection.output.removeFirst(n)
                    continue
                case .wantWrite: wantWrite = true
                case .wantRead: break
                case .closed, .failed:
                    closeOutbound(connection, backoff: true)
                    return
                }
                break
            }
            let n = connection.output.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 {
                connection.output.removeFirst(n)
            } else if n < 0 && errno == EINTR {
                continue
            } else if n < 0 && errno == EAGAIN {
                break
            } else {
                closeOutbound(connection, backoff: true)
                return
            }
        }
        let want = UInt32(CLOOP_READ) | (connection.output.isEmpty && !wantWrite ? 0 : UInt32(CLOOP_WRITE))
        loop.modify(token: token, interest: want)
    }

    private func closeOutbound(_ connection: Outbound, backoff: Bool) {
        if let token = connection.token { loop.remove(token: token) }
        connection.token = nil
        connection.connected = false
        connection.session = nil
        connection.output.removeAll(keepingCapacity: true)
        if backoff { scheduleRetry(connection) }
    }

    private func scheduleRetry(_ connection: Outbound) {
        connection.retryAtNs = cloop_monotonic_ns() + connection.backoffNs
        connection.backoffNs = min(connection.backoffNs * 2, 2_000_000_000)
    }

    static func i64(_ bytes: [UInt8], _ offset: Int) -> Int64 {
        var value: UInt64 = 0
        for i in 0..<8 { value |= UInt64(bytes[offset + i]) << UInt64(8 * i) }
        return Int64(bitPattern: value)
    }

    static func ipv4Address(_ host: String, _ port: Int) -> sockaddr_in {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(port).bigEndian
        inet_pton(AF_INET, host, &addr.sin_addr)
        return addr
    }

    private final class Outbound {
        let peer: Peer
        var token: UInt32?
        /// TCP connected (the TLS handshake may still be under way).
        var connected = false
        /// The TLS session, with TLS (nil for plain TCP, or before TCP connects).
        var session: TLSSession?
        /// Monotonic time of the connect(2) call (bounds connect and handshake).
        var startedMonoNs: Int64 = 0
        /// Frames may be written: connected, and the TLS handshake done.
        var ready: Bool { connected && (session?.established ?? true) }
        var output: [UInt8] = []
        var backoffNs: Int64 = 50_000_000
        var retryAtNs: Int64 = 0
        /// Monotonic time of the last frame queued (for keepalives).
        var lastWriteMonoNs: Int64 = 0
        /// A name lookup is in flight (DNS-named peers), since when, and which.
        var resolving = false
        var resolveStartedMonoNs: Int64 = 0
        var resolveGeneration: UInt64 = 0
        /// The address the name last resolved to ("" before, or after a failure: logged on change).
        var lastResolved: String? = nil
        init(peer: Peer) { self.peer = peer }
    }

    private final class Inbound {
        var buffer: [UInt8] = []
        let acceptedMonoNs: Int64
        /// The member this connection has proven to speak for (see the file
        /// header), or nil: then it may be evicted, and closes at the handshake timeout.
        var provenPeer: NodeID?
        /// Monotonic time of the last valid frame of a proven connection.
        var lastValidMonoNs: Int64 = 0
        /// Frames this connection may still deliver (its rate limit).
        var budget: FrameBudget
        var rateLimitLogged = false
        /// TLS: the session (nil before the first byte) and the member its certificate names.
        var session: TLSSession?
        var peer: Peer?
        /// TLS: the session waits for the socket to be writable.
        var wantWrite = false
        init(acceptedMonoNs: Int64, budget: FrameBudget) {
            self.acceptedMonoNs = acceptedMonoNs
            self.budget = budget
        }
    }
}
