// Nats: the NATS connection driven by the pulse's own event loop.
//
// The C client runs in event-loop mode (`natsOptions_SetEventLoop`): it has no
// reader thread and no flusher; its socket is one more fd in CLoop. The
// library still calls the adapter from its own threads (the connect thread
// attaches the socket, the ping timer asks for write interest), so every
// callback that is not on the loop thread goes through the loop's doorway.
//
// Writes: with `SendAsap`, a publish appends to the client's buffer and asks
// for write interest; on the loop thread we do not touch epoll for that but
// flush at once after the publish (`flush()`), and only register EPOLLOUT when
// the socket would block. So a beat costs one `write(2)`.
//
// Nothing on the loop blocks on NATS (requirements §4; read against the
// libnats 3.4.1 source, src/conn.c):
// - Every natsConnection_* call takes the connection's mutex (`nc->mu`):
//   Publish/PublishRequest (natsConn_publish appends under it),
//   ProcessRead/WriteEvent, Subscribe, Status, Buffered, GetConnectedUrl...
//   Publishing on the loop is the design, so the question is who else can
//   hold that mutex, and for how long.
// - The library's reconnect thread (`_doReconnect`) holds it across
//   `_createConn` and `_processConnInit`: DNS, TCP connect and the
//   INFO/CONNECT/PING/PONG handshake, up to `natsOptions_SetTimeout` per
//   server, back to back through the server pool (it only yields between
//   servers). A loop that publishes then stalls for seconds.
// - So the library never reconnects a connection the loop uses
//   (`natsOptions_SetAllowReconnect(false)`). When a connection closes, a
//   short-lived connect thread of ours builds a new natsConnection (the
//   configured servers plus the ones the cluster gossiped to the old one);
//   whatever blocking it does holds the *new* connection's mutex, which the
//   loop does not know yet. The loop adopts it when its socket is attached
//   and the client reports it connected (the attach is called after the
//   handshake, the last blocking step; afterwards the library holds the
//   mutex only for buffer work).
// - The other holders of a live connection's mutex are short: the ping timer
//   (appends a PING), the delivery and callback threads (bookkeeping). The
//   ping timer could also declare the link stale and close the connection
//   from its own thread; it never does (`MaxPingsOut` is effectively
//   infinite): the loop notices silence itself (`staleAfterNs`, no bytes
//   read while the server should have answered three pings) and shuts the
//   socket down, so the client reads EOF and closes on the loop thread. All
//   closes of a live connection therefore happen on the loop thread, which
//   also avoids 3.4.1's unlocked read of a socket another thread is closing.
// - `natsConnection_Status` is never called: the loop tracks the state from
//   the adapter and the client's callbacks (connected, disconnected, closed)
//   through the doorway (`connection` is non-nil exactly while publishing is
//   allowed).
// - Remaining exception, documented: if resending subscriptions fails after
//   the attach of a first connect that had to retry (3.4.1 `_doReconnect`,
//   only on allocation failure), the library retries with the mutex held
//   while the loop already has the connection.
//
// Socket lifetime: the library closes its socket itself (3.4.1) or, from
// 3.10, asks the adapter to (`natsConnection_ProcessCloseEvent`, looked up at
// run time). The loop registers its own `dup` of the socket, so the fd number
// it watches can never be reused behind its back; the registration is dropped
// (and the dup closed) when the library removes read interest or detaches.
//
// Reading: the beat subject is a synchronous subscription drained on the loop
// right after each read event (`subscribeOnLoop`, NatsLoopSubscription.swift):
// the node's own echo is judged in the wake that read it, with no delivery
// thread and no doorway round, within a per-wake budget. The other subjects
// (control, timeline, request inboxes) keep asynchronous subscriptions whose
// delivery thread posts each message to the loop through the doorway; each
// has pending limits in the client (`asyncPendingMessages`/`Bytes`) and at
// most `maxInFlightPerSubscription` messages waiting in the doorway, so a
// flood on one subject (timeline requests) can neither grow memory nor fill
// the doorway that carries the connection's own events. Messages beyond are
// dropped and counted on the subscription's surface, when it has one:
// `rejected{reason="over_budget"}` (in-flight budget) and `pending_limit`
// (the client's limits; not logged line by line).
//
// While NATS is down the pulse keeps beating and does not buffer frames: a
// beat delivered late is a wrong beat.
//
// Two links per node (issue 20): `beat` carries frames, publications and the
// echo; `requests` (same servers, credentials, TLS and reconnect handling)
// carries consumer requests and their replies, so that no reply ever queues
// ahead of a frame in the beat's socket (docs/decisions.md, "Requests on their
// own NATS connection"). Both are served by one loop: their doorway events
// carry the link's index (`NatsDoorwayRouter`).
import CLoop
import CNats
import Foundation
import Glibc
import Logging
import Synchronization

/// How the link authenticates and encrypts (flags -nats-creds, -nats-nkey,
/// -nats-ca, -nats-cert, -nats-key; user/password or a token ride in the URL).
/// Paths only: the C client reads the files, and the files were validated at
/// start-up (`PulseConfig.validateSecurity`).
struct NatsSecurity: Sendable {
    var credsPath = ""
    var nkeySeedPath = ""
    var caPath = ""
    var certPath = ""
    var keyPath = ""

    init() {}

    init(config: PulseConfig) {
        credsPath = config.natsCreds
        nkeySeedPath = config.natsNkey
        caPath = config.natsCA
        certPath = config.natsCert
        keyPath = config.natsKey
    }
}

/// Counters and state of the link, read by metrics and health.
struct NatsLinkStats {
    var attaches: UInt64 = 0
    var reconnects: UInt64 { attaches > 0 ? attaches - 1 : 0 }
    var publishErrors: UInt64 = 0
    var skippedWhileDown: UInt64 = 0
    /// Connections dropped because published frames did not come back.
    var aborts: UInt64 = 0
    /// Connections dropped because the server fell silent (`staleAfterNs`).
    var staleAborts: UInt64 = 0
    /// natsConnection objects created (one per connect, reconnects included).
    var connections: UInt64 = 0
    /// Beat frames written by the loop itself; of them, taken only in part by
    /// the socket (the tail written later); frames the full socket refused
    /// at once (handed to the client instead).
    var directFrames: UInt64 = 0
    var directPartial: UInt64 = 0
    var directWouldBlock: UInt64 = 0
    /// `PING`s the loop wrote itself on a silent link (`pingIfSilent`).
    var ownPings: UInt64 = 0
}

/// What a link carries (`connection` label of its metrics).
enum NatsLinkRole: String, Sendable {
    /// Beat frames, publications and the beat subject's echo: the socket
    /// the beat's bytes leave on, with TX timestamps and direct writes.
    case beat
    /// Consumer requests (timeline and control) and their replies, on a
    /// socket of their own, so that no reply is ever queued ahead of a
    /// frame (issue 20; docs/decisions.md "Requests on their own NATS
    /// connection"). No TX timestamps, no direct writes.
    case requests
}

/// Routes the NATS doorway kinds to the link that posted them: every link
/// of a loop posts with `value` = its index here.
private final class NatsDoorwayRouter: DoorwayHandler {
    var links: [Unmanaged<NatsLink>] = []
    func doorwayMessage(_ message: cloop_msg_t) {
        guard message.value < UInt64(links.count) else { return }
        links[Int(message.value)].takeUnretainedValue().doorwayMessage(message)
    }
}

