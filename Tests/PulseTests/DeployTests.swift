// The Grafana dashboard against reality: a live node scraped by a real
// Prometheus (Debian package), and every panel's query evaluated by it. A
// query that names a metric the node does not export, or that does not
// evaluate, fails here, so no panel is broken on arrival.
import Foundation
import Glibc
import XCTest

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

final class DeployTests: XCTestCase {
    static var repoRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
    }

    /// Every (panel title, expression) of the dashboards in deploy/grafana/dashboards.
    static func dashboardQueries() throws -> [(String, String)] {
        let dir = repoRoot.appendingPathComponent("deploy/grafana/dashboards")
        var queries: [(String, String)] = []
        for file in try FileManager.default.contentsOfDirectory(atPath: dir.path) where file.hasSuffix(".json") {
            let data = try Data(contentsOf: dir.appendingPathComponent(file))
            let dashboard = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
            for panel in try XCTUnwrap(dashboard["panels"] as? [[String: Any]]) {
                let title = panel["title"] as? String ?? "?"
                for target in try XCTUnwrap(panel["targets"] as? [[String: Any]], title) {
                    queries.append((title, try XCTUnwrap(target["expr"] as? String, title)))
                }
            }
        }
        return queries
    }

    func testEveryPanelQueryEvaluatesAgainstALiveNode() throws {
        let prometheus = try XCTUnwrap(
            ["/usr/bin/prometheus", "/usr/local/bin/prometheus"].first {
                FileManager.default.isExecutableFile(atPath: $0)
            },
            "prometheus (Debian package prometheus) must be installed")
        let queries = try Self.dashboardQueries()
        XCTAssertGreaterThanOrEqual(queries.count, 10)
        let nats = try NatsServer()
        let dir = Harness.tempDir("dashboard")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let adminPort = Harness.freePort()
        let node = try PulseProcess(
            arguments: [
                "-bootstrap", "-bpm", "600", "-max-bpm", "600", "-cluster", "dash", "-node-id", "n1", "-nats",
                nats.url, "-data-dir", dir + "/data", "-admin-port", "\(adminPort)", "-admin-token", "t0ken",
            ], logPath: dir + "/node.log")
        defer { node.stop() }
        XCTAssertTrue(Harness.waitUntil(seconds: 10) { Harness.canConnect(port: adminPort) }, node.log)
        // A refused request, so the lazily created refusal series exist too.
        let refused = try RawClient(port: adminPort, timeoutMs: 2000).request(
            httpRequest("POST", "/tempo", body: #"{"tempo_bpm":590}"#))
        XCTAssertEqual(refused?.status, 401)

        let promPort = Harness.freePort()
        try """
        global: { scrape_interval: 1s, evaluation_interval: 1s }
        scrape_configs:
          - job_name: pulse
            static_configs: [{ targets: ["127.0.0.1:\(adminPort)"] }]
        """.write(toFile: dir + "/prometheus.yml", atomically: true, encoding: .utf8)
        let server = Process()
        server.executableURL = URL(fileURLWithPath: prometheus)
        server.arguments = [
            "--config.file=\(dir)/prometheus.yml", "--storage.tsdb.path=\(dir)/tsdb",
            "--web.listen-address=127.0.0.1:\(promPort)",
        ]
        server.standardOutput = FileHandle.nullDevice
        server.standardError = FileHandle.nullDevice
        try server.run()
        defer {
            server.terminate()
            server.waitUntilExit()
        }
        // Wait until a rate over a few scrapes has data.
        var failures: [String] = []
        let ready = Harness.waitUntil(seconds: 30) {
            failures = queries.compactMap { title, expr in
                let result = self.query(port: promPort, expr)
                return result.isEmpty ? nil : "\(title): \(expr): \(result)"
            }
            return failures.isEmpty
        }
        XCTAssertTrue(ready, failures.joined(separator: "\n") + "\n" + node.log)
    }

    /// Empty when `expr` evaluates to at least one series; else why not.
    private func query(port: Int, _ expr: String) -> String {
        var components = URLComponents(string: "http://127.0.0.1:\(port)/api/v1/query")!
        components.queryItems = [URLQueryItem(name: "query", value: expr)]
        let url = components.url!
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var body = Data()
        URLSession.shared.dataTask(with: url) { data, _, _ in
            body = data ?? Data()
            done.signal()
        }.resume()
        guard done.wait(timeout: .now() + 5) == .success else { return "no answer" }
        guard let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any],
            object["status"] as? String == "success", let data = object["data"] as? [String: Any],
            let result = data["result"] as? [Any]
        else { return "not a successful query: '\(String(decoding: body, as: UTF8.self))'" }
        return result.isEmpty ? "no series" : ""
    }
}
