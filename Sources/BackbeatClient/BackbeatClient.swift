// BackbeatClient/BackbeatClient.swift — owns a consumer's connection to a
// BACKBEAT cluster: the NATS C client in its default threaded mode (its own
// reader and delivery threads; no event loop of ours), the timeline fetched
// by request/reply on `backbeat.<cluster>.request.timeline` and kept current
// from the leader's publications on `backbeat.<cluster>.timeline`, the frames
// on `backbeat.<cluster>.beat` judged by `FrameTracker`, and the events as an
// `AsyncStream`.
//
// Guarantees:
// - A late joiner knows the current beat and phase one NATS round trip after
//   `connect` returns (the timeline is requested before it does); answers
//   (`beat(at:)`, `phase(at:)`, `windowId(at:)`, `nextDownbeat(after:)`, ...)
//   are local computations with PulseCore's timeline math, the pulse's own.
// - Frames are validated by the shared `BeatFrameDecoder`; refused ones are
//   events with a reason, never crashes. A newer timeline never gives way to
//   an older one (`BeatTimeline.version`), so a lagging node's reply cannot
//   roll a committed tempo change back.
// - One message cannot move the consumer (issue 20, item 2): only replies to
//   this client's own timeline requests are adopted. A publication on the
//   timeline subject (which a consumer may publish on where the server has
//   no permissions; docs/decisions.md "Request subjects") that claims
//   something newer is a hint: it triggers a request, and the answer is what
//   counts. Frames are judged by `FrameTracker` (fence raised only by
//   confirmed terms); a frame with a newer term, a mismatch or repeated stale
//   refusals trigger the same re-check. Re-checks run one at a time, at
//   most one per `recheckIntervalNs`, and one more after a trigger that came
//   while one was in flight; a publication's claim that the answer does not
//   meet yet (a reply from a node a heartbeat behind) is asked again up to
//   `claimFollowUps` times, 50 ms apart, then dropped. So a flood of
//   forgeries costs the cluster at most ~13 requests a second per consumer,
//   and a real change is confirmed within a few heartbeats.
// - `now()` is the local wall clock corrected by the offset measured against
//   the answering node's timeline clock (NTP-style, best of the last replies);
//   `deliveryOffsetNs` is the median of (arrival − instant) of recent frames.
// - State is guarded by one lock; callbacks run on the library's threads and
//   never block on the consumer (the stream buffers the newest `eventBuffer`).

import CNats
import Foundation
import PulseCore

#if canImport(Glibc)
    import Glibc
#endif

/// How to reach a cluster.
public struct BackbeatClientOptions: Sendable {
    /// NATS server URL(s), comma-separated; user/password or token may be in the URL.
    public var url: String
    /// The cluster id (`-cluster` of the pulse).
    public var clusterId: String
    /// A NATS credentials file (JWT + nkey seed), if the server requires one.
    public var credentialsFile: String?
    /// A CA bundle for TLS to the NATS server.
    public var caFile: String?
    /// The connection name shown by the server.
    public var name: String
    /// Timeout of a timeline request.
    public var requestTimeoutMs: Int64
    /// Events kept for a slow consumer (the oldest are dropped beyond it).
    public var eventBuffer: Int
    /// How long ``BackbeatClient/connect(_:)`` waits for NATS and then for a
    /// pulse's timeline before it fails with ``BackbeatClientError/noPulse(server:subject:waitedMs:timeoutMs:cause:)``.
    public var connectTimeoutMs: Int64 = 5000
    /// How often the clock offset is sampled (a timeline request); 0 turns it off.
    public var clockSampleIntervalMs: Int64 = 2000
    /// A file holding an nkey user seed (`SU…`) and that user's public key (`U…`, as in the server's configuration).
    public var nkey: (seedFile: String, publicKey: String)?
    /// A client certificate and its key (PEM) for TLS to the server.
    public var certificate: (certFile: String, keyFile: String)?
    /// Reads the local wall clock, Unix ns (tests inject a skewed one; default `CLOCK_REALTIME`).
    public var localClock: (@Sendable () -> Int64)?
    /// The cluster's publication keys (`-sign-key`; old and new during a
    /// rotation). When set, only signed frames, timeline replies and
    /// publications are accepted; the others are refused with
    /// `unsigned`, `unknown_key` or `bad_signature` and counted in
    /// ``BackbeatClient/signatureRefusals``.
    public var signatureVerifier: PublicationVerifier?

    public init(
        url: String, clusterId: String = "chorus-aus-01", credentialsFile: String? = nil, caFile: String? = nil,
        name: String = "backbeat-client", requestTimeoutMs: Int64 = 2000, eventBuffer: Int = 4096
    ) {
        self.url = url
        self.clusterId = clusterId
        self.credentialsFile = credentialsFile
        self.caFile = caFile
        self.name = name
        self.requestTimeoutMs = requestTimeoutMs
        self.eventBuffer = eventBuffer
    }

