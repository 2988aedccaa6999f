// Admin: the endpoints of §6. Maps a parsed request to a response: routing
// (404, 405 with `Allow`), the optional bearer token on state-changing
// requests and on `GET /backup` (401), validation of `POST /tempo` bodies (400, counted through
// the backend) and JSON encoding of the backend's answers. It knows nothing
// about sockets; a connection hands it requests in order, one at a time.
//
// HEAD is served like GET without a body (same status, headers and length).
import CHttpParser
import Foundation

final class AdminRouter {
    let backend: AdminBackend
    let limits: AdminLimits
    private let authToken: [UInt8]?
    /// Refused requests (unauthorized), counted on the `http` surface.
    private let rejected: RejectedInput?
    private let encoder = AdminJSON.encoder()
    /// The names a `Host` may give (AdminBrowserGuard).
    let hosts: AdminHostNames

    /// `authToken` nil or empty: no authentication. `hosts`: see AdminBrowserGuard.
    init(
        backend: AdminBackend, authToken: String?, limits: AdminLimits, rejected: RejectedInput? = nil,
        hosts: AdminHostNames = AdminHostNames(configured: [])
    ) {
        self.rejected = rejected
        self.hosts = hosts
        self.backend = backend
        self.limits = limits
        self.authToken = authToken.flatMap { $0.isEmpty ? nil : Array($0.utf8) }
    }

    private static let get = HTTP_GET.rawValue
    private static let head = HTTP_HEAD.rawValue
    private static let post = HTTP_POST.rawValue
    private static let delete = HTTP_DELETE.rawValue

    /// Paths and the methods each accepts.
    private static let routes: [String: [UInt32]] = [
        "/tempo": [get, head, post],
        "/drift": [get, head],
        "/leader": [get, head],
        "/health": [get, head],
        "/ready": [get, head],
        "/live": [get, head],
        "/metrics": [get, head],
        "/debug/beats": [get, head],
        "/timeline": [get, head],
        // A backup of the committed timeline (Backup/), token-guarded like POST.
        "/backup": [get],
        // The live view (LivePage.swift) and its event stream (AdminEvents.swift;
        // a connection with an event hub streams before reaching the router).
        "/": [get, head],
        "/events": [get],
        // Membership (token-guarded like every change): the voter set, one
        // single-server change at a time, and leadership hand-over.
        "/members": [get, head, post],
        "/leader/transfer": [post],
    ]

    /// `DELETE /members/{name}`: the path prefix (the name follows, percent-encoded).
    private static let memberPrefix = "/members/"

    /// Answers `request` through `respond`, now or later (a tempo change may
    /// wait for a commit), exactly once, on the loop thread.
    /// `screened`: the answer of `screen(request)` when the caller already
    /// asked (the connection does, before opening an event stream).
    func handle(
        _ request: AdminRequest, screened: AdminResponse?? = nil, respond: @escaping (AdminResponse) -> Void
    ) {
        if let refusal = screened ?? screen(request) {
            respond(refusal)
            return
        }
        let isMemberPath = request.path.hasPrefix(Self.memberPrefix) && request.path.count > Self.memberPrefix.count
        guard let allowed = isMemberPath ? [Self.delete] : Self.routes[request.path] else {
            respond(.error(404, code: "not_found", message: "no such endpoint: \(request.path)"))
            return
        }
        guard allowed.contains(request.method) else {
            let allow = allowed.map { String(cString: http_method_str(http_method(rawValue: $0))) }
                .joined(
                    separator: ", ")
            respond(
                .error(
                    405, code: "method_not_allowed",
                    message: "\(request.methodName) is not allowed on \(request.path)",
                    headers: [("Allow", allow)]))
            return
        }
        if request.method == Self.post || request.method == Self.delete || request.path == "/backup" {
            if let refusal = authenticate(request) {
                if request.path == "/tempo" { backend.recordTempoRefusal(reason: "unauthorized") }
                rejected?.record(.http, "unauthorized")
                respond(refusal)
                return
            }
            if request.path == "/backup" {
                switch backend.backup() {
                case .file(let bytes):
                    respond(AdminResponse(status: 200, contentType: AdminResponse.jsonType, body: bytes))
                case .refused(let status, let code, let message):
                    respond(.error(status, code: code, message: message))
                }
                return
            }
            if isMemberPath {
                let encoded = String(request.path.dropFirst(Self.memberPrefix.count))
                guard let name = encoded.removingPercentEncoding, MembershipBody.nameProblem(name) == nil else {
                    respond(.error(400, code: "invalid_name", message: "not a member name: \(encoded)"))
                    return
                }
                backend.changeMembers(.remove(name: name)) { [self] in respond(membership($0)) }
                return
            }
            switch request.path {
            case "/members":
                switch MembershipBody.parseAdd(request.body) {
                case .success(let add):
                    backend.changeMembers(add) { [self] in respond(membership($0)) }
                case .failure(let failure):
                    respond(.error(400, code: failure.code, message: failure.message))
                }
            case "/leader/transfer":
                switch MembershipBody.parseTransfer(request.body) {
                case .success(let name): respond(membership(backend.transferLeadership(to: name)))
                case .failure(let failure): respond(.error(400, code: failure.code, message: failure.message))
                }
            default:
                postTempo(request, respond: respond)
            }
            return
        }
        respond(get(request.path))
    }

