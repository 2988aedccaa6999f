// Admin JSON bodies: keys sorted at every level, `/` unescaped, the same
// bytes for the same state on every request (docs/decisions.md).
import CHttpParser
import Foundation
import XCTest

@testable import Pulse

final class AdminJSONTests: XCTestCase {
    private func get(_ router: AdminRouter, _ path: String, method: UInt32 = HTTP_GET.rawValue) -> AdminResponse {
        var answer: AdminResponse?
        router.handle(AdminRequest(method: method, path: path, body: [], authorization: nil)) { answer = $0 }
        return answer ?? AdminResponse(status: 0, contentType: nil, body: [])
    }

    private func text(_ response: AdminResponse) -> String { String(decoding: response.body, as: UTF8.self) }

    func testBodiesHaveSortedKeysAndExactBytes() {
        let backend = FakeAdminBackend()
        backend.components = [
            "timeline": ComponentHealth(status: "ok", detail: "epoch 1/2"),
            "nats": ComponentHealth(status: "ok", detail: "nats://127.0.0.1:4222"),
            "loop": ComponentHealth(status: "ok", detail: "turning"),
            "cluster": ComponentHealth(status: "ok", detail: "leader"),
        ]
        let router = AdminRouter(backend: backend, authToken: nil, limits: AdminLimits())
        XCTAssertEqual(
            text(get(router, "/tempo")),
            #"{"can_change":true,"current_bpm":120,"next_change":"2025-09-04T12:00:00Z","pending_bpm":120,"reason":""}"#
        )
        XCTAssertEqual(
            text(get(router, "/drift")),
            #"{"degradation_mode":false,"hlc_drift_seconds":0.001,"last_sync_time":null,"timer_drift_percent":0.5,"within_limits":true}"#
        )
        XCTAssertEqual(
            text(get(router, "/leader")),
            #"{"cluster_size":1,"is_leader":true,"leader":"pulse-a","node_id":"pulse-a","stats":{"commit_index":3,"last_contact_ms":0,"leadership_changes":1,"state":"leader","term":1}}"#
        )
        // Components by name, sorted; slashes as they are.
        XCTAssertEqual(
            text(get(router, "/health")),
            #"{"components":{"cluster":{"detail":"leader","status":"ok"},"loop":{"detail":"turning","status":"ok"},"nats":{"detail":"nats://127.0.0.1:4222","status":"ok"},"timeline":{"detail":"epoch 1/2","status":"ok"}},"status":"ok"}"#
        )
        XCTAssertEqual(text(get(router, "/ready")), #"{"ready":true,"reason":"leader"}"#)
        XCTAssertEqual(
            text(get(router, "/nope/x")), #"{"code":"not_found","error":"no such endpoint: /nope/x"}"#)
        // Same bytes on every request (no per-request key order).
        for path in ["/tempo", "/drift", "/leader", "/health", "/ready"] {
            let first = get(router, path).body
            for _ in 0..<20 { XCTAssertEqual(get(router, path).body, first, path) }
        }
    }

    func testScheduledChangeAndTimelineOrder() throws {
        let change = ScheduledTempoChange(
            tempo_bpm: 126, previous_bpm: 120, apply_at_beat: 16, apply_at: "2025-09-04T12:00:08Z",
            justification: "a/b")
        XCTAssertEqual(
            String(decoding: try AdminJSON.encoder().encode(change), as: UTF8.self),
            #"{"apply_at":"2025-09-04T12:00:08Z","apply_at_beat":16,"justification":"a/b","previous_bpm":120,"tempo_bpm":126}"#
        )
        let timeline = TimelineBody(
            cluster_id: "c/1", epoch: .init(start_beat: 0, start_ns: 1, start_at: "x", bpm: 12), bar: 8,
            phases: ["plan"], pending: nil, term: 2, leader: nil, node_id: "n1", degraded: false, now_ns: 5)
        let keys = FrameChecker.keysInOrder(String(decoding: try AdminJSON.encoder().encode(timeline), as: UTF8.self))
        XCTAssertEqual(
            keys,
            [
                "bar", "cluster_id", "degraded", "epoch", "leader", "node_id", "now_ns", "pending", "phases", "term",
                "type",
            ])
        XCTAssertTrue(String(decoding: try AdminJSON.encoder().encode(timeline), as: UTF8.self).contains(#""c/1""#))
    }
}
