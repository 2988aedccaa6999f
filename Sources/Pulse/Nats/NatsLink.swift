// Nats: the NATS connection driven by the pulse's own event loop.
//
// The C client runs in event-loop mode (`natsOptions_SetEventLoop`): it has no
// reader thread and no flusher; its socket is one more fd in CLoop. The
// library still calls the adapter from its own threads (the reconnect thread
// attaches a new socket, the ping timer asks for write interest), so every
// callback that is not on the loop thread goes through the loop's doorway.
//
// Writes: with `SendAsap`, a publish appends to the client's buffer and asks
// for write interest; on the loop thread we do not touch epoll for that but
// flush at once after the publish (`flush()`), and only register EPOLLOUT when
// the socket would block. So a beat costs one `write(2)`.
//
// Connecting (DNS, TCP connect, handshake) is blocking in the C client, so it
// happens on a short-lived thread; the loop learns of the connection through
// the doorway. While NATS is down the pulse keeps beating and does not buffer
// frames: a beat delivered late is a wrong beat.
import CLoop
import CNats
import Foundation
import Glibc
import Logging

/// Counters and state of the link, read by metrics and health.
struct NatsLinkStats {
    var attaches: UInt64 = 0
    var reconnects: UInt64 { attaches > 0 ? attaches - 1 : 0 }
    var publishErrors: UInt64 = 0
    var skippedWhileDown: UInt64 = 0
    /// Connections dropped because published frames did not come back.
    var aborts: UInt64 = 0
}

/// A NATS connection whose socket is served by an `EventLoop`.
final class NatsLink: LoopHandler, DoorwayHandler, BeforeSleepHandler {
    let url: String
    let name: String
    fileprivate unowned let loop: EventLoop
    fileprivate let logger: Logger
    private(set) var connection: OpaquePointer?
    private var options: OpaquePointer?
    private var socketToken: UInt32?
    private var socketFd: Int32 = -1
    private var readWanted = false
    /// The library asked for write interest and has bytes buffered.
    private var writeWanted = false
    private(set) var stats = NatsLinkStats()
    private var connectThread: pthread_t?
    private var closed = false
    private var subscriptions: [Subscription] = []
    private var warmedUp = false
    /// When the current socket was attached to our loop (monotonic ns);
    /// `Int64.max` while none is (the client may already say CONNECTED
    /// before its reconnect thread's attach reaches the loop).
    private(set) var connectedSinceMonoNs: Int64 = .max
    private var inbox: String?
    private var requestCounter: UInt64 = 0
    private var pendingRequests: [UInt64: (deadlineNs: Int64, reply: (Data?) -> Void)] = [:]

    init(url: String, name: String, loop: EventLoop, logger: Logger) {
        self.url = url
        self.name = name
        self.loop = loop
        self.logger = logger
        loop.setDoorwayHandler(self, for: [.natsAttach, .natsRead, .natsWrite, .natsDetach, .natsConnected])
        loop.addBeforeSleep(self)
    }

    deinit {
        if let options { natsOptions_Destroy(options) }
    }

    /// True while the client reports a live connection.
    var isConnected: Bool {
        guard let connection else { return false }
        return natsConnection_Status(connection) == NATS_CONN_STATUS_CONNECTED
    }

    /// Starts connecting in the background; returns at once. Throws only for
    /// invalid options (for example a malformed URL).
    func start() throws {
        var opts: OpaquePointer?
        try check(natsOptions_Create(&opts), "natsOptions_Create")
        options = opts
        try check(natsOptions_SetURL(opts, url), "invalid -nats URL '\(url)'")
        try check(natsOptions_SetName(opts, name), "natsOptions_SetName")
        try check(natsOptions_SetSendAsap(opts, true), "natsOptions_SetSendAsap")
        try check(natsOptions_SetMaxReconnect(opts, -1), "natsOptions_SetMaxReconnect")
        try check(natsOptions_SetReconnectWait(opts, 250), "natsOptions_SetReconnectWait")
        try check(natsOptions_SetReconnectJitter(opts, 100, 1000), "natsOptions_SetReconnectJitter")
        try check(natsOptions_SetTimeout(opts, 2000), "natsOptions_SetTimeout")
        // A dead link is noticed within about a second (2 pings of 500 ms).
        try check(natsOptions_SetPingInterval(opts, 500), "natsOptions_SetPingInterval")
        try check(natsOptions_SetMaxPingsOut(opts, 2), "natsOptions_SetMaxPingsOut")
        try check(natsOptions_SetRetryOnFailedConnect(opts, true, natsConnectedNoop, nil), "retry option")
        let me = Unmanaged.passUnretained(self).toOpaque()
        try check(
            natsOptions_SetEventLoop(opts, me, natsAdapterAttach, natsAdapterRead, natsAdapterWrite, natsAdapterDetach),
            "natsOptions_SetEventLoop")

        // Connect off the loop thread: it resolves names and blocks on TCP.
        let box = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(
            &thread, nil,
            { arg in
                let link = Unmanaged<NatsLink>.fromOpaque(arg!).takeRetainedValue()
                link.connectBlocking()
                return nil
            }, box)
        guard rc == 0 else {
            Unmanaged<NatsLink>.fromOpaque(box).release()
            throw PulseError.startup("cannot start the NATS connect thread: \(String(cString: strerror(rc)))")
        }
        connectThread = thread
    }

