// Admin server protocol behaviour over real HTTP on loopback: keep-alive,
// pipelining (also behind a late tempo reply), limits (431, 413, 400, 408,
// 503), abrupt disconnects, and that `/live` keeps answering through all of it.
import CLoop
import Foundation
import Glibc
import XCTest

@testable import Pulse

final class AdminServerTests: XCTestCase {
    func testKeepAliveServesTwoRequestsOnOneConnection() throws {
        let fixture = try AdminFixture()
        let port = fixture.port
        let result = fixture.client { () -> [RawResponse?] in
            guard let client = try? RawClient(port: port) else { return [] }
            return [
                client.request(httpRequest("GET", "/live")), client.request(httpRequest("GET", "/tempo")),
            ]
        }
        let responses = try XCTUnwrap(result)
        XCTAssertEqual(responses.map { $0?.status }, [200, 200])
        XCTAssertNil(responses[0]?.headers["connection"])
        XCTAssertEqual(responses[1]?.json["current_bpm"] as? Int, 120)
        XCTAssertEqual(fixture.server.stats.accepted, 1, "both on one connection")
    }

    func testPipelinedRequestsAreAnsweredInOrder() throws {
        let fixture = try AdminFixture()
        let port = fixture.port
        let batch =
            httpRequest("GET", "/tempo") + httpRequest("GET", "/live") + httpRequest("GET", "/drift")
        let result = fixture.client { () -> [RawResponse?] in
            guard let client = try? RawClient(port: port), client.send(batch) else { return [] }
            return (0..<3).map { _ in client.readResponse() }
        }
        let responses = try XCTUnwrap(result)
        XCTAssertEqual(responses.count, 3)
        XCTAssertTrue(responses[0]?.keys.contains("current_bpm") ?? false)
        XCTAssertEqual(responses[1]?.keys, ["live"])
        XCTAssertTrue(responses[2]?.keys.contains("timer_drift_percent") ?? false)
    }

    func testLongPipelineIsSpreadOverTurnsAndStaysInOrder() throws {
        var limits = AdminLimits()
        limits.maxRequestsPerEvent = 2
        let fixture = try AdminFixture(limits: limits)
        let port = fixture.port
        let paths = (0..<20).map { $0 % 2 == 0 ? "/live" : "/ready" }
        let batch = paths.map { httpRequest("GET", $0) }.joined()
        let result = fixture.client { () -> [RawResponse?] in
            guard let client = try? RawClient(port: port), client.send(batch) else { return [] }
            return paths.map { _ in client.readResponse() }
        }
        let keys = try XCTUnwrap(result).map { $0?.keys ?? [] }
        XCTAssertEqual(keys, paths.map { $0 == "/live" ? ["live"] : ["ready", "reason"] })
        XCTAssertGreaterThan(fixture.server.stats.deferrals, 0, "at most 2 requests per callback")
    }