    /// The cluster's subjects (docs/protocol.md "Subjects").
    public var subjects: BackbeatSubjects { BackbeatSubjects(clusterId: clusterId) }
    /// Frames.
    public var beatSubject: String { subjects.beat }
    /// The leader's timeline publications.
    public var timelineSubject: String { subjects.timeline }
    /// The leader's tempo announcements.
    public var controlSubject: String { subjects.control }
    /// Where this client asks for the timeline.
    public var timelineRequestSubject: String { subjects.timelineRequest }
    /// Where this client asks for a tempo change.
    public var controlRequestSubject: String { subjects.controlRequest }
}

public enum BackbeatClientError: Error, Sendable, CustomStringConvertible {
    case connect(String)
    case subscribe(String)
    /// No node answered the timeline request, or the answer was refused.
    case noTimeline(String)
    /// Connect gave up: no pulse answered on `subject` via `server` within the timeout (or, with
    /// `subject` empty, no NATS server was reachable).
    case noPulse(server: String, subject: String, waitedMs: Int64, timeoutMs: Int64, cause: String)
    case closed

    public var description: String {
        switch self {
        case .connect(let why): return "cannot connect to NATS: \(why)"
        case .subscribe(let why): return "cannot subscribe: \(why)"
        case .noTimeline(let why): return "no timeline: \(why)"
        case .noPulse(let server, let subject, let waited, let timeout, let cause):
            let within = "within \(Double(timeout) / 1000) s (waited \(Double(waited) / 1000) s"
            if subject.isEmpty { return "no NATS server reachable at \(server) \(within)): \(cause)" }
            return "no pulse answered on \(subject) via \(server) \(within); last: \(cause))"
        case .closed: return "the client is closed"
        }
    }
}

/// A tempo change the cluster accepted (`202` on `backbeat.<cluster>.request.control` or `POST /tempo`).
public struct TempoScheduled: Sendable, Hashable {
    public var tempoBpm: Int64
    public var previousBpm: Int64
    /// The downbeat at which it applies.
    public var applyAtBeat: Int64
    /// Its instant as RFC 3339 text.
    public var applyAt: String
    public var justification: String
}

/// The cluster's refusal of a tempo request, unchanged: the HTTP status it
/// stands for, the machine code (`change_pending`, `out_of_range`, ...) and the sentence.
public struct TempoRequestRefused: Error, Sendable, Hashable, CustomStringConvertible {
    public var status: Int
    public var code: String
    public var message: String
    public var description: String { "tempo refused: \(status) \(code): \(message)" }
}

/// A consumer of one cluster's beat. Create with ``connect(_:)``; call ``close()`` when done.
public final class BackbeatClient: @unchecked Sendable {
    public let options: BackbeatClientOptions
    /// Every event, in order (single consumer).
    public let events: AsyncStream<BackbeatEvent>
    private let continuation: AsyncStream<BackbeatEvent>.Continuation
    private let lock = NSLock()
    private var connection: OpaquePointer?
    private var subscriptions: [OpaquePointer?] = []
    private var current: BeatTimeline?
    private var tracker: FrameTracker
    private var clock = ClockOffsetEstimator()
    private var delivery = DeliveryOffsetEstimator()
    private var refetchInFlight = false
    /// A re-check was asked for while one was in flight: run one more after it.
    private var refetchAgain = false
    /// Monotonic start of the last re-check (spacing, `recheckIntervalNs`).
    private var lastRefetchMonoNs: Int64 = .min / 2
    private var closed = false
    /// Shortest spacing of timeline re-checks.
    public static let recheckIntervalNs: Int64 = 200_000_000
    /// A publication's claim (version, term) not yet confirmed by a reply.
    private var claimed: (version: BeatTimeline.Version, term: UInt64)?
    /// Requests made again for an unconfirmed claim, and how far apart.
    static let claimFollowUps = 4
    static let claimFollowUpIntervalNs: Int64 = 50_000_000
    private let box: CallbackBox
    /// Signalled by ``close()`` to stop the clock sampler at once.
    private let sampler = DispatchSemaphore(value: 0)
    private var signatureRefusedCount: UInt64 = 0

    /// Connects to NATS, fetches the timeline and subscribes to the beat and
    /// timeline subjects, all within ``BackbeatClientOptions/connectTimeoutMs``;
    /// when no pulse answers by then it throws one
    /// ``BackbeatClientError/noPulse(server:subject:waitedMs:timeoutMs:cause:)``
    /// naming the server, the subject and the wait.
    public static func connect(_ options: BackbeatClientOptions) async throws -> BackbeatClient {
        try await withCheckedThrowingContinuation { (done: CheckedContinuation<BackbeatClient, Error>) in
            // The C client's connect blocks: not on a cooperative thread.
            Thread.detachNewThread {
                do {
                    done.resume(returning: try BackbeatClient(blocking: options))
                } catch {
                    done.resume(throwing: error)
                }
            }
        }
    }

