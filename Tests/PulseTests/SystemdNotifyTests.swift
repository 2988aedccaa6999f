// systemd's Type=notify: with NOTIFY_SOCKET set, the node sends READY=1 as
// one datagram once it is ready (a committed timeline, NATS, a leader), and
// not before: a node without NATS never says it.
import Foundation
import Glibc
import XCTest

@testable import Pulse

final class SystemdNotifyTests: XCTestCase {
    /// A datagram socket bound at `path`, as systemd listens.
    private func listen(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        XCTAssertEqual(rc, 0, String(cString: strerror(errno)))
        var timeout = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    /// The first datagram within `seconds`, or nil.
    private func receive(_ fd: Int32, seconds: Double) -> String? {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n > 0 { return String(decoding: buffer[0..<n], as: UTF8.self) }
        }
        return nil
    }

    func testReadyIsSentOnceTheNodeIsReadyAndNotBefore() throws {
        let dir = Harness.tempDir("notify")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socketPath = dir + "/notify.sock"
        let fd = try listen(socketPath)
        defer { close(fd) }
        let admin = Harness.freePort()
        // No NATS yet: bootstrapped, but not ready, so no READY=1.
        let natsPort = Harness.freePort()
        let node = try PulseProcess(
            arguments: [
                "-bootstrap=true", "-bpm", "600", "-max-bpm", "600", "-cluster", "notify", "-node-id", "n1", "-nats",
                "nats://127.0.0.1:\(natsPort)", "-data-dir", dir + "/n1", "-admin-port", "\(admin)",
            ], logPath: dir + "/n1.log", environment: ["NOTIFY_SOCKET": socketPath])
        defer { node.stop(timeout: 5) }
        XCTAssertTrue(Harness.waitUntil(seconds: 10) { Harness.canConnect(port: admin) }, node.log)
        XCTAssertNil(receive(fd, seconds: 2), "READY=1 before NATS is there\n" + node.log)
        let nats = try NatsServer(port: natsPort)
        defer { nats.stop() }
        let message = try XCTUnwrap(receive(fd, seconds: 15), "no READY=1 once ready\n" + node.log)
        XCTAssertTrue(message.hasPrefix("READY=1\n"), message)
        XCTAssertTrue(message.contains("MAINPID=\(node.process.processIdentifier)\n"), message)
        let ready = (try? RawClient(port: admin, timeoutMs: 1000))?.request(httpRequest("GET", "/ready"))
        XCTAssertEqual(ready?.status, 200, "notified only when /ready says so")
        XCTAssertNil(receive(fd, seconds: 0.5), "notified once")
    }

    func testAbstractSocketAndBadPaths() {
        XCTAssertFalse(SystemdNotify.send("READY=1\n", to: ""))
        XCTAssertFalse(SystemdNotify.send("READY=1\n", to: String(repeating: "x", count: 200)))
        XCTAssertFalse(SystemdNotify.send("READY=1\n", to: "/nonexistent/dir/sock"))
        // An abstract socket (systemd's own are paths, but sd_notify allows '@').
        let name = "@backbeat-notify-test-\(getpid())"
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(name.utf8)
        bytes[0] = 0
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sa_family_t>.size + bytes.count))
            }
        }
        XCTAssertEqual(rc, 0)
        XCTAssertTrue(SystemdNotify.send("READY=1\n", to: name))
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
        XCTAssertEqual(n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : nil, "READY=1\n")
    }
}
