// The admin API is not a browser's (issue 20, item 4): the names a `Host` may
// give, what counts as the same origin, and the server refusing a foreign
// `Host` (DNS rebinding), a foreign `Origin` and a non-JSON body on
// state-changing requests with 403 and a counted reason — while the live
// page's own requests (same origin, JSON) still go through.
import Foundation
import XCTest

@testable import Pulse

final class AdminBrowserGuardTests: XCTestCase {
    private let names = AdminHostNames(configured: ["Pulse.Example.COM.", "n1"], hostname: "box7.lab.example")

    func testHostNamesAreTheNodesOwnAndEveryIPLiteral() {
        for host in [
            "127.0.0.1:8080", "127.0.0.1", "localhost", "LOCALHOST:1", "localhost.:8080", "[::1]:8080", "[::1]",
            "10.1.2.3:8081", "box7.lab.example", "box7:9090", "pulse.example.com", "n1:8080",
        ] {
            XCTAssertTrue(names.accepts(host: Array(host.utf8)), host)
        }
        for host in [
            "evil.example", "evil.example:8080", "127.0.0.1.nip.io:8080", "", "localhost:abc", "localhost:123456",
            "a b", "[zz]:1", "[::1", "localhost,evil.example", "::1", "box7.evil.example", "lab", "n1.evil",
            "localhost/x",
        ] {
            XCTAssertFalse(names.accepts(host: Array(host.utf8)), host)
        }
    }

    func testSameOriginIsSchemeHostAndPort() {
        func same(_ origin: String, _ host: String?) -> Bool {
            AdminBrowserGuard.sameOrigin(Array(origin.utf8), host: host.map { Array($0.utf8) })
        }
        XCTAssertTrue(same("http://127.0.0.1:8080", "127.0.0.1:8080"))
        XCTAssertTrue(same("HTTP://LocalHost:8080", "localhost:8080"))
        XCTAssertTrue(same("http://localhost", "localhost:80"))
        XCTAssertTrue(same("https://pulse.example.com", "pulse.example.com"))
        XCTAssertFalse(same("http://attacker.example", "127.0.0.1:8080"))
        XCTAssertFalse(same("http://127.0.0.1:8081", "127.0.0.1:8080"))
        XCTAssertFalse(same("http://localhost", "localhost:443"))
        XCTAssertFalse(same("null", "127.0.0.1:8080"))
        XCTAssertFalse(same("ftp://127.0.0.1:8080", "127.0.0.1:8080"))
        XCTAssertFalse(same("http://127.0.0.1:8080/path", "127.0.0.1:8080"))
        XCTAssertFalse(same("http://127.0.0.1:8080", nil), "an Origin without a Host is no one's")
    }

    func testMediaTypeIgnoresParametersAndCase() {
        XCTAssertEqual(AdminBrowserGuard.mediaType(Array("Application/JSON; charset=utf-8".utf8)), "application/json")
        XCTAssertEqual(AdminBrowserGuard.mediaType(Array("text/plain;charset=UTF-8".utf8)), "text/plain")
        XCTAssertEqual(
            AdminBrowserGuard.mediaType(Array("application/json,text/plain".utf8)), "application/json,text/plain")
    }

    // MARK: the server

    private static let tempoBody = #"{"tempo_bpm":130,"justification":"x"}"#

    /// A raw request with exactly the headers given (and a Content-Length for a body).
    private func raw(_ method: String, _ path: String, headers: [String], body: String = "") -> String {
        var text = "\(method) \(path) HTTP/1.1\r\n"
        for header in headers { text += header + "\r\n" }
        if !body.isEmpty || method == "POST" { text += "Content-Length: \(body.utf8.count)\r\n" }
        return text + "\r\n" + body
    }