    /// The blocking form of ``connect(_:)`` (for threads that may block).
    public init(blocking options: BackbeatClientOptions) throws {
        self.options = options
        (events, continuation) = AsyncStream.makeStream(
            of: BackbeatEvent.self, bufferingPolicy: .bufferingNewest(max(16, options.eventBuffer)))
        tracker = FrameTracker(clusterId: options.clusterId)
        box = CallbackBox()
        box.client = self
        let started = Self.localNs()
        let deadline = started + options.connectTimeoutMs * 1_000_000
        try open(deadline: deadline)
        // The first timeline, asked until the deadline; the subscriptions come
        // after it (so every frame is judged with it; NATS answers "no
        // responders" at once while no pulse listens).
        var last = "no time left to ask"
        while Self.localNs() < deadline {
            let remainingMs = (deadline - Self.localNs()) / 1_000_000
            do {
                try fetchTimeline(timeoutMs: max(1, min(options.requestTimeoutMs, remainingMs)))
                last = ""
                break
            } catch {
                last = "\(error)"
                if case BackbeatClientError.noTimeline(let why) = error, why.contains("Timeout") { continue }
                usleep(useconds_t(max(0, min(100_000, (deadline - Self.localNs()) / 1000))))
            }
        }
        if !last.isEmpty {
            let server = connectedUrl()
            close()
            throw BackbeatClientError.noPulse(
                server: server, subject: options.timelineRequestSubject,
                waitedMs: (Self.localNs() - started) / 1_000_000,
                timeoutMs: options.connectTimeoutMs, cause: last)
        }
        try subscribe()
        startClockSampler()
    }

    deinit { close() }

    // MARK: Connection

    private func open(deadline: Int64) throws {
        var opts: OpaquePointer?
        guard natsOptions_Create(&opts) == NATS_OK else { throw BackbeatClientError.connect("natsOptions_Create") }
        defer { natsOptions_Destroy(opts) }
        let servers = options.url.split(separator: ",").map { String($0.trimmingCharacters(in: .whitespaces)) }
        var status = Self.setServers(opts, servers)
        if status == NATS_OK { status = natsOptions_SetName(opts, options.name) }
        if status == NATS_OK { status = natsOptions_SetMaxReconnect(opts, -1) }
        if status == NATS_OK { status = natsOptions_SetReconnectWait(opts, 250) }
        if status == NATS_OK, let creds = options.credentialsFile {
            status = natsOptions_SetUserCredentialsFromFiles(opts, creds, nil)
        }
        if status == NATS_OK, let ca = options.caFile {
            status = natsOptions_LoadCATrustedCertificates(opts, ca)
            if status == NATS_OK { status = natsOptions_SetSecure(opts, true) }
        }
        if status == NATS_OK, let nkey = options.nkey {
            status = natsOptions_SetNKeyFromSeed(opts, nkey.publicKey, nkey.seedFile)
        }
        if status == NATS_OK, let certificate = options.certificate {
            status = natsOptions_LoadCertificatesChain(opts, certificate.certFile, certificate.keyFile)
            if status == NATS_OK { status = natsOptions_SetSecure(opts, true) }
        }
        let context = Unmanaged.passUnretained(box).toOpaque()
        if status == NATS_OK {
            status = natsOptions_SetDisconnectedCB(
                opts, { _, closure in CallbackBox.from(closure)?.linkChanged(up: false) }, context)
        }
        if status == NATS_OK {
            status = natsOptions_SetReconnectedCB(
                opts, { _, closure in CallbackBox.from(closure)?.linkChanged(up: true) }, context)
        }
        guard status == NATS_OK else { throw BackbeatClientError.connect(Self.text(status)) }
        // NATS itself, retried until the deadline (a server restarting is not a failure yet).
        let started = Self.localNs()
        var nc: OpaquePointer?
        while true {
            natsOptions_SetTimeout(opts, max(1, (deadline - Self.localNs()) / 1_000_000))
            status = natsConnection_Connect(&nc, opts)
            if status == NATS_OK { break }
            let cause = Self.text(status) + Self.lastErrorText()
            if Self.localNs() >= deadline || status == NATS_NOT_PERMITTED
                || cause.lowercased().contains("authorization")
            {
                throw BackbeatClientError.noPulse(
                    server: options.url, subject: "", waitedMs: (Self.localNs() - started) / 1_000_000,
                    timeoutMs: options.connectTimeoutMs, cause: cause)
            }
            usleep(useconds_t(max(0, min(250_000, (deadline - Self.localNs()) / 1000))))
        }
        lock.lock()
        connection = nc
        lock.unlock()
    }

