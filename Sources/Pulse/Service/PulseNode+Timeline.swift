// Service: the committed timeline for consumers (requirements §12) — the body
// of `GET /timeline`, the request/reply on `backbeat.<cluster>.timeline`
// (answered by every node that has a committed timeline, from its own applied
// state), and the leader's publication there whenever the committed state
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
import CLoop
import Foundation
import PulseCore

/// Hears that the committed timeline changed (a tempo change committed or
/// applied), so that the leader publishes it (loop thread).
protocol TimelineChangeListener: AnyObject {
    func committedTimelineChanged()
}

extension PulseConfig {
    /// Where the timeline is answered and published.
    var timelineSubject: String { "backbeat.\(clusterId).timeline" }
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
        let leader: String? = cluster.map { $0.leaderPeer?.name } ?? nodeId
        return TimelineBody(
            cluster_id: config.clusterId,
            epoch: .init(
                start_beat: epoch.startBeat, start_ns: epoch.startNs,
                start_at: RFC3339.string(unixMs: epoch.startNs / 1_000_000), bpm: epoch.bpm),
            bar: shape.bar, phases: shape.phases, pending: pending, term: cluster?.term ?? beats.term,
            leader: leader, node_id: nodeId, degraded: cluster?.degraded ?? false,
            now_ns: timelineNs(forLocalNs: cloop_realtime_ns()))
    }

    /// Wires the timeline service: answers requests on the timeline subject
    /// and publishes changes heard from the tempo controller.
    func startTimelineService() {
        tempo.timelineListener = self
        nats.subscribe(subject: config.timelineSubject) { [weak self] message in
            // Publications (ours and other nodes') carry no reply subject.
            guard let self, let reply = message.reply else { return }
            self.answerTimelineRequest(size: message.data.count, reply: reply)
        }
    }

    /// One request on the timeline subject (see the file header).
    func answerTimelineRequest(size: Int, reply: String) {
        guard Self.isValidReplySubject(reply) else {
            rejected.record(.timelineSubject, "bad_reply_subject")
            return
        }
        guard size <= Self.maxTimelineRequestBytes else {
            rejected.record(.timelineSubject, "too_large")
            nats.publish(
                subject: reply,
                payload: Self.errorBody("request larger than \(Self.maxTimelineRequestBytes) bytes", "too_large"))
            return
        }
        // A node without a committed timeline stays silent: another answers.
        guard let body = timelineBody(), let data = try? AdminJSON.encoder().encode(body) else { return }
        nats.publish(subject: reply, payload: data)
    }

    /// The leader (or a single node) publishes the timeline on its subject.
    func committedTimelineChanged() {
        guard cluster?.isLeader ?? true, let body = timelineBody(), let data = try? AdminJSON.encoder().encode(body)
        else {
            return
        }
        nats.publish(subject: config.timelineSubject, payload: data)
    }
}
