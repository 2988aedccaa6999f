// Admin: the admin HTTP/1.1 server on the pulse's own event loop. Owns the
// listening socket, the table of connections, the one monotonic timer that
// enforces idle and linger deadlines (a sweep per `sweepIntervalNs`, not a
// timer per connection) and a one-shot "kick" timer that brings back connections whose
// per-turn budget ran out. None of its registrations is priority, so a due
// beat is always served before any HTTP work in a loop turn.
//
// Wiring (loop thread):
//     let admin = AdminServer(loop: loop, backend: node, port: config.adminPort, authToken: token, logger: logger)
//     try admin.start()          // binds host:port (host: -admin-bind, 127.0.0.1 by default); `admin.boundPort` is the real port
//     ...
//     admin.stop()               // before the loop is destroyed
import CLoop
import Glibc
import Logging

/// Counters of the admin server (loop thread), for metrics and tests.
struct AdminServerStats {
    var accepted: UInt64 = 0
    /// Accepted over `maxConnections` (or a full loop table) and answered 503.
    var rejectedOverLimit: UInt64 = 0
    var responses: UInt64 = 0
    /// 400, 408, 413 and 431 answers.
    var protocolErrors: UInt64 = 0
    /// Connections closed (or answered 408) at their idle deadline.
    var timeouts: UInt64 = 0
    /// Times a connection's work was cut at the per-turn budget and resumed later.
    var deferrals: UInt64 = 0
}

final class AdminServer: LoopHandler {
    let host: String
    let requestedPort: Int
    /// The port actually bound (the ephemeral one when `requestedPort` is 0); 0 before `start()`.
    private(set) var boundPort = 0
    let limits: AdminLimits
    let router: AdminRouter
    /// The live view's event streams (`GET /events`), when a `LiveSource` was given.
    let events: AdminEvents?
    unowned let loop: EventLoop
    private let logger: Logger
    private(set) var stats = AdminServerStats()
    /// Refused requests and connections, counted on the `http` surface (§10).
    private let rejected: RejectedInput?

    private var listenToken: UInt32?
    private var sweepToken: UInt32?
    private var kickToken: UInt32?
    private var kicked = false
    private var listenerPaused = false
    private var connections: [UInt32: AdminConnection] = [:]
    private var deferred: [AdminConnection] = []

    /// `authToken`: when set (non-empty), POST requests need `Authorization: Bearer <token>`.
    init(
        loop: EventLoop, backend: AdminBackend, host: String = "127.0.0.1", port: Int,
        authToken: String? = nil,
        limits: AdminLimits = AdminLimits(), logger: Logger = Logger(label: "pulse.admin"),
        rejected: RejectedInput? = nil, live: LiveSource? = nil
    ) {
        limits.validate()
        self.loop = loop
        self.host = host
        self.requestedPort = port
        self.limits = limits
        self.logger = logger
        self.rejected = rejected
        self.router = AdminRouter(
            backend: backend, authToken: authToken, limits: limits, rejected: rejected,
            hosts: AdminHostNames(configured: backend.adminHostNames()))
        self.events = live.map {
            AdminEvents(
                source: $0, limits: limits, authRequired: !(authToken ?? "").isEmpty, rejected: rejected)
        }
    }

    /// Open connections (including ones finishing a closing response).
    var openConnections: Int { connections.count }