    /// The C library's last error text for this thread (": <text>"), or "".
    private static func lastErrorText() -> String {
        var status = NATS_OK
        guard let text = nats_GetLastError(&status) else { return "" }
        let message = String(cString: text)
        return message.isEmpty ? "" : ": " + message
    }

    /// The URL of the server connected to, or the configured list.
    private func connectedUrl() -> String {
        lock.lock()
        let nc = connection
        lock.unlock()
        var buffer = [CChar](repeating: 0, count: 256)
        guard let nc, natsConnection_GetConnectedUrl(nc, &buffer, buffer.count) == NATS_OK, buffer[0] != 0 else {
            return options.url
        }
        return String(cString: buffer)
    }

    private func subscribe() throws {
        lock.lock()
        let nc = connection
        lock.unlock()
        let context = Unmanaged.passUnretained(box).toOpaque()
        var status = NATS_OK
        for (subject, handler) in [
            (options.beatSubject, CallbackBox.beatHandler), (options.timelineSubject, CallbackBox.timelineHandler),
        ] {
            var sub: OpaquePointer?
            status = natsConnection_Subscribe(&sub, nc, subject, handler, context)
            guard status == NATS_OK else {
                close()
                throw BackbeatClientError.subscribe("\(subject): \(Self.text(status))")
            }
            natsSubscription_SetPendingLimits(sub, 65536, 64 << 20)
            lock.lock()
            subscriptions.append(sub)
            lock.unlock()
        }
        natsConnection_FlushTimeout(nc, options.requestTimeoutMs)
    }

