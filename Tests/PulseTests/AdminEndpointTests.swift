// Admin endpoints over real HTTP on loopback: each endpoint's status, content
// type and exact JSON keys; POST /tempo validation, the backend's refusals and
// redirects, the bearer token; 404 and 405.
import Foundation
import XCTest

@testable import Pulse

final class AdminEndpointTests: XCTestCase {
    private let json = "application/json"

    func testTempoGetHasTheDocumentedKeysWithExplicitNulls() throws {
        let fixture = try AdminFixture()
        let response = try XCTUnwrap(fixture.exchange(httpRequest("GET", "/tempo")))
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(response.contentType, json)
        XCTAssertEqual(
            response.keys,
            ["current_bpm", "pending_bpm", "can_change", "next_change", "reason"])
        XCTAssertEqual(response.json["current_bpm"] as? Int, 120)
        XCTAssertFalse(response.json.keys.contains("pending_at_beat"), "exactly the documented keys")
    }

    func testDriftLeaderLiveMetricsShapes() throws {
        let fixture = try AdminFixture()
        let drift = try XCTUnwrap(fixture.exchange(httpRequest("GET", "/drift")))
        XCTAssertEqual(drift.status, 200)
        XCTAssertEqual(drift.contentType, json)
        XCTAssertEqual(
            drift.keys,
            [
                "timer_drift_percent", "hlc_drift_seconds", "last_sync_time", "degradation_mode",
                "within_limits",
            ])
        XCTAssertTrue(drift.json["last_sync_time"] is NSNull)

        let leader = try XCTUnwrap(fixture.exchange(httpRequest("GET", "/leader")))
        XCTAssertEqual(leader.status, 200)
        XCTAssertEqual(leader.contentType, json)
        XCTAssertEqual(leader.keys, ["node_id", "is_leader", "leader", "cluster_size", "stats"])
        let stats = try XCTUnwrap(leader.json["stats"] as? [String: Any])
        XCTAssertEqual(
            Set(stats.keys), ["term", "commit_index", "last_contact_ms", "leadership_changes", "state"])

        let live = try XCTUnwrap(fixture.exchange(httpRequest("GET", "/live")))
        XCTAssertEqual(live.status, 200)
        XCTAssertEqual(live.contentType, json)
        XCTAssertEqual(live.keys, ["live"])
        XCTAssertEqual(live.json["live"] as? Bool, true)

        let metrics = try XCTUnwrap(fixture.exchange(httpRequest("GET", "/metrics")))
        XCTAssertEqual(metrics.status, 200)
        XCTAssertEqual(metrics.contentType, "text/plain; version=0.0.4; charset=utf-8")
        XCTAssertEqual(metrics.text, fixture.backend.metrics)
    }

    func testHealthIs200OnlyWhenEveryComponentIsOk() throws {
        let fixture = try AdminFixture()
        let ok = try XCTUnwrap(fixture.exchange(httpRequest("GET", "/health")))
        XCTAssertEqual(ok.status, 200)
        XCTAssertEqual(ok.contentType, json)
        XCTAssertEqual(ok.keys, ["status", "components"])
        XCTAssertEqual(ok.json["status"] as? String, "ok")
        let components = try XCTUnwrap(ok.json["components"] as? [String: [String: Any]])
        XCTAssertEqual(Set(components.keys), ["loop", "nats"])
        XCTAssertEqual(Set(components["nats"]!.keys), ["status", "detail"])

        fixture.backend.components["nats"] = ComponentHealth(status: "failing", detail: "disconnected")
        let failing = try XCTUnwrap(fixture.exchange(httpRequest("GET", "/health")))
        XCTAssertEqual(failing.status, 503)
        XCTAssertEqual(failing.json["status"] as? String, "failing")
    }

    func testReadyFollowsTheBackend() throws {
        let fixture = try AdminFixture()
        let ready = try XCTUnwrap(fixture.exchange(httpRequest("GET", "/ready")))
        XCTAssertEqual(ready.status, 200)
        XCTAssertEqual(ready.contentType, json)
        XCTAssertEqual(ready.keys, ["ready", "reason"])
        XCTAssertEqual(ready.json["ready"] as? Bool, true)

        fixture.backend.ready = (false, "NATS not connected")
        let notReady = try XCTUnwrap(fixture.exchange(httpRequest("GET", "/ready")))
        XCTAssertEqual(notReady.status, 503)
        XCTAssertEqual(notReady.json["ready"] as? Bool, false)
        XCTAssertEqual(notReady.json["reason"] as? String, "NATS not connected")
    }

