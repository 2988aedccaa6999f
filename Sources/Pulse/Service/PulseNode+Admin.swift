// Service: the node as the admin API, the control subject and the beat subject
// (echoes, through the shared decoder and the echo policy) see it.
import CLoop
import Foundation
import PulseCore
import PulsePolicy

extension PulseNode: AdminBackend {
    func tempoStatus() -> TempoStatus { tempo.status() }

    func requestTempoChange(_ request: TempoRequest, reply: @escaping (TempoDecision) -> Void) {
        tempo.request(request, reply: reply)
    }

    func recordTempoRefusal(reason: String) { tempo.recordRefusal(reason: reason) }

    func adminHostNames() -> [String] { config.adminHosts }

    /// The drift of this node's beat clock against the timeline, as a ratio:
    /// a publisher compares its beats with the committed instants; a node
    /// following a leader reports its clock's rate against the leader's
    /// (which the offset tracking corrects while degraded).
    var timerDriftRatio: Double {
        if let sync = cluster?.referenceSync, !(cluster?.isLeader ?? false) { return abs(sync.ratePpm) / 1e6 }
        return abs(metrics.driftRatio)
    }

    /// A single node (or the leader) is its own reference clock; a follower
    /// tracks the leader's offset and rate from Raft traffic.
    func driftStatus() -> DriftStatus {
        let percent = timerDriftRatio * 100
        let sync = cluster?.referenceSync
        let offsetSeconds = Double(sync?.offsetNs ?? 0) / 1e9
        let lastSync = sync?.lastSyncLocalNs.map { RFC3339.string(unixMs: $0 / 1_000_000) }
        return DriftStatus(
            timer_drift_percent: percent, hlc_drift_seconds: offsetSeconds, last_sync_time: lastSync,
            degradation_mode: cluster?.degraded ?? kvDegraded,
            within_limits: percent <= 1 && abs(offsetSeconds) * 1000 <= Double(config.maxOffsetMs))
    }

    func leaderStatus() -> LeaderStatus {
        if let kv { return kvLeaderStatus(kv) }
        guard let cluster else {
            return LeaderStatus(
                node_id: nodeId, is_leader: true, leader: config.raftBind, cluster_size: 1,
                stats: .init(
                    term: beats.term, commit_index: tempo.appliedChanges, last_contact_ms: 0, leadership_changes: 0,
                    state: "leader"))
        }
        let sinceContactMs =
            cluster.isLeader ? 0 : max(0, (cloop_monotonic_ns() - cluster.lastContactMonoNs) / 1_000_000)
        return LeaderStatus(
            node_id: nodeId, is_leader: cluster.isLeader, leader: cluster.leaderPeer?.address,
            cluster_size: cluster.voters.count,
            stats: .init(
                term: cluster.term, commit_index: cluster.commitIndex, last_contact_ms: sinceContactMs,
                leadership_changes: cluster.leadershipChanges,
                state: cluster.isLeader ? "leader" : cluster.leaderPeer == nil ? "candidate" : "follower"))
    }

    func health() -> [String: ComponentHealth] {
        let sinceTurnMs = (cloop_monotonic_ns() - loop.lastTurnMonotonicNs) / 1_000_000
        let stats = beats.stats
        return [
            "loop": ComponentHealth(status: "ok", detail: "last turn \(max(0, sinceTurnMs)) ms ago"),
            "nats": nats.isConnected
                ? ComponentHealth(status: "ok", detail: "connected to \(nats.redactedURL)")
                : ComponentHealth(status: "failing", detail: "not connected to \(nats.redactedURL)"),
            // The second connection answers consumers' timeline and tempo
            // requests (NatsLink, role .requests): frames flow without it,
            // requests to this node do not.
            "nats_requests": requests.isConnected
                ? ComponentHealth(status: "ok", detail: "connected to \(requests.redactedURL)")
                : ComponentHealth(
                    status: "failing", detail: "not connected to \(requests.redactedURL): requests go unanswered"),
            "timeline": ComponentHealth(
                status: stats.hotPathAllocatedBytes == 0 ? "ok" : "failing",
                detail: "beat \(stats.lastBeatIndex), \(stats.beatsPublished) published, \(stats.beatsMissed) missed"),
            "cluster": clusterHealth(),
            "publishing": publishingHealth(),
        ]
    }