    private static func setServers(_ opts: OpaquePointer?, _ servers: [String]) -> natsStatus {
        var pointers = servers.map { strdup($0) }
        defer { pointers.forEach { free($0) } }
        return pointers.withUnsafeMutableBufferPointer { buffer in
            buffer.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: buffer.count) {
                natsOptions_SetServers(opts, $0, Int32(buffer.count))
            }
        }
    }

    private static func text(_ status: natsStatus) -> String { String(cString: natsStatus_GetText(status)) }

    /// One request/reply on an inbox of its own, `_INBOX.<128 random bits>`,
    /// which takes one message and is gone (adversarial review F2): the C
    /// client's own request inboxes are its connection's prefix and a
    /// counter (`_INBOX.<nuid>.0`, `.1`, …), so a consumer that may
    /// subscribe to `_INBOX.>` (the shipped permissions let it: replies
    /// travel there) learns the next one from any reply it sees and can
    /// answer first with a forged timeline. A fresh random inbox cannot be
    /// predicted, and one that saw its reply takes no other. A "no
    /// responders" status reads as `NATS_NO_RESPONDERS`, as the C client's own.
    static func request(
        _ reply: inout OpaquePointer?, _ nc: OpaquePointer, _ subject: String, _ payload: String, timeoutMs: Int64
    ) -> natsStatus {
        reply = nil
        var random = SystemRandomNumberGenerator()  // getrandom(2)
        let inbox =
            "_INBOX."
            + [random.next(), random.next()].map { (word: UInt64) -> String in
                let hex = String(word, radix: 16)
                return String(repeating: "0", count: 16 - hex.count) + hex
            }.joined()
        var sub: OpaquePointer?
        var status = natsConnection_SubscribeSync(&sub, nc, inbox)
        guard status == NATS_OK, let sub else { return status }
        defer { natsSubscription_Destroy(sub) }
        _ = natsSubscription_AutoUnsubscribe(sub, 1)
        status = natsConnection_PublishRequestString(nc, subject, inbox, payload)
        if status == NATS_OK {
            var msg: OpaquePointer?
            status = natsSubscription_NextMsg(&msg, sub, timeoutMs)
            if status == NATS_OK, let msg {
                if natsMsg_IsNoResponders(msg) {
                    natsMsg_Destroy(msg)
                    status = NATS_NO_RESPONDERS
                } else {
                    reply = msg
                }
            }
        }
        if reply == nil { _ = natsSubscription_Unsubscribe(sub) }
        return status
    }

    /// Unsubscribes, closes the connection and finishes ``events``. Idempotent.
    public func close() {
        lock.lock()
        if closed {
            lock.unlock()
            return
        }
        closed = true
        sampler.signal()
        let subs = subscriptions
        let nc = connection
        subscriptions = []
        connection = nil
        lock.unlock()
        box.client = nil
        for sub in subs {
            natsSubscription_Unsubscribe(sub)
            natsSubscription_Destroy(sub)
        }
        if let nc {
            natsConnection_Close(nc)
            natsConnection_Destroy(nc)
        }
        continuation.finish()
    }

    // MARK: Timeline

    /// The timeline as last adopted (nil before the first answer).
    public var timeline: BeatTimeline? {
        lock.lock()
        defer { lock.unlock() }
        return current
    }

    /// Asks the cluster for its timeline (one NATS round trip) and adopts it
    /// unless the one held is newer. Blocking; see ``refreshTimeline()``.
    @discardableResult
    public func fetchTimeline() throws -> BeatTimeline {
        try fetchTimeline(timeoutMs: options.requestTimeoutMs)
    }

    @discardableResult
    private func fetchTimeline(timeoutMs: Int64) throws -> BeatTimeline {
        lock.lock()
        let nc = connection
        lock.unlock()
        guard let nc else { throw BackbeatClientError.closed }
        var reply: OpaquePointer?
        let sentNs = localNow()
        let status = Self.request(&reply, nc, options.timelineRequestSubject, "{}", timeoutMs: timeoutMs)
        let answeredNs = localNow()
        guard status == NATS_OK, let reply else { throw BackbeatClientError.noTimeline(Self.text(status)) }
        defer { natsMsg_Destroy(reply) }
        let data = Data(bytes: natsMsg_GetData(reply), count: Int(natsMsg_GetDataLength(reply)))
        if let refusal = signatureRefusal(data) {
            throw BackbeatClientError.noTimeline("the reply is refused: \(refusal.rawValue)")
        }
        let timeline: BeatTimeline
        do {
            timeline = try BeatTimeline.decode(data, clusterId: options.clusterId)
        } catch {
            throw BackbeatClientError.noTimeline("\(error)")
        }
        lock.lock()
        clock.add(sentLocalNs: sentNs, answeredLocalNs: answeredNs, serverNs: timeline.servedAtNs)
        lock.unlock()
        adopt(timeline)
        return self.timeline ?? timeline
    }

    /// ``fetchTimeline()`` off the caller's thread.
    @discardableResult
    public func refreshTimeline() async throws -> BeatTimeline {
        try await withCheckedThrowingContinuation { (done: CheckedContinuation<BeatTimeline, Error>) in
            Thread.detachNewThread { [self] in
                do { done.resume(returning: try fetchTimeline()) } catch { done.resume(throwing: error) }
            }
        }
    }

    /// Samples the clock offset every ``BackbeatClientOptions/clockSampleIntervalMs``
    /// (a timeline request, adopted as any other) until ``close()``.
    private func startClockSampler() {
        let intervalMs = options.clockSampleIntervalMs
        guard intervalMs > 0 else { return }
        Thread.detachNewThread { [weak self, sampler] in
            while sampler.wait(timeout: .now() + .milliseconds(Int(intervalMs))) == .timedOut {
                guard let self else { return }
                _ = try? self.fetchTimeline()
            }
        }
    }

    /// Asks the cluster to change the tempo (request/reply on the control
    /// request subject; the leader answers). Returns the scheduled change, or throws
    /// ``TempoRequestRefused`` with the API's status and code unchanged. `token` is
    /// the admin token when the cluster has one.
    public func requestTempo(bpm: Int64, justification: String, token: String? = nil) async throws -> TempoScheduled {
        var body: [String: Any] = ["tempo_bpm": bpm, "justification": justification]
        if let token { body["token"] = token }
        let payload = String(decoding: try JSONSerialization.data(withJSONObject: body), as: UTF8.self)
        let data: Data = try await withCheckedThrowingContinuation { done in
            Thread.detachNewThread { [self] in
                lock.lock()
                let nc = connection
                lock.unlock()
                guard let nc else { return done.resume(throwing: BackbeatClientError.closed) }
                var reply: OpaquePointer?
                let status = Self.request(
                    &reply, nc, options.controlRequestSubject, payload, timeoutMs: options.requestTimeoutMs)
                guard status == NATS_OK, let reply else {
                    return done.resume(
                        throwing: BackbeatClientError.noTimeline(
                            "tempo request on \(options.controlRequestSubject): \(Self.text(status))"))
                }
                done.resume(returning: Data(bytes: natsMsg_GetData(reply), count: Int(natsMsg_GetDataLength(reply))))
                natsMsg_Destroy(reply)
            }
        }
        struct Reply: Decodable {
            var status: Int?
            var error: String?
            var code: String?
            var tempo_bpm: Int64?
            var previous_bpm: Int64?
            var apply_at_beat: Int64?
            var apply_at: String?
            var justification: String?
        }
        let reply = try JSONDecoder().decode(Reply.self, from: data)
        guard reply.code == nil, reply.status == 202, let bpm = reply.tempo_bpm, let previous = reply.previous_bpm,
            let beat = reply.apply_at_beat
        else {
            throw TempoRequestRefused(status: reply.status ?? 0, code: reply.code ?? "", message: reply.error ?? "")
        }
        return TempoScheduled(
            tempoBpm: bpm, previousBpm: previous, applyAtBeat: beat, applyAt: reply.apply_at ?? "",
            justification: reply.justification ?? "")
    }

    /// Adopts `timeline`, a reply to our own request (confirmed), if it is
    /// not older than the one held; emits events.
    private func adopt(_ timeline: BeatTimeline) {
        lock.lock()
        let (held, events) = tracker.adopt(timeline, over: current)
        current = held
        lock.unlock()
        for event in events { continuation.yield(event) }
    }

    /// Fetches the timeline again on a helper thread (at most one in flight,
    /// `recheckIntervalNs` apart); retried every second while nobody answers.
    private func scheduleRefetch(after seconds: Double) {
        lock.lock()
        if closed {
            lock.unlock()
            return
        }
        if refetchInFlight {
            refetchAgain = true
            lock.unlock()
            return
        }
        refetchInFlight = true
        let spacingNs = lastRefetchMonoNs &+ Self.recheckIntervalNs &- Self.monotonicNs()
        lock.unlock()
        let delay = max(seconds, Double(spacingNs) / 1e9)
        Thread.detachNewThread { [weak self] in
            if delay > 0 { Thread.sleep(forTimeInterval: delay) }
            guard let self else { return }
            var ok = false
            var followUps = 0
            while true {
                self.lock.lock()
                self.lastRefetchMonoNs = Self.monotonicNs()
                self.lock.unlock()
                ok = (try? self.fetchTimeline()) != nil
                // A publication claimed more than the answer gave (the first
                // reply may come from a node a heartbeat behind): ask again
                // shortly, a few times, then let the claim go (a forgery).
                self.lock.lock()
                let unmet = ok && self.claimUnmet()
                let chase = unmet && followUps < Self.claimFollowUps && !self.closed
                if !chase { self.claimed = nil }
                self.lock.unlock()
                guard chase else { break }
                followUps += 1
                Thread.sleep(forTimeInterval: Double(Self.claimFollowUpIntervalNs) / 1e9)
            }
            self.lock.lock()
            self.refetchInFlight = false
            let again = self.refetchAgain
            self.refetchAgain = false
            let closed = self.closed
            self.lock.unlock()
            if !ok && !closed {
                self.scheduleRefetch(after: 1)
            } else if again {
                self.scheduleRefetch(after: 0)
            }
        }
    }

    /// Whether the held timeline is older than what a publication claimed (lock held).
    private func claimUnmet() -> Bool {
        guard let claim = claimed else { return false }
        guard let held = current else { return true }
        return held.version < claim.version || held.term < claim.term
    }

    private static func monotonicNs() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) &* 1_000_000_000 &+ Int64(ts.tv_nsec)
    }

    // MARK: Callbacks (library threads)

    fileprivate func received(beat bytes: UnsafeRawBufferPointer, localNs: Int64) {
        if let refusal = signatureRefusal(bytes) {
            continuation.yield(.refused(reason: refusal.rawValue))
            return
        }
        lock.lock()
        let receivedNs = localNs &+ clock.offsetNs
        let timeline = current
        let events = tracker.receive(bytes, receivedNs: receivedNs, timeline: timeline)
        var refetch = false
        for event in events {
            switch event {
            case .beat(let beat) where timeline != nil: delivery.add(beat.deliveryOffsetNs)
            case .mismatch, .leaderChanged: refetch = true
            case .refused(let reason): refetch = refetch || FrameTracker.refetchReasons.contains(reason)
            default: break
            }
        }
        refetch = refetch || tracker.needsConfirmation
        lock.unlock()
        for event in events { continuation.yield(event) }
        if refetch || timeline == nil { scheduleRefetch(after: 0) }
    }

    fileprivate func received(timeline data: Data) {
        // A publication: the leader's, or anyone's who may publish here. What
        // it claims is confirmed by a request (replies go to our inbox) before
        // anything changes; one that claims nothing newer is ignored.
        if let refusal = signatureRefusal(data) {
            continuation.yield(.refused(reason: "timeline_" + refusal.rawValue))
            return
        }
        switch Result(catching: { try BeatTimeline.decode(data, clusterId: options.clusterId) }) {
        case .success(let claimed):
            lock.lock()
            let held = current
            if let held, claimed.version <= held.version, claimed.term <= held.term {
                lock.unlock()
                return
            }
            self.claimed = (
                max(claimed.version, self.claimed?.version ?? claimed.version),
                max(claimed.term, self.claimed?.term ?? 0)
            )
            lock.unlock()
            scheduleRefetch(after: 0)
        case .failure(let error):
            let reason = (error as? TimelineDecodeError)?.reason ?? "malformed"
            continuation.yield(.refused(reason: "timeline_" + reason))
        }
    }

    fileprivate func linkChanged(up: Bool) {
        continuation.yield(.connection(up: up))
        if up { scheduleRefetch(after: 0) }
    }

    // MARK: Local answers

    /// Local wall clock now, Unix ns (no correction).
    public static func localNs() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) &* 1_000_000_000 &+ Int64(ts.tv_nsec)
    }

    /// The local clock as this client reads it (``BackbeatClientOptions/localClock`` or `CLOCK_REALTIME`).
    public func localNow() -> Int64 { options.localClock?() ?? Self.localNs() }

    /// The timeline's clock now: the local clock plus ``clockOffsetNs``.
    public func now() -> Int64 { localNow() &+ clockOffsetNs }

    /// Timeline clock minus local clock, estimated from timeline replies (0 before any).
    public var clockOffsetNs: Int64 {
        lock.lock()
        defer { lock.unlock() }
        return clock.offsetNs
    }

    /// The clock offset with its error bound: the true offset (to the
    /// answering node's timeline clock) is within `offsetNs ± boundNs`. Nil before any sample.
    public var clockOffset: (offsetNs: Int64, boundNs: Int64, samples: Int)? {
        let local = localNow()
        lock.lock()
        defer { lock.unlock() }
        return clock.estimate(atLocalNs: local).map { ($0.offsetNs, $0.boundNs, clock.taken) }
    }

    /// Median arrival − instant of the last frames (nil before any): how late
    /// frames reach this consumer, to act on a beat's instant instead of its frame.
    public var deliveryOffsetNs: Int64? {
        lock.lock()
        defer { lock.unlock() }
        return delivery.medianNs
    }

    /// Frame counters: accepted, duplicates dropped, refused.
    public var frameCounts: (accepted: UInt64, duplicates: UInt64, refused: UInt64) {
        lock.lock()
        defer { lock.unlock() }
        return (tracker.accepted, tracker.duplicates, tracker.refused)
    }

    /// Frames, timeline replies and publications refused for their
    /// signature (``BackbeatClientOptions/signatureVerifier``).
    public var signatureRefusals: UInt64 {
        lock.lock()
        defer { lock.unlock() }
        return signatureRefusedCount
    }

    /// Why `bytes` is refused under the configured keys (counted), or nil.
    private func signatureRefusal(_ bytes: some DataProtocol) -> PublicationVerifier.Refusal? {
        guard let refusal = options.signatureVerifier?.check(bytes) else { return nil }
        lock.lock()
        signatureRefusedCount &+= 1
        lock.unlock()
        return refusal
    }

    private func require() throws -> BeatTimeline {
        guard let timeline else { throw BackbeatClientError.noTimeline("not fetched yet") }
        return timeline
    }

    /// The beat in progress at `ns` (timeline clock; default now).
    public func beat(at ns: Int64? = nil) throws -> BeatInfo { try require().info(at: ns ?? now()) }
    public func phase(at ns: Int64? = nil) throws -> String { try require().phase(at: ns ?? now()) }
    public func windowId(at ns: Int64? = nil) throws -> String { try require().windowId(at: ns ?? now()) }
    public func isDownbeat(at ns: Int64? = nil) throws -> Bool { try require().isDownbeat(at: ns ?? now()) }
    public func nextBeat(after ns: Int64? = nil) throws -> BeatInfo { try require().nextBeat(after: ns ?? now()) }
    public func nextDownbeat(after ns: Int64? = nil) throws -> BeatInfo {
        try require().nextDownbeat(after: ns ?? now())
    }

    /// The exact fractional position at `ns` (default now): the beat in progress and how far into it.
    public func position(at ns: Int64? = nil) throws -> BeatPosition { try require().position(at: ns ?? now()) }

    /// The position at `ns` (default now) as one number of beats (Ableton Link's `beatAtTime`).
    public func beatAtTime(_ ns: Int64? = nil) throws -> Double { try position(at: ns).beats }

    /// The position at `ns` (default now) within a cycle of `quantum` beats, in `[0, quantum)`
    /// (Link's `phaseAtTime`); the default quantum is the bar.
    public func phaseAtTime(_ ns: Int64? = nil, quantum: Int64? = nil) throws -> Double {
        let timeline = try require()
        return timeline.position(at: ns ?? now()).phase(quantum: max(1, quantum ?? Int64(timeline.timeline.bar)))
    }

    /// Sleeps until the next downbeat's instant (on the timeline clock) and returns it.
    public func waitForNextDownbeat() async throws -> BeatInfo {
        try await wait { $0.nextDownbeat(after: $1) }
    }

    /// Sleeps until the next beat that starts phase `name` and returns it.
    public func waitForPhase(_ name: String) async throws -> BeatInfo {
        try await wait { timeline, now in
            guard let start = timeline.nextPhaseStart(name, after: now) else {
                throw BackbeatClientError.noTimeline("no phase named '\(name)'")
            }
            return start
        }
    }

    /// Sleeps until the instant of the beat `target` picks; if the timeline
    /// changes meanwhile (a tempo change), the same beat's new instant counts.
    private func wait(_ target: (BeatTimeline, Int64) throws -> BeatInfo) async throws -> BeatInfo {
        var timeline = try require()
        var goal = try target(timeline, now())
        while true {
            let remaining = goal.instantNs - now()
            if remaining <= 0 { return goal }
            // Short naps near the end, so a late timeline update still counts.
            try await Task.sleep(nanoseconds: UInt64(min(remaining, 50_000_000)))
            if let latest = self.timeline, latest != timeline {
                timeline = latest
                goal = latest.info(ofBeat: goal.index)
            }
        }
    }
}