    func testHeadIsGetWithoutBody() throws {
        let fixture = try AdminFixture()
        let port = fixture.port
        let result = fixture.client { () -> (RawResponse?, RawResponse?) in
            guard let client = try? RawClient(port: port) else { return (nil, nil) }
            let head = client.request(httpRequest("HEAD", "/live"), head: true)
            // The next response on the same connection parses cleanly only if HEAD sent no body.
            let get = client.request(httpRequest("GET", "/live"))
            return (head, get)
        }
        let head = try XCTUnwrap(result?.0)
        let get = try XCTUnwrap(result?.1)
        XCTAssertEqual(head.status, 200)
        XCTAssertEqual(head.headers["content-length"], "\(get.body.count)")
        XCTAssertEqual(get.json["live"] as? Bool, true)
    }

    // MARK: - POST /tempo

    func testPostTempoScheduled202() throws {
        let fixture = try AdminFixture()
        let response = try XCTUnwrap(
            fixture.exchange(
                httpRequest("POST", "/tempo", body: #"{"tempo_bpm": 126, "justification": "load"}"#)))
        XCTAssertEqual(response.status, 202)
        XCTAssertEqual(response.contentType, json)
        XCTAssertEqual(
            response.keys, ["tempo_bpm", "previous_bpm", "apply_at_beat", "apply_at", "justification"])
        XCTAssertEqual(response.json["apply_at_beat"] as? Int, 16)
        XCTAssertEqual(fixture.backend.requests, [TempoRequest(tempoBpm: 126, justification: "load")])
        XCTAssertEqual(fixture.backend.refusals, [])
    }

    func testPostTempoBadBodiesAre400AndCounted() throws {
        let fixture = try AdminFixture()
        let long = String(repeating: "x", count: 1025)
        let cases: [(body: String, code: String)] = [
            ("{not json", "malformed_json"),
            ("", "malformed_json"),
            ("[126]", "malformed_json"),
            (#"{"justification": "load"}"#, "invalid_field"),
            (#"{"tempo_bpm": "126", "justification": "load"}"#, "invalid_field"),
            (#"{"tempo_bpm": true, "justification": "load"}"#, "invalid_field"),
            (#"{"tempo_bpm": 126.5, "justification": "load"}"#, "invalid_field"),
            (#"{"tempo_bpm": null}"#, "invalid_field"),
            (#"{"tempo_bpm": 126, "justification": 5}"#, "invalid_field"),
            (#"{"tempo_bpm": 126, "justification": "\#(long)"}"#, "invalid_field"),
        ]
        for (body, code) in cases {
            let response = try XCTUnwrap(
                fixture.exchange(httpRequest("POST", "/tempo", body: body)), body)
            XCTAssertEqual(response.status, 400, body)
            XCTAssertEqual(response.contentType, json, body)
            XCTAssertEqual(response.keys, ["error", "code"], body)
            XCTAssertEqual(response.json["code"] as? String, code, body)
        }
        XCTAssertEqual(fixture.backend.refusals, cases.map(\.code))
        XCTAssertEqual(fixture.backend.requests, [], "the backend never sees an invalid request")

        // A justification of exactly the limit is fine; a missing one is empty.
        let exact = String(repeating: "y", count: 1024)
        let ok = fixture.exchange(
            httpRequest("POST", "/tempo", body: #"{"tempo_bpm": 126, "justification": "\#(exact)"}"#))
        XCTAssertEqual(ok?.status, 202)
        let bare = fixture.exchange(httpRequest("POST", "/tempo", body: #"{"tempo_bpm": 125}"#))
        XCTAssertEqual(bare?.status, 202)
        XCTAssertEqual(fixture.backend.requests.last, TempoRequest(tempoBpm: 125, justification: ""))
    }

    func testBackendRefusalsPassThrough() throws {
        let fixture = try AdminFixture()
        let refusals: [(Int, String)] = [
            (409, "change_pending"), (422, "delta_too_large"), (503, "no_leader"),
        ]
        for (status, code) in refusals {
            fixture.backend.decision = .refused(status: status, code: code, message: "refused: \(code)")
            let response = try XCTUnwrap(
                fixture.exchange(
                    httpRequest("POST", "/tempo", body: #"{"tempo_bpm": 200, "justification": "x"}"#)))
            XCTAssertEqual(response.status, status)
            XCTAssertEqual(response.contentType, json)
            XCTAssertEqual(response.keys, ["error", "code"])
            XCTAssertEqual(response.json["code"] as? String, code)
            XCTAssertEqual(response.json["error"] as? String, "refused: \(code)")
        }
        XCTAssertEqual(fixture.backend.refusals, [], "the backend counts its own refusals")
    }

    func testRedirectIs307WithLocation() throws {
        let fixture = try AdminFixture()
        fixture.backend.decision = .redirect(location: "http://127.0.0.1:8081/tempo")
        let response = try XCTUnwrap(
            fixture.exchange(
                httpRequest("POST", "/tempo", body: #"{"tempo_bpm": 126, "justification": "x"}"#)))
        XCTAssertEqual(response.status, 307)
        XCTAssertEqual(response.headers["location"], "http://127.0.0.1:8081/tempo")
        XCTAssertEqual(response.keys, ["error", "code"])
    }

    func testBearerTokenGuardsPost() throws {
        let fixture = try AdminFixture(authToken: "s3cret-token")
        let body = #"{"tempo_bpm": 126, "justification": "x"}"#
        let missing = try XCTUnwrap(fixture.exchange(httpRequest("POST", "/tempo", body: body)))
        XCTAssertEqual(missing.status, 401)
        XCTAssertEqual(missing.headers["www-authenticate"], "Bearer")
        XCTAssertEqual(missing.json["code"] as? String, "unauthorized")
        XCTAssertEqual(missing.keys, ["error", "code"])

        for wrong in [
            "Bearer s3cret-tokem", "Bearer s3cret-token-longer", "Bearer s3cret", "Basic s3cret-token",
            "Bearer",
        ] {
            let response = fixture.exchange(
                httpRequest("POST", "/tempo", body: body, headers: ["Authorization: \(wrong)"]))
            XCTAssertEqual(response?.status, 401, wrong)
        }
        XCTAssertEqual(fixture.backend.requests, [])

        let right = fixture.exchange(
            httpRequest("POST", "/tempo", body: body, headers: ["Authorization: bearer s3cret-token"]))
        XCTAssertEqual(right?.status, 202)
        XCTAssertEqual(fixture.backend.requests.count, 1)
        // Reads need no token.
        XCTAssertEqual(fixture.exchange(httpRequest("GET", "/tempo"))?.status, 200)
    }

    func testUnknownPathIs404AndWrongMethodIs405WithAllow() throws {
        let fixture = try AdminFixture()
        let missing = try XCTUnwrap(fixture.exchange(httpRequest("GET", "/nope")))
        XCTAssertEqual(missing.status, 404)
        XCTAssertEqual(missing.contentType, json)
        XCTAssertEqual(missing.json["code"] as? String, "not_found")

        let deleteTempo = try XCTUnwrap(fixture.exchange(httpRequest("DELETE", "/tempo")))
        XCTAssertEqual(deleteTempo.status, 405)
        XCTAssertEqual(deleteTempo.headers["allow"], "GET, HEAD, POST")
        XCTAssertEqual(deleteTempo.keys, ["error", "code"])

        let postLive = try XCTUnwrap(fixture.exchange(httpRequest("POST", "/live", body: "{}")))
        XCTAssertEqual(postLive.status, 405)
        XCTAssertEqual(postLive.headers["allow"], "GET, HEAD")

        // The query string is not part of the path.
        XCTAssertEqual(fixture.exchange(httpRequest("GET", "/live?probe=1"))?.status, 200)
    }
}

/// Pure helpers of the admin HTTP layer.
final class AdminHTTPHelperTests: XCTestCase {
    func testRequestTargetPaths() {
        func path(_ target: String) -> String? { AdminHTTP.path(ofTarget: Array(target.utf8)) }
        XCTAssertEqual(path("/tempo"), "/tempo")
        XCTAssertEqual(path("/tempo?x=1#f"), "/tempo")
        XCTAssertEqual(path("http://127.0.0.1:8080/live?x"), "/live")
        XCTAssertEqual(path("HTTPS://host"), "/")
        XCTAssertNil(path("tempo"))
        XCTAssertNil(path(""))
    }

    func testConstantTimeEqual() {
        let token = Array("abc".utf8)
        XCTAssertTrue(AdminHTTP.constantTimeEqual(Array("abc".utf8)[...], token))
        XCTAssertFalse(AdminHTTP.constantTimeEqual(Array("abd".utf8)[...], token))
        XCTAssertFalse(AdminHTTP.constantTimeEqual(Array("ab".utf8)[...], token))
        XCTAssertFalse(AdminHTTP.constantTimeEqual(Array("abcd".utf8)[...], token))
        XCTAssertFalse(AdminHTTP.constantTimeEqual(Array("".utf8)[...], token))
    }

    func testSerializedResponseHeaders() {
        var bytes: [UInt8] = []
        AdminHTTP.serialize(
            .error(431, code: "headers_too_large", message: "big"), keepAlive: false, http10: false,
            headOnly: false,
            into: &bytes)
        let text = String(decoding: bytes, as: UTF8.self)
        XCTAssertTrue(text.hasPrefix("HTTP/1.1 431 Request Header Fields Too Large\r\n"), text)
        XCTAssertTrue(text.contains("Content-Type: application/json\r\n"))
        XCTAssertTrue(text.contains("Connection: close\r\n"))
        let parts = text.components(separatedBy: "\r\n\r\n")
        XCTAssertEqual(parts.count, 2)
        let body = try? JSONSerialization.jsonObject(with: Data(parts.last!.utf8)) as? [String: String]
        XCTAssertEqual(body, ["error": "big", "code": "headers_too_large"])
        XCTAssertTrue(text.contains("Content-Length: \(parts.last!.utf8.count)\r\n"))
    }
}