    /// Silence longer than this many periods from a node that should publish is a failure.
    static let silentPeriodsLimit: Int64 = 2

    /// Health that tells the truth (requirements §10): a node that should
    /// publish — a single node, the leader holding its lease, or a degraded
    /// node whose turn it is (no other node's frame on the subject) — and has
    /// handed no frame to NATS for `silentPeriodsLimit` periods is failing,
    /// whatever the cause (NATS down, a beat path that skips, a stalled timer).
    /// Silence is measured from the last publish, or from when the duty began
    /// (start, taking over, degrading, the last frame of another node).
    func publishingHealth() -> ComponentHealth {
        guard beats.started else { return ComponentHealth(status: "ok", detail: "not publishing: no timeline yet") }
        let nowNs = cloop_realtime_ns()
        let nowMonoNs = cloop_monotonic_ns()
        var silentNs = min(nowNs &- beats.stats.lastPublishedNs, nowNs &- beats.publishingSinceNs)
        let duty: String
        switch beats.shell.publishMode(beats.timeline, monoNs: nowMonoNs) {
        case .single, .leader:
            duty = cluster == nil ? "single node" : "leader holding its lease"
        case .degraded:
            guard let sinceMonoNs = cluster?.degradedSinceMonoNs ?? kv?.leadership.degradation.sinceMonoNs else {
                return ComponentHealth(status: "ok", detail: "not publishing")
            }
            silentNs = min(silentNs, nowNs &- beats.lastFrameFromOthersNs, nowMonoNs &- sinceMonoNs)
            duty = "degraded, no other node's frames on the subject"
        case .waiting:
            return ComponentHealth(status: "ok", detail: "leader waiting for its lease")
        case .follower:
            return ComponentHealth(status: "ok", detail: "follower: the leader publishes")
        }
        let periodNs = max(1, beats.timeline.periodNs)
        let silentMs = max(0, silentNs) / 1_000_000
        if silentNs > Self.silentPeriodsLimit * periodNs {
            return ComponentHealth(
                status: "failing",
                detail: "should publish (\(duty)) but published nothing for \(silentMs) ms"
                    + " (\(Self.silentPeriodsLimit) periods are \(Self.silentPeriodsLimit * periodNs / 1_000_000) ms)")
        }
        return ComponentHealth(status: "ok", detail: "publishing (\(duty)), last frame \(silentMs) ms ago")
    }

    private func clusterHealth() -> ComponentHealth {
        if let kv { return kvHealth(kv) }
        guard let cluster else { return ComponentHealth(status: "ok", detail: "single node, leader") }
        if let leader = cluster.leaderPeer {
            return ComponentHealth(
                status: "ok",
                detail: "\(cluster.isLeader ? "leader" : "follower"), leader \(leader.name), term \(cluster.term)")
        }
        if cluster.degraded {
            return ComponentHealth(status: "failing", detail: "no leader: degraded, keeping the timeline locally")
        }
        return ComponentHealth(status: "failing", detail: "no leader (term \(cluster.term))")
    }

    func readiness() -> (ready: Bool, reason: String) {
        if !nats.isConnected { return (false, "not connected to NATS") }
        if let cluster, cluster.leaderPeer == nil && !cluster.degraded { return (false, "no known leader") }
        if !beats.started { return (false, "no committed timeline yet") }
        let publishing = publishingHealth()
        if publishing.status != "ok" { return (false, publishing.detail) }
        return (true, "")
    }

    func recentBeats() -> [BeatRecord] { beats.recent.records() }

