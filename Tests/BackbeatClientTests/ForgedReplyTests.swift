// Adversarial review F2 (2026-12-07), against a real `pulse` and a real
// nats-server: a consumer that may subscribe to `_INBOX.>` (the shipped
// permissions let it: replies travel there) sees another client's timeline
// reply on `_INBOX.<prefix>.<n>`, and answers that client's next requests,
// `<prefix>.<n+1>`, `<n+2>`, …, with a forged timeline, as fast as it can.
// The C client's own request (its connection's prefix and a counter) takes
// the forgery; BackbeatClient's requests (a random inbox each) never do.
// Under the shipped permissions (deploy/nats/backbeat.conf) the same
// attacker, as the `consumer` user, still reads every reply on `_INBOX.>`
// and may send requests whose answers go to an inbox it names, but every
// forged reply is a "Publish Violation" at the server: neither client is
// fooled, the C client's predictable inboxes included.
import BackbeatClient
import CNats
import Foundation
import Glibc
import PulseCore
import XCTest

final class ForgedReplyTests: XCTestCase {
    private static let cluster = "forgedreply"

    /// The attacker: watches `_INBOX.>` and, from the last reply it saw,
    /// floods forged timelines on the next request ids of that inbox prefix.
    final class Attacker: @unchecked Sendable {
        private let lock = NSLock()
        /// The subjects it answers: the next ids after a counter, else the inbox it saw.
        private var targets: [String] = []
        private var forgedBody = ""
        private var stopped = false
        private var sent = 0
        private var seen = 0
        var forgedSent: Int { lock.withLock { sent } }
        var repliesSeen: Int { lock.withLock { seen } }
        let connection: OpaquePointer
        var sub: OpaquePointer?

        init(url: String) throws {
            var nc: OpaquePointer?
            guard natsConnection_ConnectTo(&nc, url) == NATS_OK, let nc else {
                throw NSError(domain: "connect", code: 1)
            }
            connection = nc
            let me = Unmanaged.passUnretained(self).toOpaque()
            natsConnection_Subscribe(
                &sub, nc, "_INBOX.>",
                { _, _, msg, closure in
                    let attacker = Unmanaged<Attacker>.fromOpaque(closure!).takeUnretainedValue()
                    let subject = String(cString: natsMsg_GetSubject(msg))
                    let body = String(
                        decoding: Data(bytes: natsMsg_GetData(msg), count: Int(natsMsg_GetDataLength(msg))),
                        as: UTF8.self)
                    natsMsg_Destroy(msg)
                    attacker.saw(subject: subject, body: body)
                }, me)
            natsConnection_Flush(nc)
        }

        /// A real reply (not one of ours): aim at the ids after it.
        private func saw(subject: String, body: String) {
            guard !body.contains("\"bpm\":61,") else { return }  // our own forgery echoed back
            lock.lock()
            defer { lock.unlock() }
            seen += 1
            guard let dot = subject.lastIndex(of: ".") else { return }
            // The forged timeline: the real reply with another tempo.
            if let range = body.range(of: #""bpm":600,"#) {
                forgedBody = body.replacingCharacters(in: range, with: #""bpm":61,"#)
            }
            if let n = Int(subject[subject.index(after: dot)...]) {
                targets = (1...3).map { String(subject[...dot]) + String(n + $0) }
            } else {
                targets = [subject]  // nothing to predict: the inbox itself, again
            }
        }

        func stop() {
            lock.lock()
            stopped = true
            lock.unlock()
        }

        /// Floods until `stop()` or `deadline` (monotonic seconds).
        func run(until deadline: Date) {
            while Date() < deadline {
                lock.lock()
                let (aim, body, done) = (targets, forgedBody, stopped)
                lock.unlock()
                if done { return }
                guard !aim.isEmpty, !body.isEmpty else {
                    usleep(100)
                    continue
                }
                for subject in aim { natsConnection_PublishString(connection, subject, body) }
                lock.lock()
                sent += aim.count
                lock.unlock()
                natsConnection_Flush(connection)
            }
        }

        deinit {
            natsSubscription_Unsubscribe(sub)
            natsSubscription_Destroy(sub)
            natsConnection_Destroy(connection)
        }
    }