    /// A protocol error found before the request reached the router (413 on
    /// `POST /tempo` counts as a refused change).
    func noteProtocolError(status: Int, method: UInt32, path: String?) {
        if status == 413, method == Self.post, path == "/tempo" {
            backend.recordTempoRefusal(reason: "body_too_large")
        }
    }

    // MARK: - GET

    private func get(_ path: String) -> AdminResponse {
        switch path {
        case "/tempo":
            return json(200, backend.tempoStatus())
        case "/drift":
            return json(200, backend.driftStatus())
        case "/leader":
            return json(200, backend.leaderStatus())
        case "/health":
            let components = backend.health()
            let ok = components.values.allSatisfy { $0.status == "ok" }
            return json(ok ? 200 : 503, HealthBody(status: ok ? "ok" : "failing", components: components))
        case "/ready":
            let readiness = backend.readiness()
            return json(
                readiness.ready ? 200 : 503, ReadyBody(ready: readiness.ready, reason: readiness.reason))
        case "/live":
            // Answered by the loop thread itself: that it answers is the proof.
            return AdminResponse(status: 200, contentType: AdminResponse.jsonType, body: Self.liveBody)
        case "/metrics":
            return AdminResponse(
                status: 200, contentType: AdminResponse.metricsType, body: Array(backend.metricsText().utf8)
            )
        case "/debug/beats":
            return json(200, BeatsBody(beats: backend.recentBeats().map(BeatsBody.Beat.init)))
        case "/timeline":
            guard let body = backend.timelineBody() else {
                return .error(503, code: "no_timeline", message: "no committed timeline yet")
            }
            return json(200, body)
        case "/":
            return AdminResponse(
                status: 200, contentType: LivePage.contentType, body: LivePage.bytes, headers: LivePage.headers)
        case "/events":
            return .error(404, code: "not_found", message: "this server has no live event stream")
        case "/members":
            guard let body = backend.members() else {
                return .error(409, code: "not_clustered", message: "a single node has no voter set")
            }
            return json(200, body)
        default:
            return .error(404, code: "not_found", message: "no such endpoint: \(path)")
        }
    }

    /// A 403 for a request a browser must not make (AdminBrowserGuard),
    /// counted; nil when the request may go on. Call once per request.
    func screen(_ request: AdminRequest) -> AdminResponse? {
        guard let refusal = AdminBrowserGuard.check(request, hosts: hosts) else { return nil }
        rejected?.record(.http, refusal.code)
        if request.path == "/tempo" && request.method == Self.post {
            backend.recordTempoRefusal(reason: refusal.code)
        }
        return .error(403, code: refusal.code, message: refusal.message)
    }