/// A NATS connection whose socket is served by an `EventLoop`.
final class NatsLink: LoopHandler, DoorwayHandler, BeforeSleepHandler {
    /// `-nats` as given: one URL or a comma-separated list.
    let url: String
    /// `url` without user information, for logs and /health (NatsAuth.redact).
    let redactedURL: String
    let security: NatsSecurity
    /// The configured servers (`url` split on commas).
    let servers: [String]
    let name: String
    let role: NatsLinkRole
    /// This link's index in its loop's `NatsDoorwayRouter` (`value` of its posts).
    private let doorwayIndex: UInt64
    /// Slow-consumer errors the client reported on this connection (its
    /// pending limits overflowed), from the library's callback thread.
    private let slowConsumerEvents = Atomic<UInt64>(0)
    var slowConsumerCount: UInt64 { slowConsumerEvents.load(ordering: .relaxed) }
    fileprivate unowned let loop: EventLoop
    fileprivate let logger: Logger
    /// The connection the loop may publish on: attached to the loop and
    /// reported connected. Nil otherwise. Loop thread only.
    private(set) var connection: OpaquePointer?
    /// The connection whose socket is registered with the loop (read and
    /// write events are fed to it), connected or still handshaking.
    private var attachedConnection: OpaquePointer?
    /// The connection of the current generation, whatever its state: the
    /// loop closes and destroys it at shutdown. Loop thread only.
    private var currentConnection: OpaquePointer?
    private var options: OpaquePointer?
    private var socketToken: UInt32?
    /// Our dup of the library's socket (what the loop watches and may shut down).
    private var socketFd: Int32 = -1
    /// The library's own socket number, for `natsConnection_ProcessCloseEvent`.
    private var librarySocket: Int32 = -1
    private var readWanted = false
    /// The library asked for write interest and has bytes buffered.
    private var writeWanted = false
    /// Beat frames go straight to the socket (`publish(subject:bytes:length:)`)
    /// on a plain-text connection; TLS records are the client's to write.
    private let directWrites: Bool
    /// One `PUB` composed for a direct write, allocated once.
    private let directBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 8)
    /// The unwritten tail of a direct write the socket took only in part
    /// (`directBuffer[directSent..<directEnd]`): it goes out before anything
    /// of the client's, so the protocol stream stays whole.
    private var directSent = 0
    private var directEnd = 0
    /// The link writes its own `PING` when the server has been silent for
    /// `pingIntervalMs` (plain text only; see `pingIfSilent`); the client's
    /// ping timer is then set to `libraryPingIntervalMs`.
    private let ownPings: Bool
    /// No TLS: the client's bytes are the socket's (direct writes, own
    /// pings, deferred reads).
    private let plainText: Bool
    /// When the link last wrote its own `PING` (monotonic ns).
    private var lastOwnPingMonoNs: Int64 = 0
    /// Reads wait for the loop's next turn instead of waking it (`deferReads`).
    private var readsDeferred = false
    /// True while `readDeferred` hands what it read to the subscriptions:
    /// their messages arrived up to a turn earlier than they are read.
    private(set) var readingDeferred = false
    private(set) var stats = NatsLinkStats()
    private var connectThread: pthread_t?
    private var closed = false
    private var subscriptions: [Subscription] = []
    /// Subscriptions read on the loop thread after each read event (the beat
    /// subject: see NatsLoopSubscription.swift). Loop thread only.
    private(set) var loopSubscriptions: [NatsLoopSubscription] = []
    /// The library handles of `loopSubscriptions`, readable from the
    /// library's callback thread under `callbackLock` (their slow-consumer
    /// errors are counted by the drain, not logged).
    private var countedSubscriptions: Set<OpaquePointer> = []
    private var warmedUp = false
    /// When the current connection became publishable (monotonic ns);
    /// `Int64.max` while there is none.
    private(set) var connectedSinceMonoNs: Int64 = .max
    /// Last time bytes arrived on the attached socket (monotonic ns).
    private(set) var lastInboundMonoNs: Int64 = 0
    /// Silence after which a connection counts as dead: three ping intervals
    /// (the server answers every PING, so a live link is never that quiet).
    static let pingIntervalMs: Int32 = 500
    /// The client's own ping timer on a link that pings by itself
    /// (`ownPings`): a backstop only (an hour), so that its timer thread
    /// never wakes the loop through the doorway.
    static let libraryPingIntervalMs: Int64 = 3_600_000
    /// TCP_USER_TIMEOUT on the NATS socket (fault 2 of issue #10): bytes the
    /// kernel holds unacknowledged for longer are dropped with the
    /// connection, so a frame queued behind a dead link (a partition, a
    /// stopped or starved process) arrives within this bound or never. The
    /// hand-over guard (`BeatDriver.handoffGuardNs`) covers it. The kernel
    /// enforces it even while this process is stopped; above Linux's 200 ms
    /// minimum retransmission timeout, so one lost segment does not drop a
    /// healthy connection.
    static let userTimeoutMs: Int64 = 250
    static let staleAfterNs: Int64 = 3 * Int64(pingIntervalMs) * 1_000_000
    /// The requests link's ping interval: it carries no beat, and an idle
    /// one would otherwise wake the loop for a PONG twice a second; a dead
    /// one is found within three intervals (6 s) and reconnected, while
    /// consumers' requests time out and are retried (issue 24).
    static let requestsPingIntervalMs: Int32 = 2000
    /// This link's ping interval and the silence after which it is dead.
    var pingIntervalMs: Int32 { role == .beat ? Self.pingIntervalMs : Self.requestsPingIntervalMs }
    var staleAfterNs: Int64 { 3 * Int64(pingIntervalMs) * 1_000_000 }
    private var inbox: String?
    /// TX timestamps (SO_TIMESTAMPING) on the attached socket: the id base
    /// from `cloop_txts_enable`, or -1 when the kernel refused them (then
    /// publish times fall back to the write's return).
    private var txBase: Int64 = -1
    /// The id of the beat frame's last byte while its timestamp is awaited.
    private var pendingTxKey: UInt32?
    /// Hears a beat frame's TX timestamp that arrived after its beat (loop thread).
    weak var txSink: TxTimestampSink?
    /// Signs frames and publications (`-sign-key`); nil: they go unsigned.
    var signer: PublicationSigner?
    private var requestCounter: UInt64 = 0
    private var pendingRequests: [UInt64: (deadlineNs: Int64, reply: (Data?) -> Void)] = [:]

    init(
        url: String, name: String, loop: EventLoop, logger: Logger, security: NatsSecurity = NatsSecurity(),
        role: NatsLinkRole = .beat
    ) {
        self.url = url
        self.role = role
        self.redactedURL = NatsAuth.redact(url)
        self.security = security
        let servers = (try? Self.serverList(url)) ?? [url]
        self.servers = servers
        let plainText =
            security.caPath.isEmpty && security.certPath.isEmpty && !servers.contains { $0.hasPrefix("tls://") }
        self.directWrites = role == .beat && plainText
        self.ownPings = plainText
        self.plainText = plainText
        self.name = name
        self.loop = loop
        self.logger = logger
        let router = (loop.doorwayHandler(for: .natsAttach) as? NatsDoorwayRouter) ?? NatsDoorwayRouter()
        doorwayIndex = UInt64(router.links.count)
        loop.setDoorwayHandler(
            router,
            for: [
                .natsAttach, .natsRead, .natsWrite, .natsDetach, .natsConnected, .natsClosed, .natsPending,
                .natsDisconnected,
            ])
        loop.addBeforeSleep(self)
        // The link is retained for good in `start()` (the client's callbacks);
        // the router only names it.
        router.links.append(Unmanaged.passUnretained(self))
    }

    deinit {
        if let options { natsOptions_Destroy(options) }
        directBuffer.deallocate()
    }

    /// Splits `-nats` into server URLs: one URL, or a comma-separated list as
    /// every NATS client accepts. Each must be nats:// or tls:// with a host.
    /// Throws a one-line reason (for `-nats` validation).
    static func serverList(_ value: String) throws -> [String] {
        let parts = value.split(separator: ",", omittingEmptySubsequences: false).map {
            $0.trimmingCharacters(in: .whitespaces)
        }
        guard !parts.isEmpty, parts.count <= 64 else {
            throw PulseError.config("-nats: between 1 and 64 servers (got \(parts.count))")
        }
        for part in parts {
            let ok = (part.hasPrefix("nats://") || part.hasPrefix("tls://")) && !part.hasSuffix("://")
            guard ok, !part.contains(where: { $0.isWhitespace || $0.asciiValue.map { $0 < 0x20 } ?? false }) else {
                throw PulseError.config("-nats: '\(part)' is not a nats:// or tls:// URL")
            }
        }
        return parts
    }

    /// True while frames can be published: the loop's own record, kept from
    /// the adapter and the client's callbacks (never `natsConnection_Status`,
    /// which takes the client's mutex).
    var isConnected: Bool { connection != nil }

    /// Starts connecting in the background; returns at once. Throws only for
    /// invalid options (for example a malformed URL).
    func start() throws {
        let servers = try Self.serverList(url)
        var opts: OpaquePointer?
        try check(natsOptions_Create(&opts), "natsOptions_Create")
        options = opts
        try setServers(servers)
        try check(natsOptions_SetName(opts, name), "natsOptions_SetName")
        try check(natsOptions_SetSendAsap(opts, true), "natsOptions_SetSendAsap")
        // The library never reconnects a connection the loop uses (see the
        // file header); a new connection is made off the loop instead.
        try check(natsOptions_SetAllowReconnect(opts, false), "natsOptions_SetAllowReconnect")
        try check(natsOptions_SetMaxReconnect(opts, -1), "natsOptions_SetMaxReconnect")
        try check(natsOptions_SetReconnectWait(opts, 250), "natsOptions_SetReconnectWait")
        try check(natsOptions_SetReconnectJitter(opts, 100, 1000), "natsOptions_SetReconnectJitter")
        try check(natsOptions_SetTimeout(opts, 2000), "natsOptions_SetTimeout")
        try check(
            natsOptions_SetPingInterval(opts, ownPings ? Self.libraryPingIntervalMs : Int64(pingIntervalMs)),
            "natsOptions_SetPingInterval")
        // Never let the ping timer close a connection from its own thread:
        // the loop detects silence itself (staleAfterNs).
        try check(natsOptions_SetMaxPingsOut(opts, Int32.max), "natsOptions_SetMaxPingsOut")
        // The link itself is the closure of every callback; it is retained
        // once here and never released, since the client may deliver a
        // callback for a destroyed connection later.
        let me = Unmanaged.passRetained(self).toOpaque()
        try check(natsOptions_SetRetryOnFailedConnect(opts, true, natsConnectedCallback, me), "retry option")
        try check(natsOptions_SetDisconnectedCB(opts, natsDisconnectedCallback, me), "disconnected callback")
        try check(natsOptions_SetReconnectedCB(opts, natsReconnectedCallback, me), "reconnected callback")
        try check(natsOptions_SetClosedCB(opts, natsClosedCallback, me), "closed callback")
        try check(
            natsOptions_SetEventLoop(opts, me, natsAdapterAttach, natsAdapterRead, natsAdapterWrite, natsAdapterDetach),
            "natsOptions_SetEventLoop")
        try check(natsOptions_SetErrorHandler(opts, natsErrorCallback, me), "error handler")
        try applySecurity(opts)
        try startConnectThread(previous: nil)
    }

    /// Credentials and TLS through the C client's own options. The errors
    /// name the flag, never a secret.
    func applySecurity(_ opts: OpaquePointer?) throws {
        if !security.credsPath.isEmpty {
            try check(
                natsOptions_SetUserCredentialsFromFiles(opts, security.credsPath, nil),
                "-nats-creds \(security.credsPath)")
        }
        if !security.nkeySeedPath.isEmpty {
            let seedFile = try PulseConfig.read(security.nkeySeedPath)
            let publicKey: String
            do {
                publicKey = try NatsAuth.parseSeedFile(fileContents: seedFile).publicKey
            } catch let error as NatsAuth.Invalid {
                throw PulseError.startup("-nats-nkey \(security.nkeySeedPath): \(error.reason)")
            }
            try check(
                natsOptions_SetNKeyFromSeed(opts, publicKey, security.nkeySeedPath),
                "-nats-nkey \(security.nkeySeedPath)")
        }
        if !security.caPath.isEmpty {
            try check(natsOptions_SetSecure(opts, true), "natsOptions_SetSecure")
            try check(natsOptions_LoadCATrustedCertificates(opts, security.caPath), "-nats-ca \(security.caPath)")
        }
        if !security.certPath.isEmpty {
            try check(natsOptions_SetSecure(opts, true), "natsOptions_SetSecure")
            try check(
                natsOptions_LoadCertificatesChain(opts, security.certPath, security.keyPath),
                "-nats-cert \(security.certPath) / -nats-key \(security.keyPath)")
        }
    }

    /// An asynchronous error from the server or the client (library thread):
    /// a permissions violation (this identity may not publish or subscribe
    /// there) or a refused authorization, logged with the server's words.
    fileprivate func asyncError(_ nc: OpaquePointer?, _ sub: OpaquePointer?, _ status: natsStatus) {
        if status == NATS_SLOW_CONSUMER { slowConsumerEvents.add(1, ordering: .relaxed) }
        if status == NATS_SLOW_CONSUMER, let sub {
            callbackLock.lock()
            let counted = countedSubscriptions.contains(sub)
            callbackLock.unlock()
            // A flood on a loop-read subject would log a line per read event;
            // its drops are counted as rejected input instead.
            if counted { return }
        }
        var detail = ""
        var text: UnsafePointer<CChar>?
        if let nc, natsConnection_GetLastError(nc, &text) != NATS_OK, let text { detail = String(cString: text) }
        logger.error(
            "NATS error",
            metadata: ["status": "\(String(cString: natsStatus_GetText(status)))", "detail": "\(detail)"])
    }

    private func setServers(_ list: [String]) throws {
        if list.count == 1 {
            // A single URL: the client still follows the servers the
            // cluster gossips (INFO connect_urls).
            try check(natsOptions_SetURL(options, list[0]), "invalid -nats URL '\(list[0])'")
            return
        }
        var cStrings = list.map { strdup($0) }
        defer { for p in cStrings { free(p) } }
        let status = cStrings.withUnsafeMutableBufferPointer { buffer in
            buffer.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: buffer.count) {
                natsOptions_SetServers(options, $0, Int32(buffer.count))
            }
        }
        try check(status, "invalid -nats server list '\(list.joined(separator: ","))'")
    }

    /// What a connect thread takes over from the loop: the previous
    /// connection (closed by the client) and its subscriptions to destroy,
    /// and the previous connect thread to join.
    private struct Handoff {
        var connection: OpaquePointer
        var subscriptions: [OpaquePointer]
        var thread: pthread_t?
    }

    private final class ConnectJob {
        let link: NatsLink
        let previous: Handoff?
        init(link: NatsLink, previous: Handoff?) {
            self.link = link
            self.previous = previous
        }
    }

    /// Connect off the loop thread: it resolves names and blocks on TCP.
    private func startConnectThread(previous: Handoff?) throws {
        let box = Unmanaged.passRetained(ConnectJob(link: self, previous: previous)).toOpaque()
        var thread = pthread_t()
        // A thread created by the (maybe pinned, real-time) loop thread
        // inherits its placement; the thread moves itself off the beat core.
        let rc = pthread_create(
            &thread, nil,
            { arg in
                ThreadPlacement.placeCurrentHelperThread()
                let job = Unmanaged<ConnectJob>.fromOpaque(arg!).takeRetainedValue()
                job.link.connectBlocking(previous: job.previous)
                return nil
            }, box)
        guard rc == 0 else {
            Unmanaged<ConnectJob>.fromOpaque(box).release()
            throw PulseError.startup("cannot start the NATS connect thread: \(String(cString: strerror(rc)))")
        }
        connectThread = thread
    }

    /// Connect thread: retire the previous connection, then make a new one.
    private func connectBlocking(previous: Handoff?) {
        var list = servers
        if let previous {
            if let thread = previous.thread { pthread_join(thread, nil) }
            for subscription in previous.subscriptions { natsSubscription_Destroy(subscription) }
            // Keep following the cluster: the servers it gossiped to the old
            // connection join the configured ones.
            var discovered: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
            var count: Int32 = 0
            if natsConnection_GetDiscoveredServers(previous.connection, &discovered, &count) == NATS_OK,
                let discovered
            {
                for i in 0..<Int(count) {
                    if let s = discovered[i] {
                        let server = String(cString: s)
                        if !list.contains(server) { list.append(server) }
                        free(s)
                    }
                }
                free(discovered)
            }
            // A connection that ended with "no server available" never got
            // through: 3.4.1 reports refused credentials that way, without
            // the server's words. A plain probe connection (this thread,
            // blocking) tells refused credentials apart; then one line (the
            // first time, then every 30th) and a second's pause, not a spin.
            var text: UnsafePointer<CChar>?
            if natsConnection_GetLastError(previous.connection, &text) == NATS_NO_SERVER {
                if let refusal = probeCredentials(list) {
                    if authRefusals.increment() % 30 == 1 { logAuthRefused(refusal) }
                    usleep(1_000_000)
                } else {
                    usleep(250_000)
                }
            }
            natsConnection_Destroy(previous.connection)
            do { try setServers(list) } catch { logger.error("NATS server list", metadata: ["error": "\(error)"]) }
        }
        var nc: OpaquePointer?
        let status = natsConnection_Connect(&nc, options)
        if status == NATS_OK, let nc {
            logConnected(nc)
            whileOpen {
                if !loop.post(kind: .natsConnected, value: doorwayIndex, pointer: UnsafeMutableRawPointer(nc)) {
                    logger.error("doorway full: NATS connection lost", metadata: ["url": "\(redactedURL)"])
                }
            }
        } else if status == NATS_NOT_YET_CONNECTED, let nc,
            case let detail = nats_GetLastError(nil).map({ String(cString: $0) }) ?? ""
        {
            // The client keeps trying on its own thread (holding this new
            // connection's mutex); the loop owns it only for shutdown until
            // the connected callback arrives.
            whileOpen {
                if !loop.post(kind: .natsPending, value: doorwayIndex, pointer: UnsafeMutableRawPointer(nc)) {
                    logger.error("doorway full: NATS connection lost", metadata: ["url": "\(redactedURL)"])
                }
            }
            if Self.isAuthError(detail) {
                if authRefusals.increment() % 30 == 1 { logAuthRefused(detail) }
            } else {
                logger.warning(
                    "NATS not reachable yet; retrying in the background",
                    metadata: [
                        "servers": "\(NatsAuth.redact(list.joined(separator: ",")))", "detail": "\(detail)",
                        "connection": "\(role)",
                    ])
            }
        } else {
            // The server's reason (e.g. "Authorization Violation" for refused
            // credentials), from this thread's last error.
            let detail = nats_GetLastError(nil).map { String(cString: $0) } ?? ""
            logger.error(
                status == NATS_CONNECTION_AUTH_FAILED
                    ? "NATS refused the credentials (-nats-creds, -nats-nkey or the URL's user); not connected"
                    : "NATS connect failed",
                metadata: [
                    "url": "\(redactedURL)", "status": "\(String(cString: natsStatus_GetText(status)))",
                    "detail": "\(detail)", "connection": "\(role)",
                ])
        }
    }

    /// Logs the server actually connected to (callback or connect thread:
    /// `natsConnection_GetConnectedUrl` takes the client's mutex).
    fileprivate func logConnected(_ nc: OpaquePointer) {
        var buffer = [CChar](repeating: 0, count: 512)
        let connectedURL =
            natsConnection_GetConnectedUrl(nc, &buffer, buffer.count) == NATS_OK
            ? String(cString: buffer) : "?"
        let first = connectionsLogged.increment() == 1
        logger.info(
            first ? "NATS connected" : "NATS reconnected",
            metadata: [
                "url": "\(NatsAuth.redact(connectedURL))", "configured": "\(redactedURL)", "connection": "\(role)",
            ])
    }

    private let connectionsLogged = AtomicCounter()
    /// Connect thread: one blocking connection with the same servers and
    /// credentials; the server's refusal text if it refuses the credentials.
    private func probeCredentials(_ list: [String]) -> String? {
        var opts: OpaquePointer?
        guard natsOptions_Create(&opts) == NATS_OK else { return nil }
        defer { natsOptions_Destroy(opts) }
        _ = natsOptions_SetURL(opts, list.first ?? url)
        _ = natsOptions_SetTimeout(opts, 2000)
        guard (try? applySecurity(opts)) != nil else { return nil }
        var nc: OpaquePointer?
        let status = natsConnection_Connect(&nc, opts)
        let detail = nats_GetLastError(nil).map { String(cString: $0) } ?? ""
        if let nc { natsConnection_Destroy(nc) }
        return status == NATS_CONNECTION_AUTH_FAILED || Self.isAuthError(detail) ? detail : nil
    }

    /// Connection attempts the server refused for their credentials (connect threads).
    private let authRefusals = AtomicCounter()

    static func isAuthError(_ text: String) -> Bool {
        let lower = text.lowercased()
        return lower.contains("authorization violation") || lower.contains("authentication")
    }

    /// One line naming the cause; the link keeps retrying once a second
    /// (the server's configuration may be fixed), `backbeat_nats_connected 0`.
    private func logAuthRefused(_ detail: String) {
        logger.error(
            "NATS refused the credentials (-nats-creds, -nats-nkey or the URL's user); not connected, retrying every second",
            metadata: ["detail": "\(detail)", "url": "\(redactedURL)"])
    }

    /// Publishes `length` bytes from `bytes` on `subject` and flushes at once
    /// (the beat path's frames: signed first with `signer`, when set).
    /// Returns false (and counts why) when NATS is down or the publish failed.
    /// Allocation-free once the client's buffers have reached their size.
    /// Never waits on the reconnect machinery: `connection` is only set for a
    /// connection whose blocking phase is over (see the file header).
    @inline(__always)
    func publish(subject: UnsafePointer<CChar>, bytes: UnsafeRawPointer, length: Int) -> Bool {
        guard let connection else {
            stats.skippedWhileDown &+= 1
            return false
        }
        // -sign-key: the frame signed in the signer's own buffer (allocation-free).
        let frame = signer?.signFrame(UnsafeRawBufferPointer(start: bytes, count: length))
        if let frame, frame.isEmpty {
            stats.publishErrors &+= 1
            return false
        }
        let out = frame?.baseAddress ?? bytes
        let outLength = frame?.count ?? length
        switch writeDirect(subject: subject, bytes: out, length: outLength) {
        case .written: return true
        case .failed:
            stats.publishErrors &+= 1
            return false
        case .notTaken: break
        }
        let status = natsConnection_Publish(connection, subject, out, Int32(outLength))
        flush()
        if status != NATS_OK {
            stats.publishErrors &+= 1
            return false
        }
        return true
    }

    /// Publishes `payload` (not for the beat path: it may allocate). Returns
    /// false when NATS is down.
    @discardableResult
    func publish(subject: String, payload: Data, reply: String? = nil) -> Bool {
        guard let connection else { return false }
        let status = payload.withUnsafeBytes { raw -> natsStatus in
            if let reply {
                return natsConnection_PublishRequest(connection, subject, reply, raw.baseAddress, Int32(raw.count))
            }
            return natsConnection_Publish(connection, subject, raw.baseAddress, Int32(raw.count))
        }
        // The requests link writes its replies once per loop turn
        // (`beforeSleep`): one write(2) for a turn's replies, not one each.
        if role == .beat { flush() }
        return status == NATS_OK
    }

    /// Sends a request and calls `reply` on the loop thread with the first
    /// answer, or nil after `timeoutNs` (checked by `expireRequests`).
    func request(subject: String, payload: Data, timeoutNs: Int64, reply: @escaping (Data?) -> Void) {
        if inbox == nil {
            let prefix = "_INBOX.backbeat.\(UInt64.random(in: 1...UInt64.max))"
            inbox = prefix
            subscribe(subject: prefix + ".*") { [unowned self] message in
                guard let token = message.subject.split(separator: ".").last.flatMap({ UInt64($0) }),
                    let pending = self.pendingRequests.removeValue(forKey: token)
                else { return }
                pending.reply(message.data)
            }
        }
        requestCounter &+= 1
        let token = requestCounter
        pendingRequests[token] = (cloop_monotonic_ns() + timeoutNs, reply)
        if !publish(subject: subject, payload: payload, reply: "\(inbox!).\(token)") {
            pendingRequests[token] = nil
            reply(nil)
        }
    }

    /// Fails requests whose time is up (housekeeping).
    func expireRequests(nowMonoNs: Int64) {
        for (token, pending) in pendingRequests where pending.deadlineNs <= nowMonoNs {
            pendingRequests[token] = nil
            pending.reply(nil)
        }
    }

    /// A message received on a subscription, handed to the loop thread.
    struct Message {
        var subject: String
        var reply: String?
        var data: Data
        /// Wall-clock time the client library handed it over, in Unix ns.
        var receivedNs: Int64
    }

    /// Subscribes to `subject`; `handler` runs on the loop thread for each
    /// message. Subscriptions are made once connected and survive reconnects.
    /// `onDelivery`, if given, runs on the library's delivery thread first
    /// (for measurements that must not wait for the loop).
    func subscribe(
        subject: String, onDelivery: ((Message) -> Void)? = nil, rejected: RejectedInput? = nil,
        surface: InputSurface? = nil, handler: @escaping (Message) -> Void
    ) {
        let subscription = Subscription(subject: subject, link: self, onDelivery: onDelivery, handler: handler)
        if let rejected, let surface { subscription.counted = (rejected, surface) }
        subscriptions.append(subscription)
        if connection != nil { subscription.open() }
    }

    /// Subscribes to `subject` with the messages read on the loop thread
    /// itself, right after each read event, within `limits` per wake; the
    /// overflow is counted in `rejected` under `surface` (see
    /// NatsLoopSubscription.swift). `handler` sees each payload in place.
    /// Made once connected and again after each reconnect.
    @discardableResult
    func subscribeOnLoop(
        subject: String, limits: NatsLoopSubscription.Limits, rejected: RejectedInput, surface: InputSurface,
        handler: @escaping (UnsafeRawBufferPointer, Int64) -> Void
    ) -> NatsLoopSubscription {
        let subscription = NatsLoopSubscription(
            subject: subject, limits: limits, rejected: rejected, surface: surface, handler: handler)
        loopSubscriptions.append(subscription)
        if connection != nil { openLoopSubscription(subscription) }
        return subscription
    }

    private func openLoopSubscription(_ subscription: NatsLoopSubscription) {
        guard let connection, subscription.raw == nil else { return }
        let status = subscription.open(on: connection)
        if status != NATS_OK {
            logger.error(
                "cannot subscribe",
                metadata: [
                    "subject": "\(subscription.subject)", "status": "\(String(cString: natsStatus_GetText(status)))",
                ])
        } else if let raw = subscription.raw {
            callbackLock.lock()
            countedSubscriptions.insert(raw)
            callbackLock.unlock()
        }
        flush()
    }

    /// Takes the loop subscriptions' handles for destruction (the
    /// connection closed, or shutdown).
    private func releaseLoopSubscriptions() -> [OpaquePointer] {
        let handles = loopSubscriptions.compactMap { $0.release() }
        callbackLock.lock()
        for handle in handles { countedSubscriptions.remove(handle) }
        callbackLock.unlock()
        return handles
    }

    /// Pending limits of an asynchronous subscription in the client library.
    static let asyncPendingMessages: Int32 = 4096
    static let asyncPendingBytes: Int32 = 4 << 20
    /// Messages of one asynchronous subscription posted to the loop and not run yet.
    static let maxInFlightPerSubscription = 128

    fileprivate final class Subscription {
        let subject: String
        unowned let link: NatsLink
        let onDelivery: ((Message) -> Void)?
        let handler: (Message) -> Void
        var raw: OpaquePointer?
        /// Posted to the loop and not run yet (delivery thread increments, loop decrements).
        let inFlight = Atomic<Int>(0)
        /// Dropped over `maxInFlightPerSubscription` (or a full doorway), not yet counted.
        let dropped = Atomic<UInt64>(0)
        /// Where drops are counted (loop thread).
        var counted: (RejectedInput, InputSurface)?
        /// The client library's dropped count already counted (pending limits).
        private var libraryDropped: Int64 = 0

        private func setCounted(_ handle: OpaquePointer, _ on: Bool) {
            link.callbackLock.lock()
            if on { link.countedSubscriptions.insert(handle) } else { link.countedSubscriptions.remove(handle) }
            link.callbackLock.unlock()
        }

        init(subject: String, link: NatsLink, onDelivery: ((Message) -> Void)?, handler: @escaping (Message) -> Void) {
            self.subject = subject
            self.link = link
            self.onDelivery = onDelivery
            self.handler = handler
        }

        func open() {
            guard raw == nil, let connection = link.connection else { return }
            // Subscribing starts the subscription's delivery thread: create
            // it off the beat core.
            let status = ThreadPlacement.runUnpinned {
                natsConnection_Subscribe(
                    &raw, connection, subject,
                    { _, _, msg, closure in
                        ThreadPlacement.placeCurrentHelperThread()
                        let me = Unmanaged<Subscription>.fromOpaque(closure!).takeUnretainedValue()
                        // Over budget: dropped before anything is copied (a flood costs little here).
                        guard me.reserve() else {
                            natsMsg_Destroy(msg)
                            return
                        }
                        let message = Message(
                            subject: String(cString: natsMsg_GetSubject(msg)),
                            reply: natsMsg_GetReply(msg).map { String(cString: $0) },
                            data: Data(bytes: natsMsg_GetData(msg), count: Int(natsMsg_GetDataLength(msg))),
                            receivedNs: cloop_realtime_ns())
                        natsMsg_Destroy(msg)
                        me.onDelivery?(message)
                        me.deliver(message)
                    }, Unmanaged.passUnretained(self).toOpaque())
            }
            if status == NATS_OK, let raw {
                natsSubscription_SetPendingLimits(raw, NatsLink.asyncPendingMessages, NatsLink.asyncPendingBytes)
                libraryDropped = 0
                // Its pending-limit drops are counted, not logged line by line.
                if counted != nil { setCounted(raw, true) }
            }
            if status != NATS_OK {
                link.logger.error(
                    "cannot subscribe",
                    metadata: ["subject": "\(subject)", "status": "\(String(cString: natsStatus_GetText(status)))"])
            }
            link.flush()
        }

        /// Delivery thread: takes a place among the messages waiting for the
        /// loop, or counts a drop when `maxInFlightPerSubscription` wait already.
        func reserve() -> Bool {
            guard inFlight.add(1, ordering: .relaxed).newValue <= NatsLink.maxInFlightPerSubscription else {
                inFlight.subtract(1, ordering: .relaxed)
                dropped.add(1, ordering: .relaxed)
                return false
            }
            return true
        }

        /// Delivery thread: hands `message` (its place reserved) to the loop.
        func deliver(_ message: Message) {
            var posted = false
            link.whileOpen {
                posted = link.loop.postCallback { [self] in
                    inFlight.subtract(1, ordering: .relaxed)
                    countDrops()
                    handler(message)
                }
            }
            if !posted {
                inFlight.subtract(1, ordering: .relaxed)
                dropped.add(1, ordering: .relaxed)
            }
        }

        /// Loop thread: counts the drops since the last message that ran:
        /// over the in-flight budget, and by the library's pending limits.
        private func countDrops() {
            guard let (rejected, surface) = counted else { return }
            let count = dropped.exchange(0, ordering: .relaxed)
            if count > 0 { rejected.record(surface, "over_budget", count: count) }
            var total: Int64 = 0
            if let raw, natsSubscription_GetDropped(raw, &total) == NATS_OK, total > libraryDropped {
                rejected.record(surface, "pending_limit", count: UInt64(total - libraryDropped))
                libraryDropped = total
            }
        }

        func close() {
            if let raw {
                setCounted(raw, false)
                natsSubscription_Unsubscribe(raw)
                natsSubscription_Destroy(raw)
                self.raw = nil
            }
        }

        /// The connection closed: hands the handle over for destruction
        /// off the loop; `open()` makes a new one on the next connection.
        func release() -> OpaquePointer? {
            defer { raw = nil }
            if let raw { setCounted(raw, false) }
            return raw
        }
    }

    /// Start-up: one publish of frame size so that the client's lazily grown
    /// state reaches its size before the first beat (found by the
    /// hot-path allocation counter: the first publish allocated 128 bytes).
    private func warmUp() {
        guard !warmedUp, isConnected else { return }
        warmedUp = true
        publish(subject: "_BACKBEAT.warmup", payload: Data(repeating: 0x20, count: 1024))
    }

    /// What became of a direct write.
    private enum DirectWrite { case written, failed, notTaken }

    /// The beat frame's `PUB` written by the loop itself, one `write(2)` as
    /// the client would make, without its connection mutex, protocol
    /// buffer and write-interest callbacks (issue 24: they were most of the
    /// pulse's send path beyond a bare program's). Only when the client has
    /// nothing buffered (so the stream's order is the calls' order) on a
    /// plain-text connection; the client writes everything else, and this
    /// frame too when the socket would block at once. A write the socket
    /// takes only in part keeps its tail (`directSent..<directEnd`), written
    /// before the client's bytes. Loop thread; allocation-free.
    private func writeDirect(subject: UnsafePointer<CChar>, bytes: UnsafeRawPointer, length: Int) -> DirectWrite {
        guard directWrites, socketFd >= 0, !writeWanted, directEnd == 0, let base = directBuffer.baseAddress else {
            return .notTaken
        }
        let subjectLength = strlen(subject)
        guard 4 + subjectLength + 1 + 20 + 2 + length + 2 <= directBuffer.count else { return .notTaken }
        // "PUB <subject> <length>\r\n<bytes>\r\n", composed in place (no closures: a
        // debug build would box their captures).
        let out = base.assumingMemoryBound(to: UInt8.self)
        out[0] = 0x50  // P
        out[1] = 0x55  // U
        out[2] = 0x42  // B
        out[3] = 0x20
        memcpy(out + 4, subject, subjectLength)
        var n = 4 + subjectLength
        out[n] = 0x20
        n += 1
        var digits = 1
        var rest = length / 10
        while rest > 0 {
            digits += 1
            rest /= 10
        }
        var value = length
        var i = digits - 1
        while i >= 0 {
            out[n + i] = UInt8(truncatingIfNeeded: 48 + value % 10)
            value /= 10
            i -= 1
        }
        n += digits
        out[n] = 0x0D
        out[n + 1] = 0x0A
        n += 2
        memcpy(out + n, bytes, length)
        n += length
        out[n] = 0x0D
        out[n + 1] = 0x0A
        n += 2
        let written = Glibc.write(socketFd, base, n)
        if written >= 0 { stats.directFrames &+= 1 }
        if written == n { return .written }
        if written >= 0 {
            stats.directPartial &+= 1
            directSent = written
            directEnd = n
            if let socketToken { loop.modify(token: socketToken, interest: readInterest | UInt32(CLOOP_WRITE)) }
            return .written
        }
        guard errno == EAGAIN || errno == EWOULDBLOCK else { return .failed }
        stats.directWouldBlock &+= 1
        return .notTaken
    }

    /// Writes the tail of a partial direct write; true when none is left.
    private func writeDirectTail() -> Bool {
        while directEnd > 0 {
            let written = Glibc.write(socketFd, directBuffer.baseAddress! + directSent, directEnd - directSent)
            if written < 0 {
                // Would block: wait for write interest. Broken: the client reads the error.
                if errno != EAGAIN && errno != EWOULDBLOCK {
                    directSent = 0
                    directEnd = 0
                }
                return directEnd == 0
            }
            directSent += written
            if directSent == directEnd {
                directSent = 0
                directEnd = 0
            }
        }
        return true
    }

    /// Writes what the client has buffered, if it asked to. Registers write
    /// interest only when the socket would block.
    func flush() {
        if directEnd > 0, socketFd >= 0, !writeDirectTail() { return }
        guard writeWanted, let attachedConnection else { return }
        natsConnection_ProcessWriteEvent(attachedConnection)
        if writeWanted, let socketToken {
            loop.modify(token: socketToken, interest: readInterest | UInt32(CLOOP_WRITE))
        }
    }

    /// Once per loop turn: flush, read what waited (`deferReads`), ping a
    /// silent server, and drop a connection whose server stayed silent (no
    /// PONG to three pings): the client then reads EOF and closes it on this
    /// thread, and a new connection is made off the loop.
    func beforeSleep() {
        if role == .requests, loop.beatIsDue() { return }  // as in loopEvent
        flush()
        if readsDeferred { readDeferred() }
        pingIfSilent(nowMonoNs: cloop_monotonic_ns())
        if connection != nil, cloop_monotonic_ns() &- lastInboundMonoNs > staleAfterNs {
            logger.warning(
                "NATS server silent; dropping the connection",
                metadata: ["silent_ms": "\(staleAfterNs / 1_000_000)"])
            stats.staleAborts &+= 1
            dropSocket()
        }
    }

    // MARK: reads at the loop's turns, pings on silence (issue 24)

    /// The beat link of a publishing node in timer-only mode reads its
    /// socket at the end of the loop's turns instead of waking the loop for
    /// each arrival: its own frame's echo (and the server's PONGs and PINGs)
    /// wait in the socket until the end of the next turn — the next beat's,
    /// at the latest the loop's 250 ms bounded wait — where a wake from idle
    /// costs about half a beat's CPU on a VM (docs/benchmark.md, "The echo:
    /// what it must cost"). The node turns it off whenever an echo must be
    /// heard at once (a hand-over or an admin transfer waiting for its last
    /// frame, a live `/events` stream) and reads what waited before a
    /// decision that depends on it (`readDeferred`, from `BeatPorts.catchUp`
    /// when a lease lapsed). A hang-up (EPOLLRDHUP) and errors still wake the
    /// loop. The requests link never defers: a consumer's request is
    /// answered when it arrives.
    ///
    /// Plain text only: over TLS the client reads one record per read event,
    /// and records left in its TLS buffer would wake nothing (review of
    /// 2026-12-07 F2). Turned off, what waited is read first, as late.
    func deferReads(_ on: Bool) {
        let want = on && role == .beat && plainText
        guard want != readsDeferred else { return }
        if !want { readDeferred() }
        setReadsDeferred(want)
    }

    private func setReadsDeferred(_ on: Bool) {
        readsDeferred = on
        guard let socketToken else { return }
        let write = loop.interest(token: socketToken) & UInt32(CLOOP_WRITE)
        loop.modify(token: socketToken, interest: readInterest | write)
    }

    /// The read half of the socket's interest: while reads are deferred,
    /// only the peer's hang-up (EPOLLRDHUP), so a closed connection is read
    /// at once.
    private var readInterest: UInt32 { readsDeferred ? UInt32(CLOOP_HANGUP) : UInt32(CLOOP_READ) }

    /// Reads what arrived while reads were deferred: one `FIONREAD` (an
    /// empty socket costs only that), then one read by the client. More
    /// than `deferredReadLimit` bytes waiting, or a read whose frames
    /// overran the subject's per-wake budget (a flood on the beat subject:
    /// the echo and a PONG are a few hundred bytes), sends the link back to
    /// reads on arrival until the node asks again, so that neither the
    /// server sees a slow consumer nor the echo drowns in the budget.
    func readDeferred() {
        guard readsDeferred, socketFd >= 0, attachedConnection != nil else { return }
        var waiting: Int32 = 0
        guard ioctl(socketFd, UInt(FIONREAD), &waiting) == 0 else {
            readNow(late: true)  // the client meets the socket's error
            return
        }
        guard waiting > 0 else { return }
        let overBudget = loopSubscriptionsOverBudget
        readNow(late: true)
        if waiting > Self.deferredReadLimit || loopSubscriptionsOverBudget != overBudget {
            setReadsDeferred(false)
        }
    }

    /// Bytes waiting at a turn beyond which the link reads on arrival again.
    static let deferredReadLimit: Int32 = 4 * 1024

    private var loopSubscriptionsOverBudget: UInt64 {
        var total: UInt64 = 0
        for subscription in loopSubscriptions { total &+= subscription.overBudget }
        return total
    }

    /// One read of the socket by the client, then what it brought for the
    /// loop-read subscriptions (the beat subject's echo), judged now.
    /// `late`: what it reads may have waited a turn (`readingDeferred`).
    private func readNow(late: Bool = false) {
        guard let nc = attachedConnection else { return }
        lastInboundMonoNs = cloop_monotonic_ns()
        readingDeferred = late
        natsConnection_ProcessReadEvent(nc)
        for subscription in loopSubscriptions { subscription.drain() }
        readingDeferred = false
    }

    private static let pingBytes: StaticString = "PING\r\n"

    /// On a plain-text link the loop writes its own `PING` when nothing has
    /// arrived for `pingIntervalMs`, at whatever turn notices it: a link that
    /// carries traffic (a leader's echo, a follower's frames) never pings,
    /// and no timer thread wakes the loop to write one (the client's own
    /// ping timer is an hourly backstop). The server's `PONG` counts as
    /// inbound; the client takes it as an answer to its own pings (it resets
    /// its count of pings out; the pulse never waits on a flush, the only
    /// other user of PONGs). Written only between whole protocol operations
    /// (nothing buffered in the client, no direct tail), like a direct write.
    private func pingIfSilent(nowMonoNs now: Int64) {
        guard ownPings, connection != nil, socketFd >= 0, !writeWanted, directEnd == 0,
            let base = directBuffer.baseAddress
        else { return }
        let intervalNs = Int64(pingIntervalMs) * 1_000_000
        guard now &- lastInboundMonoNs >= intervalNs, now &- lastOwnPingMonoNs >= intervalNs else { return }
        lastOwnPingMonoNs = now
        let count = Self.pingBytes.utf8CodeUnitCount
        memcpy(base, Self.pingBytes.utf8Start, count)
        let written = Glibc.write(socketFd, base, count)
        if written >= 0 && written < count {
            directSent = written
            directEnd = count
            if let socketToken { loop.modify(token: socketToken, interest: readInterest | UInt32(CLOOP_WRITE)) }
        }
        stats.ownPings &+= 1
        // The PING's TX stamp (beat link) is read now, not by a wake of its own.
        if txBase >= 0 {
            let awaited = pendingTxKey != nil
            let (_, ns) = drainTxTimestamps()
            if awaited, ns != 0 { txSink?.txTimestampArrived(ns: ns) }
        }
    }

    /// Drops the current socket at once, discarding whatever the kernel has
    /// not sent yet (SO_LINGER 0: the close becomes a reset), so that frames
    /// stuck behind a dead link are never delivered late. Publishing stops
    /// now; the client reads EOF on the next turn and closes the connection
    /// on the loop thread. Loop thread.
    func abortConnection() {
        guard socketFd >= 0 else { return }
        stats.aborts &+= 1
        dropSocket()
    }

    private func dropSocket() {
        guard socketFd >= 0 else { return }
        // socketFd is our own dup: its number cannot have been reused.
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(socketFd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        shutdown(socketFd, Int32(SHUT_RDWR))
        markDown()
    }

    /// Publishing stops (loop thread).
    private func markDown() {
        connection = nil
        connectedSinceMonoNs = .max
    }

    /// Closes the connection (loop thread, after the loop stopped or from
    /// it). May wait for the connect thread's current attempt (bounded by
    /// the connect timeout per server): shutdown only.
    func close() {
        closed = true
        if let thread = connectThread {
            pthread_join(thread, nil)
            connectThread = nil
        }
        for subscription in subscriptions { subscription.close() }
        for handle in releaseLoopSubscriptions() {
            natsSubscription_Unsubscribe(handle)
            natsSubscription_Destroy(handle)
        }
        markDown()
        if let nc = currentConnection {
            natsConnection_Close(nc)
            // Let the adapter process the detach the close posted, if any.
            loop.turn(timeoutNs: 0)
            natsConnection_Destroy(nc)
            currentConnection = nil
            attachedConnection = nil
        }
        detachNow()
        callbackLock.lock()
        acceptingCallbacks = false
        callbackLock.unlock()
    }

    // MARK: TX timestamps

    /// Beat path, right after a publish: the kernel's software TX timestamp
    /// of the frame's last byte (CLOCK_REALTIME ns), or 0 when there is none
    /// yet. Never blocks, allocation-free (two syscalls: TCP_INFO for the id,
    /// a non-blocking error-queue read). When the id is known but its stamp
    /// has not arrived, it is awaited: `txSink` hears it from the loop's event
    /// path. Bytes still buffered in the client (the write was partial) have
    /// no stamp yet to predict: 0, and the caller uses the write's return.
    func takeTxTimestamp() -> Int64 {
        pendingTxKey = nil
        guard txBase >= 0, socketFd >= 0, !writeWanted else { return 0 }
        let key = cloop_txts_next_key(socketFd, txBase)
        guard key >= 0 else { return 0 }
        pendingTxKey = UInt32(truncatingIfNeeded: key)
        return drainTxTimestamps().awaitedNs
    }

    /// Forgets an awaited stamp (the beat was recorded with its write time).
    func cancelTxTimestamp() { pendingTxKey = nil }

    /// True while a stamp is awaited for the last beat.
    var awaitingTxTimestamp: Bool { pendingTxKey != nil }

    /// Reads the error queue empty (bounded): stamps of other writes (PING,
    /// PONG, subscriptions) are dropped; the awaited one is returned (and
    /// no longer awaited), else 0; `read` counts the stamps read.
    private func drainTxTimestamps() -> (read: Int, awaitedNs: Int64) {
        var found: Int64 = 0
        var read = 0
        var key: UInt32 = 0
        var ns: Int64 = 0
        for _ in 0..<64 {
            guard cloop_txts_read(socketFd, &key, &ns) == 1 else { break }
            read += 1
            if let pending = pendingTxKey, pending == key {
                pendingTxKey = nil
                found = ns
                break  // the last write's stamp: none can follow it yet
            }
        }
        return (read, found)
    }

    // MARK: loop callbacks

    func loopEvent(token: UInt32, events: UInt32) {
        guard let nc = attachedConnection else { return }
        // The requests connection's reads and writes wait out the doorway's
        // guard before a beat, as the doorway does (the socket is
        // level-triggered: the loop sees it again after the beat).
        if role == .requests, loop.beatIsDue() { return }
        // EPOLLERR also means "TX timestamps queued": drain them here (the
        // loop would otherwise wake for them every turn). A real socket error
        // keeps EPOLLERR up with an empty queue and reaches the client below.
        if events & UInt32(CLOOP_ERROR) != 0, txBase >= 0, socketFd >= 0 {
            let awaited = pendingTxKey != nil
            let (read, ns) = drainTxTimestamps()
            if awaited, ns != 0 { txSink?.txTimestampArrived(ns: ns) }
            if read > 0, events & UInt32(CLOOP_READ | CLOOP_HANGUP) == 0 { return }
        }
        if events & UInt32(CLOOP_READ | CLOOP_HANGUP | CLOOP_ERROR) != 0 {
            // What this read brought for the loop-read subscriptions (the
            // beat subject's echo): judged now, in this wake (a hang-up
            // while reads were deferred: what waited is late).
            readNow(late: readsDeferred)
        }
        if events & UInt32(CLOOP_WRITE) != 0, attachedConnection != nil {
            if directEnd > 0 {
                guard writeDirectTail() else { return }
                if !writeWanted, let socketToken { loop.modify(token: socketToken, interest: readInterest) }
            }
            natsConnection_ProcessWriteEvent(nc)
        }
    }

    func doorwayMessage(_ message: cloop_msg_t) {
        let nc = message.ptr.map { OpaquePointer($0) }
        switch DoorwayKind(rawValue: message.kind) {
        case .natsPending:
            if currentConnection == nil, let nc, !closed { currentConnection = nc }
        case .natsConnected: connected(nc)
        case .natsDisconnected: if let nc, nc == connection { markDown() }
        case .natsClosed: if let nc { closedByClient(nc) }
        case .natsAttach: attachNow(fd: message.arg, connection: nc)
        case .natsRead: setReadInterest(message.arg != 0)
        case .natsWrite: setWriteInterest(message.arg != 0)
        case .natsDetach: detachNow()
        default: break
        }
    }

    /// The client reports `nc` connected (connect thread or callback thread).
    /// Publishing resumes on the first beat after this, if its socket is
    /// attached (the attach always comes first: the client attaches during
    /// the handshake, and both messages travel through one FIFO doorway).
    private func connected(_ nc: OpaquePointer?) {
        guard let nc, !closed else { return }
        if currentConnection == nil { currentConnection = nc }
        guard nc == currentConnection, nc == attachedConnection else {
            logger.error("NATS connected without an attached socket; waiting for the next connection")
            return
        }
        connection = nc
        connectedSinceMonoNs = cloop_monotonic_ns()
        lastInboundMonoNs = connectedSinceMonoNs
        for subscription in subscriptions { subscription.open() }
        for subscription in loopSubscriptions { openLoopSubscription(subscription) }
        warmUp()
    }

    /// The client closed `nc` for good (it does not reconnect on its own):
    /// hand it to a new connect thread, which destroys it and connects anew.
    private func closedByClient(_ nc: OpaquePointer) {
        guard nc == currentConnection, !closed else { return }
        markDown()
        detachNow()
        currentConnection = nil
        attachedConnection = nil
        let handoff = Handoff(
            connection: nc, subscriptions: subscriptions.compactMap { $0.release() } + releaseLoopSubscriptions(),
            thread: connectThread)
        connectThread = nil
        do {
            try startConnectThread(previous: handoff)
        } catch {
            logger.error("NATS: cannot reconnect", metadata: ["error": "\(error)"])
        }
    }

    // MARK: adapter, always on the loop thread

    /// `TCP_USER_TIMEOUT` from <netinet/tcp.h> (Linux ≥ 2.6.37).
    static let tcpUserTimeout: Int32 = 18

    fileprivate func attachNow(fd: Int32, connection nc: OpaquePointer?) {
        detachNow()
        guard let nc, !closed else { return }
        if currentConnection == nil { currentConnection = nc }
        guard nc == currentConnection else {
            logger.error("NATS attach for a retired connection ignored")
            return
        }
        // Watch our own dup: the library may close its fd number on its own
        // thread (3.4.1) and the number be reused; ours stays ours.
        let own = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        guard own >= 0 else {
            logger.error("cannot dup the NATS socket", metadata: ["errno": "\(errno)"])
            return
        }
        do {
            socketToken = try loop.register(fd: own, interest: readInterest, owned: true, handler: self)
            socketFd = own
            librarySocket = fd
            var base: Int64 = 0
            // Only the beat's socket is stamped: a stamp per reply would wake
            // the loop for nothing.
            txBase = role == .beat && cloop_txts_enable(own, &base) == 0 ? base : -1
            pendingTxKey = nil
            // Fault 2: unacknowledged frames never outlive `userTimeoutMs`
            // (a socket option: the link stays non-blocking and unchanged).
            var timeoutMs = UInt32(Self.userTimeoutMs)
            if setsockopt(
                own, Int32(IPPROTO_TCP), Self.tcpUserTimeout, &timeoutMs, socklen_t(MemoryLayout<UInt32>.size))
                != 0
            {
                logger.warning("cannot set TCP_USER_TIMEOUT on the NATS socket", metadata: ["errno": "\(errno)"])
            }
            attachedConnection = nc
            readWanted = true
            stats.attaches &+= 1
            lastInboundMonoNs = cloop_monotonic_ns()
            // The server's INFO/PONG may already be waiting; writes queued
            // during the handshake go out now.
            flush()
        } catch {
            Glibc.close(own)
            logger.error("cannot watch the NATS socket", metadata: ["error": "\(error)"])
        }
    }

    fileprivate func setReadInterest(_ add: Bool) {
        readWanted = add
        // The library removes read interest only when it stops polling the
        // socket for good (`_evStopPolling`): the socket is going away.
        if !add { detachNow() }
    }

    fileprivate func setWriteInterest(_ add: Bool) {
        writeWanted = add
        guard !add, directEnd == 0, let socketToken, loop.interest(token: socketToken) & UInt32(CLOOP_WRITE) != 0
        else { return }
        loop.modify(token: socketToken, interest: readInterest)
    }

    /// Forgets the socket: unregisters (closing our dup) and, with a library
    /// that leaves closing to the adapter (3.10+), closes the library's fd
    /// now that the loop no longer polls it.
    fileprivate func detachNow() {
        if let token = socketToken {
            loop.remove(token: token)
            socketToken = nil
            socketFd = -1
        }
        txBase = -1
        pendingTxKey = nil
        directSent = 0
        directEnd = 0
        if librarySocket >= 0 {
            if let processClose = natsProcessCloseEvent { processClose(&librarySocket) }
            librarySocket = -1
        }
        attachedConnection = nil
        markDown()
        writeWanted = false
    }

    private func check(_ status: natsStatus, _ what: @autoclosure () -> String) throws {
        guard status == NATS_OK else {
            throw PulseError.startup("\(what()): \(String(cString: natsStatus_GetText(status)))")
        }
    }

    /// Library threads may call back after `close()` (a queued closed
    /// callback, a delivery in flight) when the loop may be gone: they post
    /// only while this is true, under `callbackLock` (held just for a post).
    private var acceptingCallbacks = true
    private let callbackLock = NSLock()

    /// Runs `body` (a post to the loop) unless the link is closed.
    fileprivate func whileOpen(_ body: () -> Void) {
        callbackLock.lock()
        defer { callbackLock.unlock() }
        if acceptingCallbacks { body() }
    }

    // Called from any thread by the C adapter shims below.
    fileprivate func adapter(_ kind: DoorwayKind, arg: Int32, connection nc: OpaquePointer? = nil) {
        callbackLock.lock()
        let open = acceptingCallbacks
        // Read under the lock: after close() the loop may be gone. On the
        // loop thread itself close() cannot be running concurrently.
        let onLoopThread = open && loop.onLoopThread
        callbackLock.unlock()
        guard open else { return }
        if onLoopThread {
            switch kind {
            case .natsAttach: attachNow(fd: arg, connection: nc)
            case .natsRead: setReadInterest(arg != 0)
            case .natsWrite:
                // Usually inside a publish on the loop thread: remember it,
                // the publisher (or beforeSleep) flushes right after.
                setWriteInterest(arg != 0)
            case .natsDetach: detachNow()
            default: break
            }
            return
        }
        ThreadPlacement.placeCurrentHelperThread()
        whileOpen {
            if !loop.post(kind: kind, arg: arg, value: doorwayIndex, pointer: nc.map { UnsafeMutableRawPointer($0) }) {
                logger.error("doorway full: NATS event lost", metadata: ["kind": "\(kind)"])
            }
        }
    }

    /// The client's connection callbacks (its callback thread).
    fileprivate func connectionEvent(_ kind: DoorwayKind, _ nc: OpaquePointer?) {
        ThreadPlacement.placeCurrentHelperThread()
        // Lock order: never call into the client (its mutex) while holding
        // `callbackLock`. The connect thread holds the client's mutex inside
        // `natsConnection_Flush` and waits for `callbackLock` in the write
        // adapter; logging here under the lock deadlocked both (and the loop).
        // `nc` stays valid for the duration of the client's callback.
        callbackLock.lock()
        let open = acceptingCallbacks
        callbackLock.unlock()
        if open, kind == .natsConnected, let nc { logConnected(nc) }
        whileOpen {
            if !loop.post(kind: kind, value: doorwayIndex, pointer: nc.map { UnsafeMutableRawPointer($0) }) {
                logger.error("doorway full: NATS event lost", metadata: ["kind": "\(kind)"])
            }
        }
    }
}

