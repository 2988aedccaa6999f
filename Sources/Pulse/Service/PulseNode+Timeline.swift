// Service: the committed timeline for consumers (requirements §12) — the body
// of `GET /timeline`, the request/reply on `backbeat.<cluster>.request.timeline`
// and `.timeline` (answered by every node that has a committed timeline, from
// its own applied state), and the leader's publication on `.timeline` whenever the committed state
// changes: the epoch is committed or adopted, a tempo change is committed (as
// soon as it is, not only when it applies), a change applies, leadership moves.
//
// Guarantees:
// - Every node derives the same body from the same committed log (epoch,
//   pending change, and the shape: bar and phases, committed with the first
//   epoch; a node whose flags differ from it does not run: PulseNode.shape).
// - Only the leader (or a single node) publishes; followers only answer
//   requests. Nothing here runs on the beat path (hooks run after the beat
//   or on Raft events, on the loop thread).
// - A request is answered only on a valid reply subject
//   (`isValidReplySubject`); other requests are counted as
//   `rejected{surface="timeline_subject"}` (`bad_reply_subject`, `too_large`).
// - Requests are budgeted (issue 20, item 5): the reply is JSON-encoded once
//   per change of what it says (`TimelineReplyCache`; only `now_ns` is
//   written into each reply), the subscription has pending limits and at most
//   `NatsLink.maxInFlightPerSubscription` requests waiting for the loop (more
//   are dropped, counted `over_budget`), and the loop runs at most
//   `EventLoop.maxDoorwayMessagesPerTurn` of them per turn.
// - With `-sign-key`, a signed reply is signed at most once per
//   `TimelineReplyCache.signedReplyReuseNs` (and once per change): under a
//   flood the same signed bytes answer the requests of that millisecond, so
//   a signed reply's `now_ns` is at most that old (docs/protocol.md). The
//   `too_large` refusal is signed once.
import CLoop
import Foundation
import PulseCore

/// Hears that the committed timeline changed (a tempo change committed or
/// applied), so that the leader publishes it (loop thread).
protocol TimelineChangeListener: AnyObject {
    func committedTimelineChanged()
}

extension PulseConfig {
    /// Where the timeline is published (and answered, requirements §12).
    var timelineSubject: String { subjects.timeline }
}

extension PulseNode: TimelineChangeListener {
    /// Largest request body considered (requests carry nothing; `{}` is usual).
    static let maxTimelineRequestBytes = 1024

    /// The committed timeline as this node applies it, or nil before the
    /// cluster's epoch is committed (a joining node).
    func timelineBody() -> TimelineBody? {
        guard beats.started else { return nil }
        let timeline = beats.timeline
        let epoch = timeline.epoch
        let pending = timeline.pendingEpoch.map {
            TimelineBody.Pending(
                at_beat: $0.startBeat, at_ns: $0.startNs, at: RFC3339.string(unixMs: $0.startNs / 1_000_000),
                bpm: $0.bpm)
        }
        var leader: String? = cluster.map { $0.leaderPeer?.name } ?? nodeId
        var term = cluster?.term ?? beats.term
        var degraded = cluster?.degraded ?? false
        if let kv { (term, leader, degraded) = kvTimelineFields(kv) }
        return TimelineBody(
            cluster_id: config.clusterId,
            epoch: .init(
                start_beat: epoch.startBeat, start_ns: epoch.startNs,
                start_at: RFC3339.string(unixMs: epoch.startNs / 1_000_000), bpm: epoch.bpm),
            bar: shape.bar, phases: shape.phases, pending: pending, term: term,
            leader: leader, node_id: nodeId, degraded: degraded,
            now_ns: timelineNs(forLocalNs: cloop_realtime_ns()))
    }

    /// Wires the timeline service: answers requests on the request subject
    /// (the one consumers may publish on) and on the timeline subject
    /// (requirements §12, for servers without permissions), and publishes
    /// changes heard from the tempo controller.
    func startTimelineService() {
        tempo.timelineListener = self
        let cache = TimelineReplyCache(signer: requests.signer)
        // On the requests connection (`requests`): a reply never queues ahead
        // of a frame on the beat's socket (docs/decisions.md).
        for subject in [config.subjects.timelineRequest, config.timelineSubject] {
            requests.subscribe(subject: subject, rejected: rejected, surface: .timelineSubject) { [weak self] message in
                // Publications (ours and other nodes') carry no reply subject.
                guard let self, let reply = message.reply else { return }
                self.answerTimelineRequest(size: message.data.count, reply: reply, cache: cache)
            }
        }
    }