    private static let liveBody: [UInt8] = Array(#"{"live":true}"#.utf8)

    private func json<T: Encodable>(_ status: Int, _ value: T) -> AdminResponse {
        do {
            return AdminResponse(
                status: status, contentType: AdminResponse.jsonType, body: Array(try encoder.encode(value)))
        } catch {
            return .error(500, code: "internal", message: "cannot encode the response: \(error)")
        }
    }

    // MARK: - membership

    private func membership(_ answer: MembershipAnswer) -> AdminResponse {
        switch answer {
        case .done(let status, let body):
            return json(status, body)
        case .refused(let status, let code, let message, let leader):
            guard code == "not_leader" else { return .error(status, code: code, message: message) }
            return json(status, NotLeaderBody(error: message, code: code, leader: leader))
        }
    }

    // MARK: - POST /tempo

    private func authenticate(_ request: AdminRequest) -> AdminResponse? {
        guard let token = authToken else { return nil }
        let challenge = [(name: "WWW-Authenticate", value: "Bearer")]
        guard let value = request.authorization else {
            return .error(401, code: "unauthorized", message: "missing bearer token", headers: challenge)
        }
        // "Bearer" is case-insensitive; then one or more spaces, then the token.
        let scheme = Array("bearer".utf8)
        guard value.count > scheme.count,
            zip(value.prefix(scheme.count), scheme).allSatisfy({ ($0 | 0x20) == $1 }),
            value[scheme.count] == UInt8(ascii: " ")
        else {
            return .error(401, code: "unauthorized", message: "missing bearer token", headers: challenge)
        }
        var given = value[(scheme.count + 1)...]
        while given.first == UInt8(ascii: " ") { given = given.dropFirst() }
        while given.last == UInt8(ascii: " ") { given = given.dropLast() }
        guard AdminHTTP.constantTimeEqual(given, token) else {
            return .error(401, code: "unauthorized", message: "invalid bearer token", headers: challenge)
        }
        return nil
    }

    private func postTempo(_ request: AdminRequest, respond: @escaping (AdminResponse) -> Void) {
        let tempoRequest: TempoRequest
        switch Self.parseTempoBody(request.body, maxJustificationBytes: limits.maxJustificationBytes) {
        case .success(let parsed):
            tempoRequest = parsed
        case .failure(let failure):
            backend.recordTempoRefusal(reason: failure.code)
            respond(.error(400, code: failure.code, message: failure.message))
            return
        }
        backend.requestTempoChange(tempoRequest) { [encoder] decision in
            switch decision {
            case .scheduled(let change):
                if let body = try? encoder.encode(change) {
                    respond(
                        AdminResponse(status: 202, contentType: AdminResponse.jsonType, body: Array(body)))
                } else {
                    respond(.error(500, code: "internal", message: "cannot encode the scheduled change"))
                }
            case .refused(let status, let code, let message):
                respond(.error(status, code: code, message: message))
            case .redirect(let location):
                respond(
                    .error(
                        307, code: "not_leader", message: "this node is not the leader; retry at \(location)",
                        headers: [("Location", location)]))
            }
        }
    }

    /// Why a `POST /tempo` body was refused: `malformed_json` or `invalid_field`.
    struct BodyFailure: Error, Equatable {
        var code: String
        var message: String
        static func invalid(_ message: String) -> BodyFailure {
            BodyFailure(code: "invalid_field", message: message)
        }
    }

    /// Validates `{"tempo_bpm": <integer>, "justification": <string>}`.
    /// `justification` may be absent or null (then empty); other keys are ignored.
    static func parseTempoBody(_ body: [UInt8], maxJustificationBytes: Int) -> Result<
        TempoRequest, BodyFailure
    > {
        do {
            let decoded = try JSONDecoder().decode(TempoBody.self, from: Data(body))
            guard decoded.justification.utf8.count <= maxJustificationBytes else {
                return .failure(.invalid("justification must be at most \(maxJustificationBytes) bytes"))
            }
            return .success(
                TempoRequest(tempoBpm: decoded.tempoBpm, justification: decoded.justification))
        } catch let failure as BodyFailure {
            return .failure(failure)
        } catch {
            return .failure(
                BodyFailure(code: "malformed_json", message: "request body is not valid JSON"))
        }
    }

    private struct TempoBody: Decodable {
        var tempoBpm: Int
        var justification: String

        enum Keys: String, CodingKey {
            case tempo_bpm, justification
        }

        init(from decoder: Decoder) throws {
            guard let container = try? decoder.container(keyedBy: Keys.self) else {
                throw BodyFailure(code: "malformed_json", message: "request body must be a JSON object")
            }
            guard container.contains(.tempo_bpm) else {
                throw BodyFailure.invalid("tempo_bpm is required")
            }
            guard let bpm = try? container.decode(Int.self, forKey: .tempo_bpm) else {
                throw BodyFailure.invalid("tempo_bpm must be an integer")
            }
            tempoBpm = bpm
            if !container.contains(.justification)
                || (try? container.decodeNil(forKey: .justification)) == true
            {
                justification = ""
            } else if let text = try? container.decode(String.self, forKey: .justification) {
                justification = text
            } else {
                throw BodyFailure.invalid("justification must be a string")
            }
        }
    }
}

private struct HealthBody: Encodable {
    var status: String
    var components: [String: ComponentHealth]
}

private struct ReadyBody: Encodable {
    var ready: Bool
    var reason: String
}

/// `GET /debug/beats`: the node's own per-beat measurements, oldest first.
/// Stages (wall ns): `wake_ns` timer wake → `decision_ns` spin exit →
/// `write_ns` (= `done_ns`) write(2) returned → `tx_ns` kernel TX timestamp
/// of the frame's last byte (0 without one). `publish_ns` is the honest
/// publish time (requirements §9): `tx_ns`, else `write_ns`; `source` says
/// which ("tx_timestamp", "write", "pending").
private struct BeatsBody: Encodable {
    struct Beat: Encodable {
        var index: Int64
        var scheduled_ns: Int64
        var wake_ns: Int64
        var decision_ns: Int64
        var write_ns: Int64
        var tx_ns: Int64
        var publish_ns: Int64
        var done_ns: Int64
        var source: String
        var published: Bool
        init(_ record: BeatRecord) {
            index = record.index
            scheduled_ns = record.scheduledNs
            wake_ns = record.wakeNs
            decision_ns = record.publishStartNs
            write_ns = record.publishDoneNs
            tx_ns = record.txNs
            publish_ns = record.publishedNs
            done_ns = record.publishDoneNs
            source = record.source.name
            published = record.published
        }
    }
    var beats: [Beat]
}

/// A 503 `not_leader` answer: the error, and the leader's name when known
/// (its admin API is where to retry).
private struct NotLeaderBody: Encodable {
    enum CodingKeys: String, CodingKey { case error, code, leader }
    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(error, forKey: .error)
        try c.encode(code, forKey: .code)
        try c.encode(leader, forKey: .leader)
    }
    var error: String
    var code: String
    var leader: String?
}

