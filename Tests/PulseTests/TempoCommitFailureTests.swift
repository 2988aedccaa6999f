// The replies to a tempo commit that failed (TempoController.commitFailure):
// nats-kv's `change_pending` — the holder's last change is stored but not yet
// watched (PulsePolicy/KVTempoWrite.swift) — is a 409 with the same JSON
// error body as every other admin refusal.
import CHttpParser
import Foundation
import XCTest

@testable import Pulse

final class TempoCommitFailureTests: XCTestCase {
    func testEachCommitFailureHasItsStatus() {
        XCTAssertEqual(TempoController.commitFailure("change_pending", atBeat: 12).status, 409)
        XCTAssertEqual(TempoController.commitFailure("record_too_large", atBeat: 12).status, 400)
        XCTAssertEqual(TempoController.commitFailure("outcome_unknown", atBeat: 12).status, 503)
        XCTAssertEqual(TempoController.commitFailure("no_leader", atBeat: 12).status, 503)
        XCTAssertTrue(TempoController.commitFailure("outcome_unknown", atBeat: 12).message.contains("beat 12"))
        XCTAssertTrue(TempoController.commitFailure("change_pending", atBeat: 12).message.contains("not settled yet"))
    }

    func testChangePendingHasTheAdminErrorShape() throws {
        func post(_ code: String) throws -> (status: Int, body: [String: Any]) {
            let backend = FakeAdminBackend()
            let (status, message) = TempoController.commitFailure(code, atBeat: 12)
            backend.decision = .refused(status: status, code: code, message: message)
            let router = AdminRouter(backend: backend, authToken: nil, limits: AdminLimits())
            var answer: AdminResponse?
            router.handle(
                AdminRequest(
                    method: HTTP_POST.rawValue, path: "/tempo", body: Array(#"{"tempo_bpm":126}"#.utf8),
                    authorization: nil, contentType: Array("application/json".utf8))
            ) { answer = $0 }
            let response = try XCTUnwrap(answer)
            let body = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any])
            return (response.status, body)
        }
        let pending = try post("change_pending")
        let unknown = try post("outcome_unknown")
        XCTAssertEqual(pending.status, 409)
        XCTAssertEqual(unknown.status, 503)
        XCTAssertEqual(Set(pending.body.keys), Set(unknown.body.keys), "the same error shape")
        XCTAssertEqual(pending.body["code"] as? String, "change_pending")
        XCTAssertEqual(
            pending.body["error"] as? String, TempoController.commitFailure("change_pending", atBeat: 12).message)
    }
}
