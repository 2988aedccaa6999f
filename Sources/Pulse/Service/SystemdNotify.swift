// Service/SystemdNotify.swift — owns systemd's readiness protocol for
// `Type=notify` units (deploy/systemd/pulse@.service): when $NOTIFY_SOCKET
// is set, a helper thread asks the node's own `GET /ready` on loopback every
// 200 ms and, the first time it answers 200 (NATS connected, a leader known,
// a committed timeline, publishing healthy), sends `READY=1` with a STATUS
// line as one datagram to that socket (sd_notify's wire format: a plain
// AF_UNIX datagram, a path or `@` for the abstract namespace; no
// libsystemd). Asking over HTTP keeps the loop's state on the loop thread.
// The thread starts before the loop thread is pinned, so it runs on the
// process's CPU set at normal priority, and ends once it has notified.
import Foundation
import Glibc

enum SystemdNotify {
    /// Sends `state` (`KEY=value` lines) to the socket at `path`. False when
    /// the path is unusable or the send fails.
    @discardableResult
    static func send(_ state: String, to path: String) -> Bool {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
        let abstract = bytes[0] == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            if !abstract { raw[bytes.count] = 0 }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (abstract ? 0 : 1))
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let message = Array(state.utf8)
        let sent = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { target in
                message.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), target, length) }
            }
        }
        return sent == message.count
    }

    /// With $NOTIFY_SOCKET set and a fixed admin port, starts the thread
    /// that sends READY=1 once `/ready` answers 200; otherwise nothing.
    static func notifyWhenReady(
        config: PulseConfig, environment: [String: String], logger: @escaping @Sendable (String) -> Void
    ) {
        guard let path = environment["NOTIFY_SOCKET"], !path.isEmpty else { return }
        guard config.adminPort != 0 else {
            logger("NOTIFY_SOCKET is set but -admin-port is 0: readiness cannot be asked; set a port for Type=notify")
            return
        }
        let host = config.adminBind == "0.0.0.0" ? "127.0.0.1" : config.adminBind
        let url = "http://\(host):\(config.adminPort)"
        let thread = Thread {
            let settings = AdminClient.Settings(token: nil, timeoutMs: 1000)
            while true {
                if let answer = try? AdminClient.get(url: url, path: "/ready", settings), answer.status == 200 {
                    let sent = send(
                        "READY=1\nSTATUS=ready: a committed timeline, a leader, NATS connected\nMAINPID=\(getpid())\n",
                        to: path)
                    if !sent { logger("could not notify systemd at \(path): \(String(cString: strerror(errno)))") }
                    return
                }
                usleep(200_000)
            }
        }
        thread.name = "sd-notify"
        thread.start()
    }
}
