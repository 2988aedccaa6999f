// A real NATS cluster (issue 14): three nats-servers joined by routes on
// loopback, configs written here with free ports. The node is given two of
// them as a comma-separated -nats list; a subscriber sits on the third.
// Killing the server the node is connected to moves it to another one: the
// frames resume within a bound, and the subscriber sees no duplicate and no
// backwards index.
import Foundation
import Glibc
import XCTest

/// One nats-server of a routed cluster, from a config file.
final class ClusterNatsServer {
    let clientPort: Int
    let routePort: Int
    let process = Process()
    var url: String { "nats://127.0.0.1:\(clientPort)" }

    /// `noAdvertise`: clients are not told about the other servers;
    /// `jetStream`: a clustered JetStream with its store under `dir`.
    init(
        name: String, clientPort: Int, routePort: Int, routes: [Int], dir: String, noAdvertise: Bool = false,
        jetStream: Bool = false
    ) throws {
        self.clientPort = clientPort
        self.routePort = routePort
        let config = """
            server_name: \(name)
            listen: 127.0.0.1:\(clientPort)
            \(jetStream ? "jetstream { store_dir: \"\(dir)/\(name)-js\" }" : "")
            cluster {
              name: backbeat-test
              listen: 127.0.0.1:\(routePort)
              no_advertise: \(noAdvertise)
              routes: [\(routes.map { "nats-route://127.0.0.1:\($0)" }.joined(separator: ", "))]
            }
            """
        let path = "\(dir)/\(name).conf"
        try config.write(toFile: path, atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: NatsServer.binary)
        process.arguments = ["-c", path]
        FileManager.default.createFile(atPath: "\(dir)/\(name).log", contents: nil)
        let log = FileHandle(forWritingAtPath: "\(dir)/\(name).log")!
        process.standardOutput = log
        process.standardError = log
        try process.run()
        guard Harness.waitUntil(seconds: 10, { Harness.canConnect(port: clientPort) }) else {
            throw NSError(domain: "nats-server \(name) did not start on \(clientPort)", code: 1)
        }
    }

    func kill() {
        guard process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    deinit { kill() }
}

final class NatsClusterTests: XCTestCase {
    /// The value of `name=` in a text log line (up to the next space).
    static func field(_ name: String, in line: Substring) -> String? {
        guard let range = line.range(of: " \(name)=") else { return nil }
        return line[range.upperBound...].split(separator: " ").first.map(String.init)
    }

    func testNodeFailsOverToAnotherServerWithoutDuplicatesOrBackwardsIndices() throws {
        let started = Date()
        let dir = Harness.tempDir("natscluster")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let clientPorts = (0..<3).map { _ in Harness.freePort() }
        let routePorts = (0..<3).map { _ in Harness.freePort() }
        let names = ["A", "B", "C"]
        let servers = try (0..<3).map { i in
            try ClusterNatsServer(
                name: names[i], clientPort: clientPorts[i], routePort: routePorts[i],
                routes: routePorts.enumerated().filter { $0.offset != i }.map(\.element), dir: dir)
        }
        let subscriber = try Subscriber(url: servers[2].url, subject: "backbeat.routed.beat")
        let node = try PulseProcess(
            arguments: [
                "-bootstrap", "-bpm", "600", "-max-bpm", "600", "-cluster", "routed", "-node-id", "routed-1",
                "-nats", "\(servers[0].url),\(servers[1].url)", "-data-dir", dir + "/data", "-admin-port", "0",
            ], logPath: dir + "/node.log")
        // Frames published on A or B reach C: the routes are up.
        XCTAssertTrue(subscriber.wait(for: 10, seconds: 15), "frames cross the routes\n" + node.log)

        // The server the node says it is connected to.
        let connectedLine = node.log.split(separator: "\n").last { $0.contains("NATS connected") } ?? ""
        let connectedURL = Self.field("url", in: connectedLine)
        let victim = try XCTUnwrap(
            (0..<2).first { connectedURL == servers[$0].url },
            "the connect log names the server actually connected to: \(connectedLine)\n" + node.log)
        XCTAssertTrue(connectedLine.contains("configured="), "the log shows the configured list too")
        let beforeKill = subscriber.count
        let killedNs = cloop_realtime_ns_for_tests()
        servers[victim].kill()
        XCTAssertTrue(
            subscriber.wait(for: beforeKill + 20, seconds: 10), "frames resume through the other server\n" + node.log)
        let frames = subscriber.received
        // The gap: from the last frame received before the kill to the first after it.
        let lastBefore = frames.last { $0.receivedNs < killedNs }?.receivedNs ?? killedNs
        let firstAfter = frames.first { $0.receivedNs >= killedNs }?.receivedNs ?? Int64.max
        let gapMs = Double(firstAfter - lastBefore) / 1e6
        print("nats cluster failover: gap \(gapMs) ms between frames across the kill of server \(names[victim])")
        XCTAssertLessThan(gapMs, 2000, "frames resumed within 2 s of the kill\n" + node.log)
        let reconnectedLine = node.log.split(separator: "\n").last { $0.contains("NATS reconnected") } ?? ""
        // Any surviving server will do: the node also follows the servers
        // the cluster gossiped (here C, which it was never given).
        let reconnectedURL = Self.field("url", in: reconnectedLine)
        XCTAssertTrue(
            servers.indices.contains { $0 != victim && servers[$0].url == reconnectedURL },
            "the reconnect log names the surviving server actually connected to\n" + node.log)
        XCTAssertEqual(node.stop(), 0)
        let indices = NatsProcessSupport.indices(subscriber.received)
        XCTAssertEqual(Set(indices).count, indices.count, "no duplicate index")
        for (a, b) in zip(indices, indices.dropFirst()) { XCTAssertGreaterThan(b, a, "index \(b) after \(a)") }
        XCTAssertLessThan(Date().timeIntervalSince(started), 40, "bounded")
    }
}