    func testForeignHostOriginAndContentTypeAre403AndCounted() throws {
        let rejected = RejectedInput()
        let fixture = try AdminFixture(rejected: rejected)
        let host = "Host: 127.0.0.1:\(fixture.port)"
        func answer(_ text: String) -> (Int, String?) {
            let response = fixture.exchange(text)
            return (response?.status ?? 0, response?.json["code"] as? String)
        }
        // DNS rebinding: the attacker's page is "same origin" with its own name.
        let rebound = "rebind.attacker.example:\(fixture.port)"
        XCTAssertEqual(answer(raw("GET", "/timeline", headers: ["Host: \(rebound)"])).1, "foreign_host")
        XCTAssertEqual(
            answer(
                raw(
                    "POST", "/tempo",
                    headers: ["Host: \(rebound)", "Origin: http://\(rebound)", "Content-Type: application/json"],
                    body: Self.tempoBody)
            ).0, 403)
        // A cross-site form or fetch: text/plain needs no preflight.
        XCTAssertEqual(
            answer(
                raw(
                    "POST", "/tempo",
                    headers: [host, "Origin: http://attacker.example", "Content-Type: text/plain;charset=UTF-8"],
                    body: Self.tempoBody)
            ).1, "foreign_origin")
        XCTAssertEqual(
            answer(raw("POST", "/leader/transfer", headers: [host, "Origin: null"])).1, "foreign_origin")
        XCTAssertEqual(
            answer(raw("DELETE", "/members/n3", headers: [host, "Origin: http://127.0.0.1:1"])).1, "foreign_origin")
        // Same origin (or no Origin), but not JSON: a form post, a Blob without a type.
        XCTAssertEqual(
            answer(
                raw(
                    "POST", "/tempo", headers: [host, "Content-Type: application/x-www-form-urlencoded"],
                    body: Self.tempoBody)
            ).1, "unsupported_content_type")
        XCTAssertEqual(
            answer(raw("POST", "/members", headers: [host], body: #"{"raft":"10.9.9.9:7000"}"#)).1,
            "unsupported_content_type")
        // Two Host headers name no single host.
        XCTAssertEqual(answer(raw("GET", "/health", headers: [host, "Host: evil.example"])).1, "foreign_host")
        XCTAssertEqual(fixture.backend.requests, [], "no refused request reached the backend")
        XCTAssertEqual(rejected.count(.http, reason: "foreign_host"), 3)
        XCTAssertEqual(rejected.count(.http, reason: "foreign_origin"), 3)
        XCTAssertEqual(rejected.count(.http, reason: "unsupported_content_type"), 2)
        XCTAssertEqual(fixture.backend.refusals, ["foreign_host", "foreign_origin", "unsupported_content_type"])

        // What the live page and the CLI send still works.
        let page = answer(
            raw(
                "POST", "/tempo",
                headers: [host, "Origin: http://127.0.0.1:\(fixture.port)", "Content-Type: application/json"],
                body: Self.tempoBody))
        XCTAssertEqual(page.0, 202)
        XCTAssertEqual(answer(raw("GET", "/", headers: ["Host: localhost:\(fixture.port)"])).0, 200)
        XCTAssertEqual(answer(raw("GET", "/health", headers: [])).0, 200, "no Host: not a browser")
        XCTAssertEqual(answer(raw("DELETE", "/members/n3", headers: [host])).0, 409, "CLI: no body, no type")
        XCTAssertEqual(
            answer(httpRequest("POST", "/tempo", body: Self.tempoBody, headers: ["Origin: http://127.0.0.1"])).0, 202)
        XCTAssertEqual(fixture.backend.requests.count, 2)
        XCTAssertEqual(rejected.count(.http), 8, "nothing else counted")
    }

    func testEventStreamRefusesAForeignHost() throws {
        let fixture = try LiveFixture()
        let port = fixture.port
        let box = ResultBox<RawResponse?>()
        let request = raw("GET", "/events", headers: ["Host: rebind.attacker.example:\(port)"])
        Thread {
            let client = try? RawClient(port: port)
            box.set(client?.request(request))
        }.start()
        fixture.turn { box.isSet }
        let response = try XCTUnwrap(box.get() ?? nil)
        XCTAssertEqual(response.status, 403)
        XCTAssertEqual(response.json["code"] as? String, "foreign_host")
        XCTAssertEqual(fixture.events.streamCount, 0, "no stream opened")
        XCTAssertEqual(fixture.rejected.count(.http, reason: "foreign_host"), 1)
    }

    // MARK: configuration

    func testTokenIsMandatoryOffLoopback() throws {
        XCTAssertThrowsError(try PulseCommand.parseConfig(["-admin-bind", "0.0.0.0"], environment: [:])) { error in
            XCTAssertTrue("\(error)".contains("-admin-token"), "\(error)")
            XCTAssertFalse("\(error)".contains("\n"))
        }
        XCTAssertThrowsError(
            try PulseCommand.parseConfig([], environment: ["BACKBEAT_ADMIN_BIND": "10.0.0.5"]))
        XCTAssertNoThrow(
            try PulseCommand.parseConfig(["-admin-bind", "0.0.0.0", "-admin-token", "t"], environment: [:]))
        XCTAssertNoThrow(try PulseCommand.parseConfig(["-admin-bind", "127.0.0.2"], environment: [:]))
        // A cluster on a loopback admin API: no token required (browsers are
        // held off by the checks above; docs/security.md says why).
        XCTAssertNoThrow(
            try PulseCommand.parseConfig(
                ["-peers", "n1@127.0.0.1:7001,n2@127.0.0.1:7002", "-node-id", "n1", "-raft-bind", "127.0.0.1:7001"],
                environment: [:]))
    }

    func testAdminHostsAreNamesWithoutPorts() throws {
        let config = try PulseCommand.parseConfig(
            [], environment: ["BACKBEAT_ADMIN_HOSTS": "pulse.example.com, n1.internal"])
        XCTAssertEqual(config.adminHosts, ["pulse.example.com", "n1.internal"])
        for bad in ["pulse.example.com:8080", "a b", "x/y"] {
            XCTAssertThrowsError(try PulseCommand.parseConfig(["-admin-hosts", bad], environment: [:]), bad)
        }
    }
}