    func metricsText() -> String {
        metrics.refresh(
            MetricsSnapshot(
                beats: beats.stats, natsConnected: nats.isConnected, natsReconnects: nats.stats.reconnects,
                requestsNatsConnected: requests.isConnected, requestsNatsReconnects: requests.stats.reconnects,
                natsSlowConsumer: nats.slowConsumerCount, requestsNatsSlowConsumer: requests.slowConsumerCount,
                isLeader: cluster?.isLeader ?? kv?.holdsLease ?? true, degraded: cluster?.degraded ?? kvDegraded,
                tempoBpm: beats.timeline.epoch.bpm,
                leadershipChanges: cluster?.leadershipChanges ?? 0, timerDriftRatio: timerDriftRatio,
                hlcRemoteRejected: beats.hlcRejected,
                clockOffsetSeconds: Double(cluster?.referenceSync?.offsetNs ?? 0) / 1e9,
                raftBadFrames: cluster?.transportStats.badFrames ?? 0, rejectedInput: rejected.counts,
                hasLeader: cluster.map { $0.leaderPeer != nil } ?? true, raftTerm: cluster?.term ?? 0,
                raftCommitIndex: cluster?.commitIndex ?? 0, raftVoters: cluster?.voters.count ?? 0,
                raftVotersConfigured: cluster == nil ? 0 : alone ? 1 : config.peers.count,  // a lone voter: itself
                hlcMaxOffsetSeconds: Double(config.maxOffsetMs) / 1000, loopWakes: loop.wakes))
        return metrics.text()
    }

    /// Largest control request considered (a tempo body is under 1.2 KB).
    static let maxControlBytes = 4096
    /// Longest reply subject answered (client inboxes are about 50 bytes).
    static let maxReplySubjectBytes = 256

    /// Tempo requests over NATS request/reply on the control request subject
    /// (and the control subject); the reply is the HTTP body plus `"status"`. Messages without a reply
    /// subject (such as our own announcements) are ignored.
    ///
    /// Boundary (requirements §10), checked in this order by the node that
    /// answers, each refusal counted as `rejected{surface="control_subject"}`:
    /// a reply subject that is empty, longer than `maxReplySubjectBytes`,
    /// not printable ASCII, a wildcard, or in `backbeat.` (our own subjects)
    /// is not answered (`bad_reply_subject`); a body over `maxControlBytes`
    /// gets 413 (`too_large`); with an admin token set, a body without a
    /// matching `"token"` string field gets 401 (`unauthorized`, compared in
    /// constant time); without one, on a NATS with users (-nats-nkey or
    /// -nats-creds), 403 (`token_required`); a malformed body gets 400 (`malformed_json`,
    /// `invalid_field`). Refused requests also count as tempo refusals.
    func subscribeControl() {
        let token = config.adminToken.flatMap { $0.isEmpty ? nil : Array($0.utf8) }
        // The request subject (the one consumers may publish on) and the
        // control subject itself (requirements §5, servers without permissions).
        // On the requests connection, as timeline requests (docs/decisions.md).
        for subject in [config.subjects.controlRequest, config.controlSubject] {
            requests.subscribe(subject: subject, rejected: rejected, surface: .controlSubject) { [weak self] message in
                // Only a node that can commit answers: followers stay silent so
                // that the leader's answer is the one the requester gets.
                guard let self, let reply = message.reply, self.tempo.canCommit() else { return }
                self.handleControl(message.data, reply: reply, token: token)
            }
        }
    }