/// Hears the TX timestamp of a beat frame that arrived after its beat (loop thread).
protocol TxTimestampSink: AnyObject {
    func txTimestampArrived(ns: Int64)
}

/// A counter shared by the connect and callback threads.
private final class AtomicCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var value: UInt64 = 0
    func increment() -> UInt64 {
        lock.lock()
        defer { lock.unlock() }
        value &+= 1
        return value
    }
}

/// `natsConnection_ProcessCloseEvent` (libnats 3.10+), if the loaded library
/// has it: with it, the library leaves closing its socket to the adapter
/// once the loop no longer polls it. Absent in 3.4.1, which closes the
/// socket itself (the loop watches its own dup, so either is safe).
private let natsProcessCloseEvent: (@convention(c) (UnsafeMutablePointer<Int32>) -> Void)? = {
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "natsConnection_ProcessCloseEvent") else {
        return nil
    }
    return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<Int32>) -> Void).self)
}()

// The adapter's C entry points. `loop` (the evLoop given to the library) is
// the NatsLink itself, and so is the userData they pass back.
private func link(_ pointer: UnsafeMutableRawPointer?) -> NatsLink {
    Unmanaged<NatsLink>.fromOpaque(pointer!).takeUnretainedValue()
}

private let natsConnectedCallback: natsConnectionHandler = { nc, closure in
    link(closure).connectionEvent(.natsConnected, nc)
}