    func testLateTempoReplyKeepsLaterResponsesBehindIt() throws {
        let fixture = try AdminFixture()
        fixture.backend.decision = nil  // hold the reply, as a Raft commit would
        let port = fixture.port
        let client = try XCTUnwrap(fixture.client { try? RawClient(port: port) } ?? nil)
        let post = httpRequest("POST", "/tempo", body: #"{"tempo_bpm": 126, "justification": "x"}"#)
        XCTAssertEqual(fixture.client { client.send(post + httpRequest("GET", "/live")) }, true)
        XCTAssertTrue(fixture.turn(until: { fixture.backend.heldReplies.count == 1 }))
        // Nothing may be answered while the tempo reply is outstanding.
        client.setReceiveTimeout(ms: 200)
        let early = fixture.client { client.readResponse() } ?? nil
        XCTAssertNil(early, "GET /live must wait behind the pending POST")
        client.setReceiveTimeout(ms: 5000)

        let scheduled = ScheduledTempoChange(
            tempo_bpm: 126, previous_bpm: 120, apply_at_beat: 24, apply_at: "2025-09-04T12:00:12Z",
            justification: "x")
        fixture.backend.heldReplies[0](.scheduled(scheduled))
        fixture.backend.heldReplies[0](.refused(status: 409, code: "change_pending", message: "twice"))  // ignored
        let responses = fixture.client { [client.readResponse(), client.readResponse()] }
        XCTAssertEqual(responses?.map { $0?.status }, [202, 200])
        XCTAssertEqual(responses?[0]?.json["apply_at_beat"] as? Int, 24)
        XCTAssertEqual(responses?[1]?.keys, ["live"])
    }

    func testClientGoneBeforeTheTempoReplyIsHarmless() throws {
        let fixture = try AdminFixture()
        fixture.backend.decision = nil
        let port = fixture.port
        let post = httpRequest("POST", "/tempo", body: #"{"tempo_bpm": 126, "justification": "x"}"#)
        for abrupt in [true, false] {
            let sent = fixture.client { () -> Bool in
                guard let client = try? RawClient(port: port), client.send(post) else { return false }
                usleep(50_000)
                if abrupt { client.reset() } else { client.close() }
                return true
            }
            XCTAssertEqual(sent, true)
        }
        XCTAssertTrue(fixture.turn(until: { fixture.backend.heldReplies.count == 2 }))
        // The reset one is gone at once; the half-closed one waits for its answer.
        XCTAssertTrue(fixture.turn(until: { fixture.server.openConnections <= 1 }))
        for reply in fixture.backend.heldReplies {
            reply(.refused(status: 503, code: "no_leader", message: "no leader"))
        }
        XCTAssertTrue(
            fixture.turn(until: { fixture.server.openConnections == 0 }),
            "\(fixture.server.openConnections)")
        XCTAssertEqual(fixture.exchange(httpRequest("GET", "/live"))?.status, 200)
    }

    func testConnectionCloseAndHTTP10CloseAfterTheResponse() throws {
        let fixture = try AdminFixture()
        let port = fixture.port
        let requests = [
            httpRequest("GET", "/live", headers: ["Connection: close"]),
            httpRequest("GET", "/live", version: "HTTP/1.0"),
        ]
        for text in requests {
            let result = fixture.client { () -> (RawResponse?, Bool) in
                guard let client = try? RawClient(port: port) else { return (nil, false) }
                let response = client.request(text)
                return (response, client.waitForClose())
            }
            XCTAssertEqual(result?.0?.status, 200, text)
            XCTAssertEqual(result?.0?.headers["connection"], "close", text)
            XCTAssertEqual(result?.1, true, "server closes: \(text)")
        }
        // HTTP/1.0 with keep-alive stays open.
        let kept = fixture.client { () -> [Int?] in
            guard let client = try? RawClient(port: port) else { return [] }
            let text = httpRequest(
                "GET", "/live", headers: ["Connection: keep-alive"], version: "HTTP/1.0")
            return [client.request(text)?.status, client.request(text)?.status]
        }
        XCTAssertEqual(kept, [200, 200])
        XCTAssertTrue(fixture.turn(until: { fixture.server.openConnections == 0 }))
    }

    func testHugeHeaderIs431AndLiveStillAnswers() throws {
        let fixture = try AdminFixture()
        let port = fixture.port
        let huge =
            "GET /live HTTP/1.1\r\nHost: x\r\nX-Filler: " + String(repeating: "a", count: 64 * 1024)
            + "\r\n\r\n"
        let result = fixture.client { () -> RawResponse? in
            guard let client = try? RawClient(port: port) else { return nil }
            client.send(huge)
            return client.readResponse()
        }
        let response = try XCTUnwrap(result ?? nil)
        XCTAssertEqual(response.status, 431)
        XCTAssertEqual(response.json["code"] as? String, "headers_too_large")
        XCTAssertEqual(response.headers["connection"], "close")
        XCTAssertEqual(fixture.exchange(httpRequest("GET", "/live"))?.status, 200)
        XCTAssertTrue(fixture.turn(until: { fixture.server.openConnections == 0 }))
    }

    func testBodyOverTheLimitIs413() throws {
        let fixture = try AdminFixture()
        let big =
            #"{"tempo_bpm": 126, "justification": ""# + String(repeating: "z", count: 5000) + #""}"#
        let declared = try XCTUnwrap(fixture.exchange(httpRequest("POST", "/tempo", body: big)))
        XCTAssertEqual(declared.status, 413)
        XCTAssertEqual(declared.json["code"] as? String, "body_too_large")

        // Chunked: the limit applies to the sum of the chunks.
        let chunk = String(repeating: "q", count: 3000)
        let chunked =
            "POST /tempo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + "bb8\r\n\(chunk)\r\nbb8\r\n\(chunk)\r\n0\r\n\r\n"
        let response = try XCTUnwrap(fixture.exchange(chunked))
        XCTAssertEqual(response.status, 413)
        XCTAssertEqual(fixture.backend.refusals, ["body_too_large", "body_too_large"])
        XCTAssertEqual(fixture.exchange(httpRequest("GET", "/live"))?.status, 200)
    }

    func testGarbageIs400AndClosed() throws {
        let fixture = try AdminFixture()
        let port = fixture.port
        var garbage: [UInt8] = Array("\u{1}\u{2}GARBAGE \0\r\n\r\n".utf8)
        var generator = SystemRandomNumberGenerator()
        garbage += (0..<512).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let result = fixture.client { () -> (RawResponse?, Bool) in
            guard let client = try? RawClient(port: port) else { return (nil, false) }
            client.send(bytes: garbage)
            return (client.readResponse(), client.waitForClose())
        }
        XCTAssertEqual(result?.0?.status, 400)
        XCTAssertEqual(result?.0?.json["code"] as? String, "bad_request")
        XCTAssertEqual(result?.1, true)
        XCTAssertEqual(fixture.exchange(httpRequest("GET", "/live"))?.status, 200)
    }

    func testHalfSentRequestsDoNotBlockLiveAndTimeOutWith408() throws {
        var limits = AdminLimits()
        limits.idleTimeoutNs = 800_000_000
        limits.sweepIntervalNs = 100_000_000
        let fixture = try AdminFixture(limits: limits)
        let port = fixture.port
        let clients = try XCTUnwrap(
            fixture.client { () -> [RawClient] in
                (0..<50).compactMap { _ in
                    guard let client = try? RawClient(port: port) else { return nil }
                    client.send("GET /live HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    return client
                }
            })
        XCTAssertEqual(clients.count, 50)
        XCTAssertTrue(fixture.turn(until: { fixture.server.openConnections == 50 }))

        let started = Date()
        let live = fixture.exchange(httpRequest("GET", "/live"))
        XCTAssertEqual(live?.status, 200)
        XCTAssertLessThan(Date().timeIntervalSince(started), 0.5, "/live answers promptly")

        let outcomes = fixture.client(seconds: 15) { () -> [Int] in
            clients.map { client in
                // 408 then close; the deadline is 0.8 s, the socket timeout 5 s.
                guard let response = client.readResponse() else { return client.waitForClose() ? 0 : -1 }
                return response.status
            }
        }
        XCTAssertEqual(outcomes?.count, 50)
        XCTAssertTrue(outcomes?.allSatisfy { $0 == 408 } ?? false, "\(outcomes ?? [])")
        XCTAssertTrue(fixture.turn(until: { fixture.server.openConnections == 0 }))
        XCTAssertGreaterThanOrEqual(fixture.server.stats.timeouts, 50)
    }

    func testIdleKeepAliveConnectionIsClosedSilently() throws {
        var limits = AdminLimits()
        limits.idleTimeoutNs = 300_000_000
        limits.sweepIntervalNs = 50_000_000
        let fixture = try AdminFixture(limits: limits)
        let port = fixture.port
        let result = fixture.client { () -> (Int?, Bool, Int) in
            guard let client = try? RawClient(port: port) else { return (nil, false, -1) }
            let status = client.request(httpRequest("GET", "/live"))?.status
            let closed = client.waitForClose()
            return (status, closed, client.leftover.count)
        }
        XCTAssertEqual(result?.0, 200)
        XCTAssertEqual(result?.1, true)
        XCTAssertEqual(result?.2, 0, "no 408 without a partial request")
    }

    func testAbruptDisconnectsLeaveNoConnectionsAndLiveAnswers() throws {
        let fixture = try AdminFixture()
        let port = fixture.port
        let made = fixture.client(seconds: 30) { () -> Int in
            var count = 0
            for i in 0..<200 {
                guard let client = try? RawClient(port: port) else { continue }
                switch i % 4 {
                case 0: break
                case 1: client.send("GET /tempo HTTP/1.1\r\nHost:")
                case 2: client.send(httpRequest("POST", "/tempo", body: "{\"tempo_bpm\": 1"))  // half a body
                default:
                    client.send(httpRequest("GET", "/metrics"))  // response never read
                    client.reset()
                }
                client.close()
                count += 1
            }
            return count
        }
        XCTAssertEqual(made, 200)
        XCTAssertEqual(fixture.exchange(httpRequest("GET", "/live"))?.status, 200)
        XCTAssertTrue(
            fixture.turn(until: { fixture.server.openConnections == 0 }, seconds: 5),
            "open: \(fixture.server.openConnections)")
        XCTAssertGreaterThanOrEqual(fixture.server.stats.accepted, 201)
    }

    func testConnectionsOverTheLimitGet503() throws {
        var limits = AdminLimits()
        limits.maxConnections = 4
        let fixture = try AdminFixture(limits: limits)
        let port = fixture.port
        let held = try XCTUnwrap(
            fixture.client { (0..<4).compactMap { _ in try? RawClient(port: port) } })
        XCTAssertEqual(held.count, 4)
        XCTAssertTrue(fixture.turn(until: { fixture.server.openConnections == 4 }))

        let rejected = fixture.client { () -> (RawResponse?, Bool) in
            guard let client = try? RawClient(port: port) else { return (nil, false) }
            return (client.readResponse(), client.waitForClose())
        }
        XCTAssertEqual(rejected?.0?.status, 503)
        XCTAssertEqual(rejected?.0?.json["code"] as? String, "too_many_connections")
        XCTAssertEqual(rejected?.1, true)
        XCTAssertEqual(fixture.server.openConnections, 4)
        XCTAssertEqual(fixture.server.stats.rejectedOverLimit, 1)

        // The held connections still work, and a freed slot is usable again.
        XCTAssertEqual(fixture.client { held[0].request(httpRequest("GET", "/live"))?.status }, 200)
        held[1].close()
        XCTAssertTrue(fixture.turn(until: { fixture.server.openConnections == 3 }))
        XCTAssertEqual(fixture.exchange(httpRequest("GET", "/live"))?.status, 200)
    }

    func testExpectContinueGets100BeforeTheBody() throws {
        let fixture = try AdminFixture()
        let port = fixture.port
        let body = #"{"tempo_bpm": 126, "justification": "x"}"#
        let head =
            "POST /tempo HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\nContent-Type: application/json\r\n"
            + "Content-Length: \(body.utf8.count)\r\n\r\n"
        let result = fixture.client { () -> [Int?] in
            guard let client = try? RawClient(port: port), client.send(head) else { return [] }
            let interim = client.readResponse()?.status
            client.send(body)
            return [interim, client.readResponse()?.status]
        }
        XCTAssertEqual(result, [100, 202])
    }

    func testStopClosesEverythingAndLateRepliesAreIgnored() throws {
        let fixture = try AdminFixture()
        fixture.backend.decision = nil
        let port = fixture.port
        let client = try XCTUnwrap(fixture.client { try? RawClient(port: port) } ?? nil)
        XCTAssertEqual(
            fixture.client { client.send(httpRequest("POST", "/tempo", body: #"{"tempo_bpm": 126}"#)) },
            true)
        XCTAssertTrue(fixture.turn(until: { fixture.backend.heldReplies.count == 1 }))
        fixture.server.stop()
        XCTAssertEqual(fixture.server.openConnections, 0)
        fixture.backend.heldReplies[0](.redirect(location: "http://elsewhere"))  // must not crash
        XCTAssertEqual(fixture.client { client.waitForClose() }, true)
        XCTAssertFalse(Harness.canConnect(port: port))
    }
}