    /// One control request (see `subscribeControl`).
    func handleControl(_ body: Data, reply: String, token: [UInt8]?) {
        guard Self.isValidReplySubject(reply) else {
            rejected.record(.controlSubject, "bad_reply_subject")
            return
        }
        let answer: (Int, Data) -> Void = { status, body in
            self.requests.publish(subject: reply, payload: Self.controlReply(status: status, body: body))
        }
        let refuse = { (status: Int, code: String, text: String) in
            self.rejected.record(.controlSubject, code)
            self.tempo.recordRefusal(reason: code == "too_large" ? "body_too_large" : code)
            answer(status, Self.errorBody(text, code))
        }
        // The constant refusals: their replies encoded once (issue 20: a
        // flood of them costs no JSON work on the loop).
        let refuseConstant = { (refusal: ConstantRefusal) in
            self.rejected.record(.controlSubject, refusal.code)
            self.tempo.recordRefusal(reason: refusal.code == "too_large" ? "body_too_large" : refusal.code)
            self.requests.publish(subject: reply, payload: refusal.reply)
        }
        guard body.count <= Self.maxControlBytes else { return refuseConstant(Self.refusedTooLarge) }
        if let token, !Self.controlTokenMatches(body, token) { return refuseConstant(Self.refusedUnauthorized) }
        // A NATS with users (this node has an nkey or creds) is shared with
        // consumers who may publish requests (deploy/nats/backbeat.conf):
        // without a token, any of them could change the tempo. Changes over
        // NATS then need -admin-token; an open NATS (make run) is anyone's
        // anyway (docs/security.md, adversarial review F1 of 2026-12-07).
        if token == nil && (!config.natsNkey.isEmpty || !config.natsCreds.isEmpty) {
            return refuseConstant(Self.refusedTokenRequired)
        }
        switch AdminRouter.parseTempoBody([UInt8](body), maxJustificationBytes: 1024) {
        case .failure(let failure):
            refuse(400, failure.code, failure.message)
        case .success(let request):
            tempo.request(request) { decision in
                let (status, body) = Self.answerBody(decision)
                answer(status, body)
            }
        }
    }

    /// A tempo decision as an HTTP status and `POST /tempo` body (control
    /// replies and forwarded answers).
    static func answerBody(_ decision: TempoDecision) -> (Int, Data) {
        switch decision {
        case .scheduled(let change):
            return (202, (try? AdminJSON.encoder().encode(change)) ?? Data())
        case .refused(let status, let code, let text):
            return (status, errorBody(text, code))
        case .redirect(let location):
            return (307, errorBody("the leader is at \(location)", "not_leader"))
        }
    }

    /// A subject we may publish an answer on: 1...`maxReplySubjectBytes`
    /// printable ASCII bytes, no wildcard token, not one of ours.
    static func isValidReplySubject(_ subject: String) -> Bool {
        let bytes = subject.utf8
        guard !bytes.isEmpty, bytes.count <= maxReplySubjectBytes,
            bytes.allSatisfy({ $0 > 0x20 && $0 < 0x7f }),
            !subject.hasPrefix("backbeat.")
        else { return false }
        return !subject.split(separator: ".", omittingEmptySubsequences: false).contains {
            $0 == "*" || $0 == ">" || $0.isEmpty
        }
    }