private let natsErrorCallback: natsErrHandler = { nc, sub, status, closure in
    link(closure).asyncError(nc, sub, status)
}

private let natsReconnectedCallback: natsConnectionHandler = { nc, closure in
    // Not expected (the library does not reconnect); treated as connected.
    link(closure).connectionEvent(.natsConnected, nc)
}

private let natsDisconnectedCallback: natsConnectionHandler = { nc, closure in
    link(closure).connectionEvent(.natsDisconnected, nc)
}

private let natsClosedCallback: natsConnectionHandler = { nc, closure in
    link(closure).connectionEvent(.natsClosed, nc)
}

private let natsAdapterAttach: natsEvLoop_Attach = { userData, loop, nc, socket in
    userData?.pointee = loop
    link(loop).adapter(.natsAttach, arg: Int32(socket), connection: nc)
    return NATS_OK
}

private let natsAdapterRead: natsEvLoop_ReadAddRemove = { userData, add in
    link(userData).adapter(.natsRead, arg: add ? 1 : 0)
    return NATS_OK
}

private let natsAdapterWrite: natsEvLoop_WriteAddRemove = { userData, add in
    link(userData).adapter(.natsWrite, arg: add ? 1 : 0)
    return NATS_OK
}

private let natsAdapterDetach: natsEvLoop_Detach = { userData in
    link(userData).adapter(.natsDetach, arg: 0)
    return NATS_OK
}