/// What the C callbacks reach the client through. Never freed: a callback
/// from the library's delivery thread that races `close()` must still find
/// it (the client reference inside is weak and cleared on close).
private final class CallbackBox: @unchecked Sendable {
    private let lock = NSLock()
    private weak var _client: BackbeatClient?
    var client: BackbeatClient? {
        get {
            lock.lock()
            defer { lock.unlock() }
            return _client
        }
        set {
            lock.lock()
            _client = newValue
            lock.unlock()
        }
    }

    init() { _ = Unmanaged.passRetained(self) }  // see the type's comment

    static func from(_ closure: UnsafeMutableRawPointer?) -> BackbeatClient? {
        guard let closure else { return nil }
        return Unmanaged<CallbackBox>.fromOpaque(closure).takeUnretainedValue().client
    }

    static let beatHandler: natsMsgHandler = { _, _, msg, closure in
        defer { natsMsg_Destroy(msg) }
        guard let client = from(closure), let data = natsMsg_GetData(msg) else { return }
        let localNs = client.localNow()
        client.received(
            beat: UnsafeRawBufferPointer(start: data, count: Int(natsMsg_GetDataLength(msg))), localNs: localNs)
    }

    static let timelineHandler: natsMsgHandler = { _, _, msg, closure in
        defer { natsMsg_Destroy(msg) }
        // Requests (ours and other consumers') carry a reply subject: only publications count.
        guard natsMsg_GetReply(msg) == nil, let client = from(closure) else { return }
        client.received(timeline: Data(bytes: natsMsg_GetData(msg), count: Int(natsMsg_GetDataLength(msg))))
    }
}