/// The bodies of `POST /members` and `POST /leader/transfer`, validated at
/// the boundary (any bytes: never traps): `malformed_json`, `invalid_field`.
public enum MembershipBody {
    /// Why `name` cannot name a member, or nil: 1…253 bytes of printable
    /// ASCII without spaces, `@`, `,` or `/` (names become Raft ids, HLC
    /// suffixes and URL path segments; `-peers` splits on `@` and `,`).
    public static func nameProblem(_ name: String) -> String? {
        guard (1...253).contains(name.utf8.count) else { return "must be 1 to 253 bytes" }
        let ok = name.utf8.allSatisfy {
            $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "@") && $0 != UInt8(ascii: ",") && $0 != UInt8(ascii: "/")
        }
        return ok ? nil : "printable ASCII without spaces, '@', ',' or '/'"
    }

    /// `{"name": "n4", "raft": "host:port"}`; `name` may be absent (then
    /// the address is the name, as in `-peers` without `id@`).
    static func parseAdd(_ body: [UInt8]) -> Result<MembershipRequest, AdminRouter.BodyFailure> {
        guard let object = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] else {
            return .failure(
                AdminRouter.BodyFailure(code: "malformed_json", message: "request body must be a JSON object"))
        }
        guard let raft = object["raft"] as? String else {
            return .failure(.invalid("raft (the new member's Raft address, host:port) is required"))
        }
        guard (try? PeerList.parsePeer(raft)) != nil, !raft.contains("@") else {
            return .failure(.invalid("raft must be host:port (a numeric IPv4 address or a DNS name)"))
        }
        let name: String
        switch object["name"] {
        case nil, is NSNull: name = raft
        case let given as String: name = given
        default: return .failure(.invalid("name must be a string"))
        }
        if let problem = nameProblem(name) { return .failure(.invalid("name \(problem)")) }
        return .success(.add(name: name, raft: raft))
    }

    /// `{"to": "n4"}`, or an empty body / no `to`: the best follower.
    static func parseTransfer(_ body: [UInt8]) -> Result<String?, AdminRouter.BodyFailure> {
        if body.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) { return .success(nil) }
        guard let object = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] else {
            return .failure(
                AdminRouter.BodyFailure(code: "malformed_json", message: "request body must be a JSON object"))
        }
        switch object["to"] {
        case nil, is NSNull: return .success(nil)
        case let name as String:
            if let problem = nameProblem(name) { return .failure(.invalid("to \(problem)")) }
            return .success(name)
        default: return .failure(.invalid("to must be a string"))
        }
    }
}