    private func connectBlocking() {
        var nc: OpaquePointer?
        let status = natsConnection_Connect(&nc, options)
        if status == NATS_OK || status == NATS_NOT_YET_CONNECTED, let nc {
            if !loop.post(kind: .natsConnected, pointer: UnsafeMutableRawPointer(nc)) {
                logger.error("doorway full: NATS connection lost", metadata: ["url": "\(url)"])
            }
            if status == NATS_NOT_YET_CONNECTED {
                logger.warning("NATS not reachable yet; retrying in the background", metadata: ["url": "\(url)"])
            }
        } else {
            logger.error(
                "NATS connect failed",
                metadata: ["url": "\(url)", "status": "\(String(cString: natsStatus_GetText(status)))"])
        }
    }

    /// Publishes `length` bytes from `bytes` on `subject` and flushes at once.
    /// Returns false (and counts why) when NATS is down or the publish failed.
    /// Allocation-free once the client's buffers have reached their size.
    @inline(__always)
    func publish(subject: UnsafePointer<CChar>, bytes: UnsafeRawPointer, length: Int) -> Bool {
        guard let connection, natsConnection_Status(connection) == NATS_CONN_STATUS_CONNECTED else {
            stats.skippedWhileDown &+= 1
            return false
        }
        let status = natsConnection_Publish(connection, subject, bytes, Int32(length))
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
        guard let connection, isConnected else { return false }
        let status = payload.withUnsafeBytes { raw -> natsStatus in
            if let reply {
                return natsConnection_PublishRequest(connection, subject, reply, raw.baseAddress, Int32(raw.count))
            }
            return natsConnection_Publish(connection, subject, raw.baseAddress, Int32(raw.count))
        }
        flush()
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
        subject: String, onDelivery: ((Message) -> Void)? = nil, handler: @escaping (Message) -> Void
    ) {
        let subscription = Subscription(subject: subject, link: self, onDelivery: onDelivery, handler: handler)
        subscriptions.append(subscription)
        if connection != nil { subscription.open() }
    }