    /// One request on the timeline subject (see the file header).
    func answerTimelineRequest(size: Int, reply: String, cache: TimelineReplyCache) {
        guard Self.isValidReplySubject(reply) else {
            rejected.record(.timelineSubject, "bad_reply_subject")
            return
        }
        guard size <= Self.maxTimelineRequestBytes else {
            rejected.record(.timelineSubject, "too_large")
            requests.publish(subject: reply, payload: cache.tooLarge)
            return
        }
        // A node without a committed timeline stays silent: another answers.
        // The cache's bytes are signed already when the node signs.
        guard let body = timelineBody(), let data = cache.reply(for: body) else { return }
        requests.publish(subject: reply, payload: data)
    }

    /// The leader (or a single node) publishes the timeline on its subject.
    func committedTimelineChanged() {
        guard cluster?.isLeader ?? kv?.isHolder ?? true, let body = timelineBody(),
            let data = try? AdminJSON.encoder().encode(body)
        else {
            return
        }
        nats.publishSigned(subject: config.timelineSubject, payload: data)
    }
}

/// The timeline reply's bytes, JSON-encoded once per change of what it says:
/// everything but `now_ns` (the clock sample each reply carries), whose
/// digits are written between the cached bytes around it. The result is
/// byte for byte what `AdminJSON` encodes for the whole body.
///
/// With a signer (`-sign-key`) the signature covers `now_ns`, so it cannot
/// be made once per change: the signed reply is kept and given to every
/// request within `signedReplyReuseNs` of its signing (a flood's requests
/// share one Ed25519 signature a millisecond instead of one each), and made
/// again after that or after a change. At the usual rates (a request every
/// few seconds per consumer) every reply is signed afresh.
final class TimelineReplyCache {
    /// How long a signed reply answers further requests: the age its
    /// `now_ns` may have when sent (documented in docs/protocol.md).
    static let signedReplyReuseNs: Int64 = 1_000_000
    let signer: PublicationSigner?
    /// The last signed reply and when (monotonic ns) it was signed.
    private var signed: Data?
    private var signedAtMonoNs: Int64 = 0
    /// Signatures made for replies (the `too_large` refusal's aside).
    private(set) var signatures = 0
    /// The 413 answer to an oversized request, encoded (and signed) once.
    private(set) lazy var tooLarge: Data = {
        let body = PulseNode.errorBody(
            "request larger than \(PulseNode.maxTimelineRequestBytes) bytes", "too_large")
        return signer.map { $0.sign(body) } ?? body
    }()

    init(signer: PublicationSigner? = nil) { self.signer = signer }

    /// The body last encoded, with `now_ns` 0.
    private var key: TimelineBody?
    /// The encoding up to and including `"now_ns":`, and after its value.
    private var head: [UInt8] = []
    private var tail: [UInt8] = []
    /// Encodings made (a change of the committed state, leader or term).
    private(set) var encodes = 0

    private static let marker = Array("\"now_ns\":0".utf8)

    /// The reply for `body` (signed when there is a signer) at monotonic
    /// time `nowMonoNs`; nil only if it cannot be encoded.
    func reply(for body: TimelineBody, nowMonoNs: Int64 = cloop_monotonic_ns()) -> Data? {
        var stripped = body
        stripped.now_ns = 0
        if stripped != key {
            signed = nil
            guard let encoded = try? AdminJSON.encoder().encode(stripped) else { return nil }
            let bytes = [UInt8](encoded)
            // The key is unique: a quote inside a JSON string is escaped.
            guard let at = Self.find(Self.marker, in: bytes) else { return nil }
            head = Array(bytes[..<(at + Self.marker.count - 1)])
            tail = Array(bytes[(at + Self.marker.count)...])
            key = stripped
            encodes += 1
        }
        if let signed, nowMonoNs &- signedAtMonoNs < Self.signedReplyReuseNs { return signed }
        var out = Data(capacity: head.count + 20 + tail.count + PublicationSignature.overheadBytes)
        out.append(contentsOf: head)
        out.append(contentsOf: String(body.now_ns).utf8)
        out.append(contentsOf: tail)
        guard let signer else { return out }
        let fresh = signer.sign(out)
        (signed, signedAtMonoNs) = (fresh, nowMonoNs)
        signatures += 1
        return fresh
    }

    private static func find(_ needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        for i in 0...(haystack.count - needle.count) where haystack[i..<(i + needle.count)].elementsEqual(needle) {
            return i
        }
        return nil
    }
}
