// Cluster: admin requests forwarded from a follower to the leader over the
// Raft transport (issue 20, item 1) — never on a NATS subject, which every
// consumer may read.
//
// A follower that cannot commit a `POST /tempo` sends it to the leader as a
// *forwarded* frame on its Raft connection; the leader answers on its own
// connection to the follower (each connection carries frames one way, as
// Raft messages do). Only members speak there: with mutual TLS the
// certificate binds every frame to a member name; without TLS (loopback
// development, or `-raft-insecure`) a connection proves a member id as Raft
// messages do. The request carries no credential: the follower checked its
// client's (the admin token over HTTP), the leader checks the member.
//
// Frame: RaftTransport's framing with header byte 2 = `RaftTransport.forwardedKind`
// (0 for a Raft message), and this payload:
//
//   [type u8: 1 request, 2 answer][kind u8: 1 tempo][status u16 LE][id u64 LE]
//   [body: JSON, at most `maxBodyBytes`]
//
// A request's body is the `POST /tempo` body (`tempo_bpm`, `justification`);
// an answer's is the HTTP answer's body, with its status. A frame that does
// not decode closes the connection (`bad_forward`); an answer nobody waits
// for, or from another member than the one asked, is ignored and counted
// (`unexpected_answer`). Pending requests are bounded (`maxPending`) and time
// out after `timeoutNs` (503 `outcome_unknown`: the leader may still commit).
// A node of an older version (before 0.2) closes the connection on such a
// frame; the request is then answered 503 after the timeout.
import CLoop
import Crypto
import Foundation
import Logging
import Raft

/// One forwarded request or answer (see the file header).
struct ForwardedMessage: Equatable {
    enum MessageType: UInt8 {
        case request = 1
        case answer = 2
    }
    /// What is forwarded (the admin request it stands for).
    enum Kind: UInt8 {
        case tempo = 1
    }
    var type: MessageType
    var kind: Kind
    /// The HTTP status of an answer (0 in a request).
    var status: UInt16
    /// Chosen by the requester, echoed in the answer.
    var id: UInt64
    var body: [UInt8]

    static let headerBytes = 12
    /// Largest body (a tempo body is under 1.2 KB; as the control subject's limit).
    static let maxBodyBytes = 4096

    func encode() -> [UInt8] {
        var out: [UInt8] = [type.rawValue, kind.rawValue, UInt8(status & 0xff), UInt8(status >> 8)]
        for i in 0..<8 { out.append(UInt8(truncatingIfNeeded: id >> UInt64(8 * i))) }
        out += body
        return out
    }

    /// Decodes a payload; nil when it is not a forwarded message of a known type and kind.
    static func decode(_ bytes: ArraySlice<UInt8>) -> ForwardedMessage? {
        guard bytes.count >= headerBytes, bytes.count - headerBytes <= maxBodyBytes else { return nil }
        let b = Array(bytes)
        guard let type = MessageType(rawValue: b[0]), let kind = Kind(rawValue: b[1]) else { return nil }
        let status = UInt16(b[2]) | UInt16(b[3]) << 8
        var id: UInt64 = 0
        for i in 0..<8 { id |= UInt64(b[4 + i]) << UInt64(8 * i) }
        return ForwardedMessage(type: type, kind: kind, status: status, id: id, body: Array(b[headerBytes...]))
    }
}

/// Receives forwarded frames from proven members (RaftTransport, loop thread).
protocol ForwardInbox: AnyObject {
    func forwardedReceived(_ message: ForwardedMessage, from member: NodeID)
}

/// The part of the Raft transport that carries forwarded frames.
protocol ForwardLink: AnyObject {
    var forwardInbox: ForwardInbox? { get set }
    /// Queues `message` to `member`; false when that member is not connected.
    func sendForwarded(_ message: ForwardedMessage, to member: NodeID) -> Bool
}

/// Both ends of tempo forwarding (loop thread): a follower's requests waiting
/// for the leader's answer, and the leader's service of members' requests.
final class TempoForwarder: ForwardInbox, LoopHandler {
    /// Requests waiting for an answer at once; more are refused (503).
    static let maxPending = 64
    /// How long a forwarded request waits for the leader's answer.
    static let timeoutNs: Int64 = 3_000_000_000

    private struct Pending {
        let leader: NodeID
        let deadlineMonoNs: Int64
        let reply: (TempoDecision) -> Void
    }

    private unowned let loop: EventLoop
    private unowned let link: ForwardLink
    private let rejected: RejectedInput
    private let logger: Logger
    private var pending: [UInt64: Pending] = [:]
    private var nextId = UInt64.random(in: 1...UInt64.max / 2)
    private var timerToken: UInt32 = 0
    private var timerArmed = false
    /// The leader now, if known (not this node).
    var leader: () -> NodeID? = { nil }
    /// The admin token, when one is set and the Raft transport is plain TCP:
    /// a request then ends in HMAC-SHA256(token, id ‖ body), checked by the
    /// leader. Plain TCP cannot tell a member from a local process that
    /// claims a member's id (adversarial review F3, 2026-12-07); the token
    /// can. Over mutual TLS the certificate already names the member (nil).
    var macKey: SymmetricKey?
    /// Leader side: serves a member's tempo request (body as `POST /tempo`).
    var serve: (_ body: [UInt8], _ answer: @escaping (_ status: Int, _ body: Data) -> Void) -> Void = { _, answer in
        answer(503, Data())
    }