    /// Binds, listens and registers with the loop. Call on the loop thread (or before it runs).
    func start() throws {
        precondition(listenToken == nil, "AdminServer started twice")
        let fd = socket(
            AF_INET,
            Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else {
            throw PulseError.startup("admin socket: \(String(cString: strerror(errno)))")
        }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(truncatingIfNeeded: requestedPort).bigEndian
        guard inet_pton(AF_INET, host, &addr.sin_addr) == 1 else {
            Glibc.close(fd)
            throw PulseError.startup("admin address '\(host)' is not an IPv4 address")
        }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) }
        }
        guard bound == 0, listen(fd, 511) == 0 else {
            let reason = String(cString: strerror(errno))
            Glibc.close(fd)
            throw PulseError.startup(
                "cannot listen on \(host):\(requestedPort) for the admin API: \(reason)")
        }
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        boundPort = Int(UInt16(bigEndian: addr.sin_port))
        do {
            listenToken = try loop.register(
                fd: fd, interest: UInt32(CLOOP_READ), owned: true, handler: self)
        } catch {
            Glibc.close(fd)
            throw error
        }
        let sweep = try loop.makeTimer(clock: CLOCK_MONOTONIC, priority: false, handler: self)
        sweepToken = sweep
        // At the end of another turn (a beat's) when one comes within a fifth of it.
        try loop.armCoalescing(sweep, intervalNs: limits.sweepIntervalNs, earlyNs: limits.sweepIntervalNs / 5)
        kickToken = try loop.makeTimer(clock: CLOCK_MONOTONIC, priority: false, handler: self)
        // The event fan-out runs before the loop sleeps, after the turn's beat.
        if let events { loop.addBeforeSleep(events) }
        logger.info("admin API listening", metadata: ["address": "\(host):\(boundPort)"])
    }

    /// Closes every connection and the listener. Replies arriving later are ignored.
    func stop() {
        for connection in Array(connections.values) { connection.close() }
        deferred.removeAll()
        for token in [listenToken, sweepToken, kickToken].compactMap({ $0 }) {
            loop.remove(token: token)
        }
        listenToken = nil
        sweepToken = nil
        kickToken = nil
    }

    // MARK: - Loop events

    func loopEvent(token: UInt32, events: UInt32) {
        if token == listenToken {
            acceptConnections()
        } else if token == sweepToken {
            loop.readTimer(token)
            sweep()
        } else if token == kickToken {
            runDeferred()
        }
    }

    private func acceptConnections() {
        guard let listenToken else { return }
        let listenFd = loop.fd(listenToken)
        for _ in 0..<limits.maxAcceptsPerEvent {
            let fd = accept(listenFd, nil, nil)
            if fd < 0 {
                switch errno {
                case EINTR, ECONNABORTED, EPROTO:
                    continue
                case EAGAIN, EWOULDBLOCK:
                    return
                default:
                    // Out of descriptors or memory: stop listening until the next sweep
                    // instead of spinning on a listener that stays readable.
                    logger.warning(
                        "admin accept failed; pausing the listener",
                        metadata: ["error": "\(String(cString: strerror(errno)))"])
                    listenerPaused = true
                    loop.modify(token: listenToken, interest: 0)
                    return
                }
            }
            stats.accepted &+= 1
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            guard connections.count < limits.maxConnections else {
                reject(fd)
                continue
            }
            var yes: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &yes, socklen_t(MemoryLayout<Int32>.size))
            let connection = AdminConnection(
                fd: fd, server: self, limits: limits, nowNs: cloop_monotonic_ns())
            let interest = UInt32(CLOOP_READ)
            guard
                let token = try? loop.register(fd: fd, interest: interest, owned: true, handler: connection)
            else {
                reject(fd)
                continue
            }
            connection.attach(token: token, interest: interest)
            connections[token] = connection
        }
    }

    private static let overloadedResponse: [UInt8] = {
        var bytes: [UInt8] = []
        AdminHTTP.serialize(
            .error(
                503, code: "too_many_connections", message: "the admin API has too many open connections"),
            keepAlive: false, http10: false, headOnly: false, into: &bytes)
        return bytes
    }()

    /// Answers 503 without reading and closes (best effort: one non-blocking write).
    private func reject(_ fd: Int32) {
        stats.rejectedOverLimit &+= 1
        rejected?.record(.http, "too_many_connections")
        _ = Self.overloadedResponse.withUnsafeBytes {
            send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
        }
        shutdown(fd, Int32(SHUT_WR))
        Glibc.close(fd)
    }

    private func sweep() {
        let now = cloop_monotonic_ns()
        for connection in Array(connections.values) { connection.sweep(nowNs: now) }
        if listenerPaused, let listenToken {
            listenerPaused = false
            loop.modify(token: listenToken, interest: UInt32(CLOOP_READ))
        }
    }

    // MARK: - Deferred work

    /// Asks for `connection.resumeDeferred()` in a later loop turn.
    func deferWork(_ connection: AdminConnection) {
        guard !connection.isDeferred else { return }
        connection.isDeferred = true
        deferred.append(connection)
        stats.deferrals &+= 1
        kick()
    }

    /// Arms the one-shot kick timer to expire at once: the loop calls back next turn.
    private func kick() {
        guard !kicked, let kickToken else { return }
        kicked = true
        do {
            try loop.armTimer(kickToken, afterNs: 1)
        } catch {
            // Our own timer refused (a broken invariant upstream): the
            // deferred replies still go out, on the loop's next turn.
            logger.error("admin kick timer: \(error); deferred replies run from the doorway instead")
            loop.postCompletion { [weak self] in self?.runDeferred() }  // never dropped, unlike postCallback
        }
    }

    private func runDeferred() {
        if let kickToken { loop.readTimer(kickToken) }
        kicked = false
        let batch = deferred
        deferred.removeAll(keepingCapacity: true)
        for connection in batch {
            connection.isDeferred = false
            connection.resumeDeferred()
        }
    }

    // MARK: - From connections

    func connectionDidClose(_ connection: AdminConnection) {
        loop.remove(token: connection.token)
        connections[connection.token] = nil
        events?.streamClosed(connection)
    }

    func noteResponse() { stats.responses &+= 1 }
    func noteTimeout() { stats.timeouts &+= 1 }

    func noteProtocolError(status: Int, method: UInt32, path: String?) {
        stats.protocolErrors &+= 1
        rejected?.record(.http, Self.refusalReason(status: status))
        router.noteProtocolError(status: status, method: method, path: path)
    }

    /// The `reason` label of a refused request, by its status (a closed set).
    static func refusalReason(status: Int) -> String {
        switch status {
        case 400: return "bad_request"
        case 408: return "request_timeout"
        case 413: return "body_too_large"
        case 431: return "headers_too_large"
        default: return "status_\(status)"
        }
    }
}