    /// Whether a request on `subject` is answered within `seconds` (a
    /// "no responders" status comes back at once; retried every 50 ms).
    static func answers(_ connection: OpaquePointer?, _ subject: String, seconds: Double) -> Bool {
        Proc.waitUntil(seconds: seconds) {
            var reply: OpaquePointer?
            guard natsConnection_RequestString(&reply, connection, subject, "{}", 1000) == NATS_OK else {
                usleep(50_000)
                return false
            }
            natsMsg_Destroy(reply)
            return true
        }
    }

    func testAnotherConsumerCannotAnswerTheClientsTimelineRequest() async throws {
        let nats = try NatsServerProcess()
        let dir = Proc.tempDir("forgedreply")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (node, admin) = try PulseNodeProcess.single(cluster: Self.cluster, bpm: 600, nats: nats.url, dir: dir)
        defer { node.stop() }
        XCTAssertTrue(
            Proc.waitUntil(seconds: 10) { Proc.http("GET", port: admin, path: "/timeline")?.status == 200 }, node.log)
        let subject = "backbeat.\(Self.cluster).request.timeline"

        // The control: the C client's own request/reply, under the same attack.
        let attacker = try Attacker(url: nats.url)
        let flood = Thread { attacker.run(until: Date() + 60) }
        flood.start()
        defer { attacker.stop() }
        var victim: OpaquePointer?
        XCTAssertEqual(natsConnection_ConnectTo(&victim, nats.url), NATS_OK)
        defer { natsConnection_Destroy(victim) }
        XCTAssertTrue(Self.answers(victim, subject, seconds: 15), "no responder on \(subject)\n\(node.log)")
        var fooled = 0
        for _ in 0..<50 where fooled == 0 {
            var reply: OpaquePointer?
            if natsConnection_RequestString(&reply, victim, subject, "{}", 2000) == NATS_OK, let reply {
                let body = String(
                    decoding: Data(bytes: natsMsg_GetData(reply), count: Int(natsMsg_GetDataLength(reply))),
                    as: UTF8.self)
                if body.contains(#""bpm":61,"#) { fooled += 1 }
                natsMsg_Destroy(reply)
            }
            usleep(20_000)
        }
        XCTAssertGreaterThan(fooled, 0, "the attack works on a predictable inbox (\(attacker.forgedSent) forged sent)")

        // BackbeatClient: every timeline it fetches under the attack is the cluster's.
        var options = BackbeatClientOptions(url: nats.url, clusterId: Self.cluster)
        options.clockSampleIntervalMs = 0
        let client = try await BackbeatClient.connect(options)
        defer { client.close() }
        let sentBefore = attacker.forgedSent
        for i in 0..<50 {
            let timeline = try client.fetchTimeline()
            XCTAssertEqual(timeline.timeline.epoch.bpm, 600, "fetch \(i): a forged reply was adopted")
            usleep(20_000)
        }
        XCTAssertEqual(client.timeline?.timeline.epoch.bpm, 600)
        XCTAssertGreaterThan(attacker.repliesSeen, 50, "the attacker saw the client's replies")
        XCTAssertGreaterThan(attacker.forgedSent, sentBefore, "the attacker kept forging at the client's inboxes")
    }

    /// Issue 20, the forged-reply attack under `deploy/nats/backbeat.conf`:
    /// what the consumer role allows (reading other consumers' replies,
    /// naming any reply subject on a request) and what it refuses (a
    /// publication on an inbox: the forgery never arrives).
    func testUnderTheShippedPermissionsAConsumerCannotAnswerAnotherConsumersRequest() async throws {
        let dir = Proc.tempDir("forgedreply-perm")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var root = URL(fileURLWithPath: #filePath)
        while root.lastPathComponent != "Tests" { root.deleteLastPathComponent() }
        let conf = root.deletingLastPathComponent().appendingPathComponent("deploy/nats/backbeat.conf").path
        let password = "pw-\(UInt64.random(in: 1...UInt64.max))"
        let serverLog = "\(dir)/nats.log"
        let nats = try NatsServerProcess(
            arguments: ["-c", conf, "-l", serverLog],
            environment: [
                "BACKBEAT_PULSE_NKEY": ClientAuthProcessTests.pulseUser.publicKey,
                "BACKBEAT_CONSUMER_PASSWORD": password,
            ])
        try Data((ClientAuthProcessTests.pulseUser.seed + "\n").utf8).write(to: URL(fileURLWithPath: "\(dir)/pulse.nk"))
        let cluster = "chorus-aus-01"  // the cluster id the file spells out
        let (node, admin) = try PulseNodeProcess.single(
            cluster: cluster, bpm: 600, nats: nats.url, dir: dir, extra: ["-nats-nkey", "\(dir)/pulse.nk"])
        defer { node.stop() }
        XCTAssertTrue(
            Proc.waitUntil(seconds: 15) { Proc.http("GET", port: admin, path: "/timeline")?.status == 200 }, node.log)
        let consumerURL = "nats://consumer:\(password)@127.0.0.1:\(nats.port)"
        let subject = "backbeat.\(cluster).request.timeline"

        let attacker = try Attacker(url: consumerURL)
        let flood = Thread { attacker.run(until: Date() + 60) }
        flood.start()
        defer { attacker.stop() }
        // The C client's predictable inboxes, which an open server let the attacker answer.
        var victim: OpaquePointer?
        XCTAssertEqual(natsConnection_ConnectTo(&victim, consumerURL), NATS_OK)
        defer { natsConnection_Destroy(victim) }
        // /timeline answers before the pulse's request connection is up (a
        // connection of its own, which may retry): wait for a responder.
        XCTAssertTrue(Self.answers(victim, subject, seconds: 15), "no responder on \(subject)\n\(node.log)")
        var answered = 0
        var fooled = 0
        for _ in 0..<30 {
            var reply: OpaquePointer?
            if natsConnection_RequestString(&reply, victim, subject, "{}", 2000) == NATS_OK, let reply {
                let body = String(
                    decoding: Data(bytes: natsMsg_GetData(reply), count: Int(natsMsg_GetDataLength(reply))),
                    as: UTF8.self)
                answered += 1
                if body.contains(#""bpm":61,"#) { fooled += 1 }
                natsMsg_Destroy(reply)
            }
            usleep(20_000)
        }
        XCTAssertEqual(answered, 30, node.log)
        XCTAssertEqual(fooled, 0, "a forged reply reached a consumer's inbox")
        // BackbeatClient as the consumer user, under the same attack.
        var options = BackbeatClientOptions(url: consumerURL, clusterId: cluster)
        options.clockSampleIntervalMs = 0
        let client = try await BackbeatClient.connect(options)
        defer { client.close() }
        for i in 0..<30 {
            let timeline = try client.fetchTimeline()
            XCTAssertEqual(timeline.timeline.epoch.bpm, 600, "fetch \(i): a forged reply was adopted")
            usleep(20_000)
        }
        // What the role allows: reading every consumer's replies, and a
        // request whose answer goes to an inbox the requester names (a
        // genuine reply, sent where the attacker chose).
        let named = "_INBOX.named-\(UInt64.random(in: 1...UInt64.max))"
        var watch: OpaquePointer?
        XCTAssertEqual(natsConnection_SubscribeSync(&watch, victim, named), NATS_OK)
        defer { natsSubscription_Destroy(watch) }
        natsConnection_Flush(victim)
        XCTAssertEqual(natsConnection_PublishRequestString(attacker.connection, subject, named, "{}"), NATS_OK)
        natsConnection_Flush(attacker.connection)
        var redirected: OpaquePointer?
        XCTAssertEqual(
            natsSubscription_NextMsg(&redirected, watch, 5000), NATS_OK, "a genuine reply went to the named inbox")
        if let redirected {
            let body = String(
                decoding: Data(bytes: natsMsg_GetData(redirected), count: Int(natsMsg_GetDataLength(redirected))),
                as: UTF8.self)
            XCTAssertTrue(body.contains(#""bpm":600,"#), body)
            natsMsg_Destroy(redirected)
        }
        XCTAssertGreaterThan(attacker.repliesSeen, 50, "the attacker read the other consumers' replies")
        XCTAssertGreaterThan(attacker.forgedSent, 0, "the attacker forged at the inboxes it saw")
        let log = (try? String(contentsOfFile: serverLog, encoding: .utf8)) ?? ""
        XCTAssertTrue(
            log.contains(#"Publish Violation - User "consumer", Subject "_INBOX."#),
            "the server refused the forgeries\n\(log.suffix(2000))")
        XCTAssertFalse(log.contains(#"Publish Violation - User "consumer", Subject "\#(subject)""#), "requests allowed")
    }
}