    init(loop: EventLoop, link: ForwardLink, rejected: RejectedInput, logger: Logger) throws {
        self.loop = loop
        self.link = link
        self.rejected = rejected
        self.logger = logger
        timerToken = try loop.makeTimer(clock: CLOCK_MONOTONIC, priority: false, handler: self)
        link.forwardInbox = self
    }

    /// Follower side: sends `request` to the leader; `reply` is called once.
    func forward(_ request: TempoRequest, reply: @escaping (TempoDecision) -> Void) {
        guard let leader = leader() else {
            return reply(.refused(status: 503, code: "no_leader", message: "no leader is known"))
        }
        guard pending.count < Self.maxPending else {
            return reply(
                .refused(status: 503, code: "no_leader", message: "too many requests waiting for the leader"))
        }
        let body: [String: Any] = ["tempo_bpm": request.tempoBpm, "justification": request.justification]
        let id = nextId
        nextId &+= 1
        var bytes = [UInt8]((try? JSONSerialization.data(withJSONObject: body)) ?? Data())
        if let macKey { bytes += Self.mac(id: id, body: bytes, key: macKey) }
        let message = ForwardedMessage(type: .request, kind: .tempo, status: 0, id: id, body: bytes)
        guard message.body.count <= ForwardedMessage.maxBodyBytes, link.sendForwarded(message, to: leader) else {
            return reply(.refused(status: 503, code: "no_leader", message: "the leader is not reachable"))
        }
        pending[id] = Pending(leader: leader, deadlineMonoNs: cloop_monotonic_ns() + Self.timeoutNs, reply: reply)
        if !timerArmed {
            timerArmed = (try? loop.armTimer(timerToken, afterNs: 100_000_000, intervalNs: 100_000_000)) != nil
        }
    }

    func forwardedReceived(_ message: ForwardedMessage, from member: NodeID) {
        switch message.type {
        case .request:
            var body = message.body
            if let macKey {
                let macBytes = SHA256.byteCount
                guard body.count > macBytes,
                    HMAC<SHA256>.isValidAuthenticationCode(
                        Array(body.suffix(macBytes)),
                        authenticating: Self.macInput(id: message.id, body: body.dropLast(macBytes)),
                        using: macKey)
                else {
                    rejected.record(.raft, "bad_forward_mac")
                    return answer(
                        message, to: member, status: 401,
                        body: PulseNode.errorBody(
                            "a forwarded request without the admin token's MAC", "unauthorized"))
                }
                body.removeLast(macBytes)
            }
            serve(body) { [weak self] status, body in
                self?.answer(message, to: member, status: status, body: body)
            }
        case .answer:
            guard let waiting = pending[message.id], waiting.leader == member else {
                rejected.record(.raft, "unexpected_answer")
                return
            }
            pending[message.id] = nil
            waiting.reply(Self.decision(status: Int(message.status), body: message.body))
        }
    }

    /// Answers `request` (a body over the frame's limit goes out empty).
    private func answer(_ request: ForwardedMessage, to member: NodeID, status: Int, body: Data) {
        let answer = ForwardedMessage(
            type: .answer, kind: request.kind, status: UInt16(clamping: status), id: request.id,
            body: body.count <= ForwardedMessage.maxBodyBytes ? [UInt8](body) : [])
        if !link.sendForwarded(answer, to: member) {
            logger.info("raft: the answer to a forwarded request could not be sent (member not connected)")
        }
    }

    /// What the MAC covers: the request id (8 bytes, big-endian), then the body.
    static func macInput(id: UInt64, body: ArraySlice<UInt8>) -> [UInt8] {
        withUnsafeBytes(of: id.bigEndian) { Array($0) } + body
    }

    static func mac(id: UInt64, body: [UInt8], key: SymmetricKey) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: macInput(id: id, body: body[...]), using: key))
    }

    /// Times out requests whose answer did not come.
    func loopEvent(token: UInt32, events: UInt32) {
        _ = loop.readTimer(timerToken)
        let now = cloop_monotonic_ns()
        for (id, waiting) in pending where now >= waiting.deadlineMonoNs {
            pending[id] = nil
            waiting.reply(
                .refused(
                    status: 503, code: "outcome_unknown",
                    message: "the leader did not answer in time: the change may still take effect; check GET /tempo"))
        }
        if pending.isEmpty {
            _ = loop.disarmTimer(timerToken)
            timerArmed = false
        }
    }

    /// The decision an answer stands for (status and `POST /tempo` body).
    static func decision(status: Int, body: [UInt8]) -> TempoDecision {
        let object = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] ?? [:]
        if status == 202, let bpm = object["tempo_bpm"] as? Int,
            let atBeat = (object["apply_at_beat"] as? NSNumber)?.int64Value
        {
            return .scheduled(
                ScheduledTempoChange(
                    tempo_bpm: bpm, previous_bpm: object["previous_bpm"] as? Int ?? 0, apply_at_beat: atBeat,
                    apply_at: object["apply_at"] as? String ?? "",
                    justification: object["justification"] as? String ?? ""))
        }
        let known = (400...599).contains(status)
        return .refused(
            status: known ? status : 502, code: object["code"] as? String ?? "refused",
            message: object["error"] as? String ?? "refused by the leader")
    }
}

extension RaftTransport: ForwardLink {}