    /// A control reply: `body` (a JSON object) with `"status"` added, keys sorted.
    static func controlReply(status: Int, body: Data) -> Data {
        var object = (try? JSONSerialization.jsonObject(with: body) as? [String: Any]) ?? [:]
        object["status"] = status
        return (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]))
            ?? Data()
    }

    /// A refusal whose reply never changes, encoded once.
    struct ConstantRefusal {
        let code: String
        let reply: Data
        init(_ status: Int, _ code: String, _ text: String) {
            self.code = code
            reply = PulseNode.controlReply(status: status, body: PulseNode.errorBody(text, code))
        }
    }
    static let refusedTooLarge = ConstantRefusal(
        413, "too_large", "request body is larger than \(maxControlBytes) bytes")
    static let refusedUnauthorized = ConstantRefusal(401, "unauthorized", "missing or invalid \"token\"")
    static let refusedTokenRequired = ConstantRefusal(
        403, "token_required",
        "tempo changes over NATS need -admin-token on the node when NATS has users; use POST /tempo")

    /// Whether the JSON body carries `"token": "<admin token>"` (constant-time
    /// compare). A body that `tokenCandidatesMiss` rules out is refused
    /// without a parse; the rest are parsed.
    static func controlTokenMatches(_ body: Data, _ token: [UInt8]) -> Bool {
        if tokenCandidatesMiss(body, token) { return false }
        guard let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any],
            let given = object["token"] as? String
        else { return false }
        return AdminHTTP.constantTimeEqual(ArraySlice(given.utf8), token)
    }

    /// True when `body` certainly does not carry `"token": "<token>"`, found
    /// without a JSON parse (issue 20: a flood of tokenless tempo requests
    /// cost a `JSONSerialization` parse each). Safe only where the parser
    /// reads UTF-8: no NUL byte and no byte-order mark (it would read
    /// UTF-16/32; such bodies are parsed). There, every string literal is
    /// decoded here, escapes included (`JSONStringScan`), and each one that
    /// decodes to `token` and is followed by JSON whitespace, `:`,
    /// whitespace and a literal is a key whose value is compared with the
    /// token in constant time: none equal, the body cannot match. A literal
    /// the parser refuses (an unknown escape, bad hex digits, no closing
    /// quote) makes the whole body one it refuses: a miss. So a backslash
    /// no longer buys a parse; only a body carrying the token's own value
    /// (or a NUL or byte-order mark) is parsed.
    static func tokenCandidatesMiss(_ body: Data, _ token: [UInt8]) -> Bool {
        body.withUnsafeBytes { raw -> Bool in
            let n = raw.count
            if n > 0, raw[0] == 0xEF || raw[0] == 0xFE || raw[0] == 0xFF { return false }
            for byte in raw where byte == 0 { return false }
            var scan = JSONStringScan(raw)
            let key: [UInt8] = Array("token".utf8)
            while let start = scan.nextString() {
                // nil: a literal the parser refuses, so it refuses the body.
                guard let isKey = scan.decodedEquals(from: start, key) else { return true }
                guard isKey, let value = scan.valueStringAfterColon() else { continue }
                guard let equal = scan.decodedEquals(from: value, token, constantTime: true) else { return true }
                if equal { return false }
            }
            return true  // an unterminated literal included: the parser refuses it
        }
    }

    /// Follows the beat subject (requirements §10): every message is decoded
    /// by the one `BeatFrameDecoder` and judged by the `EchoPolicy`; only an
    /// accepted frame moves the driver's state (`observe`) and is measured
    /// (delivery latency: receive time, taken on the loop right after the
    /// read that brought it, minus its instant, within one beat of now by
    /// the policy). Everything else is counted as
    /// `rejected{surface="beat_subject"}`.
    /// Read on the loop thread in the wake that read the socket (no
    /// delivery thread, no doorway round: one wake per echo), at most
    /// `beatSubjectLimits.maxPerWake` frames judged per wake; a flood beyond
    /// it is dropped unread and counted (`over_wake_budget`,
    /// `pending_limit`), so it cannot stall the loop.
    func subscribeBeats() {
        PulseMetrics.warmUpBeatPath()  // on the loop thread, before the first beat
        var policy = echoPolicy()  // loop thread only: the handler runs there
        var generation = membersGeneration
        nats.subscribeOnLoop(
            subject: config.beatSubject, limits: Self.beatSubjectLimits, rejected: rejected, surface: .beatSubject
        ) { [weak self] payload, receivedNs in
            guard let self else { return }
            if generation != self.membersGeneration {
                // The voters changed: their publishers now, the term fence kept.
                generation = self.membersGeneration
                policy = policy.withPublishers(self.echoPolicy().publishers)
            }
            self.handleEcho(payload, receivedNs: receivedNs, policy: &policy)
        }
    }

    /// Per read event: 32 frames judged (the node's echo, the other
    /// publishers' frames, room for the degraded mode's turns and a burst
    /// of refusals worth counting by reason), 64 queued at most in the
    /// client (64 × the 4 KiB frame limit in bytes).
    static let beatSubjectLimits = NatsLoopSubscription.Limits(
        maxPerWake: 32, pendingMessages: 64, pendingBytes: 64 * Int32(BeatFrameDecoder.maxFrameBytes))

    /// Who may publish: this node alone, or the configured peers.
    func echoPolicy() -> EchoPolicy {
        if kv != nil {  // nats-kv: whoever holds the lease publishes; terms are KV revisions
            return EchoPolicy(clusterId: config.clusterId, publishers: .any, maxTermLead: EchoPolicy.clusterTermLead)
        }
        guard let cluster, !alone else {
            return .singleNode(clusterId: config.clusterId, ownSuffix: beats.ownSuffix)
        }
        return EchoPolicy(
            clusterId: config.clusterId, publishers: cluster.peers.publishers(nodeId: nodeId),
            maxTermLead: EchoPolicy.clusterTermLead)
    }

    /// One message from the beat subject (see `subscribeBeats`).
    func handleEcho(_ payload: UnsafeRawBufferPointer, receivedNs: Int64, policy: inout EchoPolicy) {
        // The node's own last frame, recognised by its bytes (issue 24): the
        // same judgement and the same effects without the parse; decoded as
        // any other frame while a live stream wants it.
        if (admin?.events?.streamCount ?? 0) == 0,
            let own = beats.shell.hearOwn(payload, wallNs: receivedNs, policy: &policy)
        {
            heardOwn(own.verdict, index: own.index, receivedNs: receivedNs)
            return
        }
        let frame: DecodedBeatFrame
        switch BeatFrameDecoder.result(payload) {
        case .failure(let error):
            rejected.record(.beatSubject, error.reason)
            return
        case .success(let decoded):
            frame = decoded
        }
        // Judged and observed by the beat shell (the simulator's nodes hear
        // frames through the same call). Nil: no committed timeline yet
        // (a cluster node still joining), nothing to judge against.
        guard let verdict = beats.shell.hear(frame, wallNs: receivedNs, policy: &policy) else { return }
        if case .reject(let why) = verdict {
            rejected.record(.beatSubject, why.rawValue)
            return
        }
        if handOverPending && frame.hlcSuffix == beats.ownSuffix && frame.beatIndex >= beats.stats.lastBeatIndex {
            handOver()  // our last frame came back: nothing of ours is queued behind a dead link
        }
        if adminTransfer != nil && frame.hlcSuffix == beats.ownSuffix && frame.beatIndex >= beats.stats.lastBeatIndex {
            startAdminTransfer()  // likewise for a transfer asked through the admin API
        }
        // A frame read at the loop's turn (`NatsLink.deferReads`) arrived
        // earlier than `receivedNs`: no delivery sample from it.
        if !nats.readingDeferred {
            metrics.deliveryObserved(latencyNs: receivedNs - beats.timeline.instantNs(ofBeat: frame.beatIndex))
        }
        liveFrameSeen(frame, receivedNs: receivedNs)
    }

    /// The rest of `handleEcho` for the node's own last frame (judged and
    /// observed by `BeatShell.hearOwn`), whose index is all it needs.
    private func heardOwn(_ verdict: EchoVerdict, index: Int64, receivedNs: Int64) {
        if case .reject(let why) = verdict {
            rejected.record(.beatSubject, why.rawValue)
            return
        }
        if handOverPending && index >= beats.stats.lastBeatIndex { handOver() }
        if adminTransfer != nil && index >= beats.stats.lastBeatIndex { startAdminTransfer() }
        if !nats.readingDeferred {
            metrics.deliveryObserved(latencyNs: receivedNs - beats.timeline.instantNs(ofBeat: index))
        }
    }

    static func errorBody(_ message: String, _ code: String) -> Data {
        (try? JSONSerialization.data(
            withJSONObject: ["error": message, "code": code], options: [.sortedKeys, .withoutEscapingSlashes]))
            ?? Data()
    }
}