/// Clock offset from request/reply: for a reply stamped `serverNs` between
/// local `sent` and `answered`, offset ≈ serverNs − midpoint, with an error
/// below half the round trip. The sample with the smallest round trip of the
/// last 8 wins.
struct ClockOffsetEstimator {
    private var samples: [(rttNs: Int64, offsetNs: Int64, takenNs: Int64)] = []
    private var best: (rttNs: Int64, offsetNs: Int64, takenNs: Int64)?
    private(set) var offsetNs: Int64 = 0
    /// Samples taken since the start.
    private(set) var taken = 0
    /// Drift allowed between two clocks: 200 ppm.
    static let driftPerSecondNs: Int64 = 200_000

    mutating func add(sentLocalNs: Int64, answeredLocalNs: Int64, serverNs: Int64) {
        let rtt = answeredLocalNs &- sentLocalNs
        guard rtt >= 0, rtt < 10_000_000_000, serverNs > 0 else { return }
        let mid = sentLocalNs &+ rtt / 2
        let (offset, overflow) = serverNs.subtractingReportingOverflow(mid)
        // A node's clock more than a minute off is not believed.
        guard !overflow, offset.magnitude < 60_000_000_000 else { return }
        taken += 1
        samples.append((rtt, offset, answeredLocalNs))
        if samples.count > 8 { samples.removeFirst() }
        best = samples.min { $0.rttNs < $1.rttNs }
        offsetNs = best!.offsetNs
    }

    /// The offset and its bound at local time `now`: the reply's stamp lies
    /// between send and receive, so half the round trip (rounded up), plus
    /// the drift allowed since the sample (at least one second's worth).
    func estimate(atLocalNs now: Int64) -> (offsetNs: Int64, boundNs: Int64)? {
        guard let best else { return nil }
        let ageSeconds = max(0, now &- best.takenNs) / 1_000_000_000
        return (best.offsetNs, (best.rttNs + 1) / 2 + (ageSeconds + 1) * Self.driftPerSecondNs)
    }
}

/// Median of the last 64 delivery offsets.
struct DeliveryOffsetEstimator {
    private var ring: [Int64] = []
    private var next = 0

    mutating func add(_ ns: Int64) {
        if ring.count < 64 {
            ring.append(ns)
        } else {
            ring[next] = ns
            next = (next + 1) % 64
        }
    }

    var medianNs: Int64? {
        guard !ring.isEmpty else { return nil }
        return ring.sorted()[ring.count / 2]
    }
}
