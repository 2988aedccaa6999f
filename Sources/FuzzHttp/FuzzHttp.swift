// FuzzHttp — libFuzzer harness: request bytes from an admin API client,
// through the real connection code on the real event loop.
//
// Once per process: an `EventLoop` and an `AdminServer` (started on an
// ephemeral loopback port, bearer token "fuzz-token") over a stub backend.
// Per input: a socketpair whose server end becomes an `AdminConnection`,
// registered with the loop exactly as `AdminServer` does after `accept`
// (the connection table and the idle sweep are the only parts left out). The
// bytes are written to the client end, then its write side is shut; the loop
// turns until the connection has closed itself, the client end reading every
// response meanwhile.
//
// Input: byte 0 chooses how the request bytes arrive (0: all at once, n: in
// chunks of n bytes, one chunk per loop turn); the rest are the bytes a client
// sends (any number of pipelined requests). The stub answers `POST /tempo`
// at once for an even bpm and a few turns later for an odd one (a tempo change
// waiting for its commit); GETs answer fixed bodies.
//
// What it checks: no trap; every answer starts with an HTTP/1.1 status line;
// the connection finishes (closes itself) within a bounded number of turns
// once the client has sent everything, with no descriptor left open.
//
// Needs internal types: built with `-enable-testing` (`make fuzz`), and the body
// is compiled only in debug builds (type-checked by `swift build`) and in the
// fuzz build (`-DFUZZING`), so a plain `swift build -c release` does not fail.
// Reproduce: `FuzzHttp <artifact>` (docs/fuzzing.md).
#if DEBUG || FUZZING
    @testable import Pulse
    import CLoop
    import Glibc
    import Logging

    /// Fixed answers; tempo changes with an odd bpm are answered later by `releaseHeld()`.
    private final class StubBackend: AdminBackend {
        var held: [() -> Void] = []

        func tempoStatus() -> TempoStatus {
            TempoStatus(current_bpm: 120, pending_bpm: 120, can_change: true, next_change: nil, reason: "")
        }
        func requestTempoChange(_ request: TempoRequest, reply: @escaping (TempoDecision) -> Void) {
            let decision = TempoDecision.scheduled(
                ScheduledTempoChange(
                    tempo_bpm: request.tempoBpm, previous_bpm: 120, apply_at_beat: 16,
                    apply_at: "2025-09-04T12:00:08Z", justification: request.justification))
            if request.tempoBpm % 2 == 0 { reply(decision) } else { held.append { reply(decision) } }
        }
        func recordTempoRefusal(reason: String) {}
        func driftStatus() -> DriftStatus {
            DriftStatus(
                timer_drift_percent: 0.1, hlc_drift_seconds: 0.001, last_sync_time: nil, degradation_mode: false,
                within_limits: true)
        }
        func leaderStatus() -> LeaderStatus {
            LeaderStatus(
                node_id: "fuzz", is_leader: true, leader: "fuzz", cluster_size: 1,
                stats: .init(term: 1, commit_index: 1, last_contact_ms: 0, leadership_changes: 1, state: "leader"))
        }
        func health() -> [String: ComponentHealth] { ["loop": ComponentHealth(status: "ok", detail: "turning")] }
        func readiness() -> (ready: Bool, reason: String) { (true, "leader") }
        func recentBeats() -> [BeatRecord] {
            [
                BeatRecord(
                    index: 1, scheduledNs: 1, wakeNs: 2, publishStartNs: 3, publishDoneNs: 4, published: true,
                    periodNs: 5)
            ]
        }
        func metricsText() -> String { "backbeat_beats_total 1\n" }

        func releaseHeld() {
            let replies = held
            held = []
            for reply in replies { reply() }
        }
    }

    /// The loop, server and backend every input runs against.
    private final class Rig {
        let loop: EventLoop
        let backend = StubBackend()
        let server: AdminServer
        let limits = AdminLimits()

        init() {
            do {
                loop = try EventLoop(maxSlots: 64, queueCapacity: 16)
                loop.bindToCurrentThread()
                var logger = Logger(label: "fuzz.admin")
                logger.logLevel = .critical
                server = AdminServer(
                    loop: loop, backend: backend, port: 0, authToken: "fuzz-token", limits: limits, logger: logger)
                try server.start()
            } catch {
                fatalError("FuzzHttp: cannot set up the loop and server: \(error)")
            }
        }

        /// What `AdminServer.acceptConnections` does with an accepted descriptor.
        func adopt(_ fd: Int32) -> AdminConnection {
            let connection = AdminConnection(fd: fd, server: server, limits: limits, nowNs: cloop_monotonic_ns())
            let interest = UInt32(CLOOP_READ)
            guard let token = try? loop.register(fd: fd, interest: interest, owned: true, handler: connection) else {
                fatalError("FuzzHttp: cannot register the connection")
            }
            connection.attach(token: token, interest: interest)
            return connection
        }
    }

    private let rig = Rig()
    /// Loop turns an input may take besides one per chunk sent.
    private let maxTurnsAfterInput = 4096
    private let statusLine = Array("HTTP/1.1 ".utf8)

    /// Reads whatever the server wrote; false at EOF or error.
    private func drain(_ fd: Int32, into received: inout [UInt8]) {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            guard n > 0 else { return }
            if received.count < 4096 { received.append(contentsOf: buffer[0..<min(n, 4096)]) }
        }
    }

    private func run(_ input: UnsafeRawBufferPointer) {
        var fds: [Int32] = [-1, -1]
        guard
            socketpair(
                AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue | SOCK_CLOEXEC.rawValue), 0, &fds)
                == 0
        else {
            fatalError("FuzzHttp: socketpair: \(errno)")
        }
        let (serverEnd, client) = (fds[0], fds[1])
        weak let connection = rig.adopt(serverEnd)
        let chunk = input.isEmpty || input[0] == 0 ? Int.max : Int(input[0])
        let request =
            input.isEmpty ? UnsafeRawBufferPointer(start: nil, count: 0) : UnsafeRawBufferPointer(rebasing: input[1...])
        var sent = 0
        var shut = false
        var received: [UInt8] = []
        // Every turn sends a chunk (or the socket is full because the server
        // stopped reading, which held answers released every other turn undo).
        let maxTurns = maxTurnsAfterInput + request.count
        var turns = 0
        while let open = connection, open.phase != .closed {
            turns += 1
            guard turns <= maxTurns else {
                fatalError(
                    "FuzzHttp: the connection is still \(open.phase) after \(maxTurns) turns (\(sent) bytes sent)")
            }
            if sent < request.count {
                let n = send(client, request.baseAddress! + sent, min(chunk, request.count - sent), Int32(MSG_NOSIGNAL))
                if n > 0 { sent += n } else if errno != EAGAIN && errno != EWOULDBLOCK { sent = request.count }
            } else if !shut {
                shutdown(client, Int32(SHUT_WR))
                shut = true
            }
            rig.loop.turn(timeoutNs: shut ? 1_000_000 : 0)
            if turns % 2 == 0 { rig.backend.releaseHeld() }
            drain(client, into: &received)
        }
        rig.backend.releaseHeld()  // answers arriving after the close are ignored
        drain(client, into: &received)
        close(client)
        if !received.isEmpty && !received.starts(with: statusLine) {
            fatalError(
                "FuzzHttp: the answer does not start with a status line: \(String(decoding: received.prefix(64), as: UTF8.self))"
            )
        }
        // The connection closed its descriptor (the loop owned it) and is gone.
        if fcntl(serverEnd, F_GETFD) != -1 { fatalError("FuzzHttp: descriptor \(serverEnd) left open") }
        if fcntl(client, F_GETFD) != -1 { fatalError("FuzzHttp: descriptor \(client) left open") }
    }

    @_cdecl("LLVMFuzzerTestOneInput")
    public func fuzzHttp(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
        run(UnsafeRawBufferPointer(start: data, count: size))
        return 0
    }
#endif