/// Walks the string literals of a JSON text's UTF-8 bytes without parsing
/// it (`PulseNode.tokenCandidatesMiss`): finds each literal, and compares
/// its decoded contents (escapes resolved, `\\uXXXX` and surrogate pairs
/// as UTF-8, a lone surrogate as U+FFFD) with given bytes. Whatever the
/// parser does with a lone surrogate (refuse the body, or read U+FFFD), a
/// literal that differs here differs there.
struct JSONStringScan {
    private let raw: UnsafeRawBufferPointer
    /// Where the walk is: outside any literal.
    private var at = 0

    init(_ raw: UnsafeRawBufferPointer) { self.raw = raw }

    /// The index just past the opening quote of the next literal, or nil
    /// at the end. Leaves `at` just past its closing quote.
    mutating func nextString() -> Int? {
        while at < raw.count, raw[at] != UInt8(ascii: "\"") { at += 1 }
        guard at < raw.count else { return nil }
        let start = at + 1
        var i = start
        while i < raw.count, raw[i] != UInt8(ascii: "\"") { i += raw[i] == UInt8(ascii: "\\") ? 2 : 1 }
        guard i < raw.count else {
            at = raw.count  // unterminated: the parser refuses the body
            return nil
        }
        at = i + 1
        return start
    }

