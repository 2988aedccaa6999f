// Issue 20, item 4, against the real `pulse` with the README's defaults (no
// admin token, 127.0.0.1): the exact attacks — a cross-origin `text/plain`
// POST from a browser tab and a DNS-rebinding page whose `Host` is its own
// name — are refused with 403, counted on /metrics, and change nothing; the
// live page's own request (same origin, JSON) still changes the tempo.
import Foundation
import XCTest

final class AdminBrowserProcessTests: XCTestCase {
    private func send(_ port: Int, _ text: String) -> RawResponse? {
        guard let client = try? RawClient(port: port) else { return nil }
        return client.request(text)
    }

    private func post(_ port: Int, _ path: String, headers: [String], body: String) -> RawResponse? {
        var text = "POST \(path) HTTP/1.1\r\n"
        for header in headers { text += header + "\r\n" }
        return send(port, text + "Content-Length: \(body.utf8.count)\r\n\r\n" + body)
    }

    func testCrossOriginAndReboundRequestsAreRefusedAndTheLivePageStillWorks() throws {
        let nats = try NatsServer()
        let dir = Harness.tempDir("browser")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let port = Harness.freePort()
        let node = try PulseProcess(
            arguments: [
                "-bootstrap", "-bpm", "120", "-max-bpm", "240", "-cluster", "browser", "-node-id", "n-br0",
                "-nats", nats.url, "-data-dir", dir + "/data", "-admin-port", "\(port)",
                "-admin-hosts", "pulse.test",
            ], logPath: dir + "/node.log")
        defer { node.stop() }
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) { self.send(port, httpRequest("GET", "/timeline"))?.status == 200 },
            node.log)
        let tempo = #"{"tempo_bpm":130,"justification":"from a web page"}"#
        let own = "127.0.0.1:\(port)"

        // A tab on attacker.example posts a form-like text/plain body: no preflight needed.
        let crossSite = post(
            port, "/tempo",
            headers: ["Host: \(own)", "Origin: http://attacker.example", "Content-Type: text/plain;charset=UTF-8"],
            body: tempo)
        XCTAssertEqual(crossSite?.status, 403, node.log)
        XCTAssertEqual(crossSite?.json["code"] as? String, "foreign_origin")
        let members = post(
            port, "/members",
            headers: ["Host: \(own)", "Origin: http://attacker.example", "Content-Type: text/plain"],
            body: #"{"name":"x1","raft":"10.255.0.1:7000"}"#)
        XCTAssertEqual(members?.status, 403)
        // The same page after its name was re-pointed at 127.0.0.1 (DNS rebinding).
        let rebound = "rebind.attacker.example:\(port)"
        let rebind = post(
            port, "/tempo",
            headers: ["Host: \(rebound)", "Origin: http://\(rebound)", "Content-Type: application/json"], body: tempo)
        XCTAssertEqual(rebind?.status, 403)
        XCTAssertEqual(rebind?.json["code"] as? String, "foreign_host")
        XCTAssertEqual(send(port, "GET /timeline HTTP/1.1\r\nHost: \(rebound)\r\n\r\n")?.status, 403)

        let status = try XCTUnwrap(send(port, httpRequest("GET", "/tempo")))
        XCTAssertEqual(status.json["pending_bpm"] as? Int, 120, "nothing changed: \(status.text)")
        let metrics = send(port, httpRequest("GET", "/metrics"))?.text ?? ""
        for (reason, count) in [("foreign_origin", 2), ("foreign_host", 2)] {
            let counted = metrics.split(separator: "\n").contains {
                $0.hasPrefix("backbeat_rejected_input_total{") && $0.contains(#"surface="http""#)
                    && $0.contains("reason=\"\(reason)\"") && $0.hasSuffix(" \(count)")
            }
            XCTAssertTrue(counted, "\(reason) counted \(count) times in:\n\(metrics)")
        }

        // A configured name is the node's own; the live page's POST is same-origin JSON.
        XCTAssertEqual(send(port, "GET /timeline HTTP/1.1\r\nHost: pulse.test:\(port)\r\n\r\n")?.status, 200)
        let page = post(
            port, "/tempo",
            headers: ["Host: \(own)", "Origin: http://\(own)", "Content-Type: application/json"], body: tempo)
        XCTAssertEqual(page?.status, 202, page?.text ?? node.log)
    }

    func testOffLoopbackWithoutATokenRefusesToStart() throws {
        let result = try runPulse(["-admin-bind", "0.0.0.0", "-admin-port", "0", "-nats", "nats://127.0.0.1:1"])
        XCTAssertEqual(result.status, 2, result.stderr)
        XCTAssertEqual(result.stderr.split(separator: "\n").count, 1, result.stderr)
        XCTAssertTrue(result.stderr.contains("-admin-token"), result.stderr)
    }
}