    fileprivate final class Subscription {
        let subject: String
        unowned let link: NatsLink
        let onDelivery: ((Message) -> Void)?
        let handler: (Message) -> Void
        var raw: OpaquePointer?

        init(subject: String, link: NatsLink, onDelivery: ((Message) -> Void)?, handler: @escaping (Message) -> Void) {
            self.subject = subject
            self.link = link
            self.onDelivery = onDelivery
            self.handler = handler
        }

        func open() {
            guard raw == nil, let connection = link.connection else { return }
            let status = natsConnection_Subscribe(
                &raw, connection, subject,
                { _, _, msg, closure in
                    let me = Unmanaged<Subscription>.fromOpaque(closure!).takeUnretainedValue()
                    let message = Message(
                        subject: String(cString: natsMsg_GetSubject(msg)),
                        reply: natsMsg_GetReply(msg).map { String(cString: $0) },
                        data: Data(bytes: natsMsg_GetData(msg), count: Int(natsMsg_GetDataLength(msg))),
                        receivedNs: cloop_realtime_ns())
                    natsMsg_Destroy(msg)
                    me.onDelivery?(message)
                    me.link.loop.postCallback { me.handler(message) }
                }, Unmanaged.passUnretained(self).toOpaque())
            if status != NATS_OK {
                link.logger.error(
                    "cannot subscribe",
                    metadata: ["subject": "\(subject)", "status": "\(String(cString: natsStatus_GetText(status)))"])
            }
            link.flush()
        }

        func close() {
            if let raw {
                natsSubscription_Unsubscribe(raw)
                natsSubscription_Destroy(raw)
                self.raw = nil
            }
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

    /// Writes what the client has buffered, if it asked to. Registers write
    /// interest only when the socket would block.
    func flush() {
        guard writeWanted, let connection else { return }
        natsConnection_ProcessWriteEvent(connection)
        if writeWanted, let socketToken {
            loop.modify(token: socketToken, interest: UInt32(CLOOP_READ | CLOOP_WRITE))
        }
    }

    func beforeSleep() { flush() }

    /// Drops the current socket at once, discarding whatever the kernel has
    /// not sent yet (SO_LINGER 0: the client's close becomes a reset), so that
    /// frames stuck behind a dead link are never delivered late. The client
    /// sees EOF and reconnects in the background. Loop thread.
    func abortConnection() {
        guard socketFd >= 0 else { return }
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(socketFd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        shutdown(socketFd, Int32(SHUT_RD))
        stats.aborts &+= 1
    }

    /// Closes the connection (loop thread, after the loop stopped or from it).
    func close() {
        if let thread = connectThread {
            pthread_join(thread, nil)
            connectThread = nil
        }
        closed = true
        for subscription in subscriptions { subscription.close() }
        if let connection {
            natsConnection_Close(connection)
            // Let the adapter process the detach the close posted, if any.
            loop.turn(timeoutNs: 0)
            natsConnection_Destroy(connection)
            self.connection = nil
        }
    }

    // MARK: loop callbacks

    func loopEvent(token: UInt32, events: UInt32) {
        guard let connection else { return }
        if events & UInt32(CLOOP_READ | CLOOP_HANGUP | CLOOP_ERROR) != 0 {
            natsConnection_ProcessReadEvent(connection)
        }
        if events & UInt32(CLOOP_WRITE) != 0 {
            natsConnection_ProcessWriteEvent(connection)
        }
    }

    func doorwayMessage(_ message: cloop_msg_t) {
        switch DoorwayKind(rawValue: message.kind) {
        case .natsConnected:
            connection = OpaquePointer(message.ptr)
            for subscription in subscriptions { subscription.open() }
            warmUp()
        case .natsAttach: attachNow(fd: message.arg)
        case .natsRead: setReadInterest(message.arg != 0)
        case .natsWrite: setWriteInterest(message.arg != 0)
        case .natsDetach: detachNow()
        default: break
        }
    }

    // MARK: adapter, always on the loop thread

    fileprivate func attachNow(fd: Int32) {
        detachNow()
        do {
            socketToken = try loop.register(fd: fd, interest: UInt32(CLOOP_READ), owned: false, handler: self)
            socketFd = fd
            readWanted = true
            stats.attaches &+= 1
            connectedSinceMonoNs = cloop_monotonic_ns()
            if stats.attaches > 1 {
                logger.info("NATS reconnected", metadata: ["url": "\(url)", "reconnects": "\(stats.reconnects)"])
            } else {
                logger.info("NATS connected", metadata: ["url": "\(url)"])
            }
            // The server's INFO/PONG may already be waiting; writes queued
            // during the handshake go out now.
            flush()
            warmUp()
        } catch {
            logger.error("cannot watch the NATS socket", metadata: ["error": "\(error)"])
        }
    }

    fileprivate func setReadInterest(_ add: Bool) {
        readWanted = add
        if !add { detachNow() }
    }

    fileprivate func setWriteInterest(_ add: Bool) {
        writeWanted = add
        guard !add, let socketToken, cloop_interest(loop.raw, socketToken) & UInt32(CLOOP_WRITE) != 0 else { return }
        loop.modify(token: socketToken, interest: UInt32(CLOOP_READ))
    }

    fileprivate func detachNow() {
        if let token = socketToken {
            loop.remove(token: token)
            socketToken = nil
            socketFd = -1
        }
        connectedSinceMonoNs = .max
        writeWanted = false
    }

    private func check(_ status: natsStatus, _ what: @autoclosure () -> String) throws {
        guard status == NATS_OK else {
            throw PulseError.startup("\(what()): \(String(cString: natsStatus_GetText(status)))")
        }
    }

    // Called from any thread by the C adapter shims below.
    fileprivate func adapter(_ kind: DoorwayKind, arg: Int32) {
        if loop.onLoopThread {
            switch kind {
            case .natsAttach: attachNow(fd: arg)
            case .natsRead: setReadInterest(arg != 0)
            case .natsWrite:
                // Usually inside a publish on the loop thread: remember it,
                // the publisher (or beforeSleep) flushes right after.
                setWriteInterest(arg != 0)
            case .natsDetach: detachNow()
            default: break
            }
        } else if !loop.post(kind: kind, arg: arg) {
            logger.error("doorway full: NATS event lost", metadata: ["kind": "\(kind)"])
        }
    }
}

// The adapter's C entry points. `loop` (the evLoop given to the library) is
// the NatsLink itself, and so is the userData they pass back.
private let natsConnectedNoop: natsConnectionHandler = { _, _ in }

private let natsAdapterAttach: natsEvLoop_Attach = { userData, loop, _, socket in
    userData?.pointee = loop
    Unmanaged<NatsLink>.fromOpaque(loop!).takeUnretainedValue().adapter(.natsAttach, arg: Int32(socket))
    return NATS_OK
}

private let natsAdapterRead: natsEvLoop_ReadAddRemove = { userData, add in
    Unmanaged<NatsLink>.fromOpaque(userData!).takeUnretainedValue().adapter(.natsRead, arg: add ? 1 : 0)
    return NATS_OK
}

private let natsAdapterWrite: natsEvLoop_WriteAddRemove = { userData, add in
    Unmanaged<NatsLink>.fromOpaque(userData!).takeUnretainedValue().adapter(.natsWrite, arg: add ? 1 : 0)
    return NATS_OK
}

private let natsAdapterDetach: natsEvLoop_Detach = { userData in
    Unmanaged<NatsLink>.fromOpaque(userData!).takeUnretainedValue().adapter(.natsDetach, arg: 0)
    return NATS_OK
}