    /// The literal that follows `:` (JSON whitespace around it) after the
    /// one just walked, walked in turn; nil (nothing walked) when there is none.
    mutating func valueStringAfterColon() -> Int? {
        var k = at
        func skipSpace() {
            while k < raw.count, raw[k] == 0x20 || raw[k] == 0x09 || raw[k] == 0x0A || raw[k] == 0x0D { k += 1 }
        }
        skipSpace()
        guard k < raw.count, raw[k] == UInt8(ascii: ":") else { return nil }
        k += 1
        skipSpace()
        guard k < raw.count, raw[k] == UInt8(ascii: "\"") else { return nil }
        at = k
        return nextString()
    }

    /// Whether the literal starting at `start` decodes to exactly `bytes`;
    /// nil when it has an escape the parser refuses (unknown, bad hex).
    /// With `constantTime`, the walk goes to the literal's end whatever it
    /// finds: its time depends on the literal's length, never on where it
    /// first differs from `bytes`.
    func decodedEquals(from start: Int, _ bytes: [UInt8], constantTime: Bool = false) -> Bool? {
        var i = start
        var matched = 0  // decoded bytes so far
        var differ: UInt8 = 0
        func emit(_ b: UInt8) {
            if matched < bytes.count { differ |= bytes[matched] ^ b } else { differ |= 1 }
            matched += 1
        }
        func hex4(_ at: Int) -> UInt32? {
            guard at + 4 <= raw.count else { return nil }
            var v: UInt32 = 0
            for j in at..<(at + 4) {
                let c = raw[j]
                let d: UInt8
                switch c {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): d = c - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): d = c - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): d = c - UInt8(ascii: "A") + 10
                default: return nil
                }
                v = v << 4 | UInt32(d)
            }
            return v
        }
        while i < raw.count, raw[i] != UInt8(ascii: "\"") {
            if !constantTime, differ != 0 { return false }
            let c = raw[i]
            guard c == UInt8(ascii: "\\") else {
                emit(c)
                i += 1
                continue
            }
            guard i + 1 < raw.count else { return nil }
            switch raw[i + 1] {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): emit(raw[i + 1])
            case UInt8(ascii: "b"): emit(0x08)
            case UInt8(ascii: "f"): emit(0x0C)
            case UInt8(ascii: "n"): emit(0x0A)
            case UInt8(ascii: "r"): emit(0x0D)
            case UInt8(ascii: "t"): emit(0x09)
            case UInt8(ascii: "u"):
                guard var scalar = hex4(i + 2) else { return nil }
                var width = 6
                if scalar >= 0xD800 && scalar < 0xDC00, i + 12 <= raw.count, raw[i + 6] == UInt8(ascii: "\\"),
                    raw[i + 7] == UInt8(ascii: "u"), let low = hex4(i + 8), low >= 0xDC00 && low < 0xE000
                {
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    width = 12
                }
                let unicode = Unicode.Scalar(scalar) ?? "\u{FFFD}"  // a lone surrogate
                for b in UTF8.encode(unicode)! { emit(b) }
                i += width
                continue
            default:
                return nil
            }
            i += 2
        }
        return differ == 0 && matched == bytes.count
    }
}
