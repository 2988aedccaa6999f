// Issue 20, the subject split, with real processes: a real nats-server runs
// the shipped deploy/nats/backbeat.conf and a pulse connects with its nkey
// seed. Each grant holds (the pulse publishes frames, the timeline and the
// tempo announcement; a consumer asks for the timeline and a tempo change on
// the request subjects and gets its answers) and each denial holds (a
// consumer's publication on .beat, .timeline or .control is a permissions
// violation at the server and never delivered; a consumer cannot read the
// request subjects, so never another's token), while the pulse keeps
// publishing every beat.
import Foundation
import PulseCore
import XCTest

final class NatsPermissionsProcessTests: XCTestCase {
    func testShippedPermissionsGrantEachRoleItsSubjectsAndNothingElse() throws {
        let dir = Harness.tempDir("natsperm")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let nats = try NatsAuthTests.SecuredNats(dir: dir)
        let seedPath = "\(dir)/pulse.nk"
        try Data("\(nats.pulse.seed)\n".utf8).write(to: URL(fileURLWithPath: seedPath))
        let token = "admin-token-\(UInt64.random(in: 1...UInt64.max))"
        let admin = Harness.freePort()
        // The cluster id deploy/nats/backbeat.conf spells out.
        let subjects = BackbeatSubjects(clusterId: "chorus-aus-01")
        let pulse = try PulseProcess(
            arguments: [
                "-bootstrap", "-bpm", "600", "-max-bpm", "600", "-cluster", subjects.clusterId, "-nats", nats.url,
                "-nats-nkey", seedPath, "-data-dir", "\(dir)/data", "-admin-port", "\(admin)", "-admin-token", token,
            ], logPath: "\(dir)/pulse.log")
        defer { pulse.stop() }
        // A consumer watching everything it may: the cluster's subjects and the inboxes.
        let watcher = try Subscriber(url: nats.consumerURL, subject: "backbeat.\(subjects.clusterId).>")
        let inboxes = try Subscriber(url: nats.consumerURL, subject: "_INBOX.>")
        XCTAssertTrue(
            Harness.waitUntil(seconds: 15) { watcher.received.filter { $0.subject == subjects.beat }.count >= 3 },
            "the pulse publishes frames with its nkey\n\(pulse.log)")

        // Grants of the consumer role: a timeline request and a tempo request, answered.
        let consumer = try RawNats(url: nats.consumerURL)
        func ask(_ subject: String, _ body: String) -> [String: Any] {
            guard let reply = consumer.request(subject, Array(body.utf8)) else { return [:] }
            return (try? JSONSerialization.jsonObject(with: Data(reply)) as? [String: Any]) ?? [:]
        }
        let timeline = ask(subjects.timelineRequest, "{}")
        XCTAssertEqual(timeline["type"] as? String, "backbeat.timeline.v1", "\(timeline)\n\(pulse.log)")
        XCTAssertEqual(timeline["cluster_id"] as? String, subjects.clusterId)
        let withoutToken = ask(subjects.controlRequest, #"{"tempo_bpm": 560, "justification": "no token"}"#)
        XCTAssertEqual(withoutToken["status"] as? Int, 401, "\(withoutToken)")
        let accepted = ask(
            subjects.controlRequest, #"{"tempo_bpm": 560, "justification": "granted", "token": "\#(token)"}"#)
        XCTAssertEqual(accepted["status"] as? Int, 202, "\(accepted)\n\(pulse.log)")
        XCTAssertEqual(accepted["tempo_bpm"] as? Int, 560, "\(accepted)")

        // Grants of the pulse role: the timeline publication (the change
        // committed) and the announcement (applied), each on its own subject.
        func seen(on subject: String, type: String, bpm: Int) -> Bool {
            watcher.received.contains {
                let o = $0.object
                guard $0.subject == subject, o["type"] as? String == type else { return false }
                return (o["tempo_bpm"] as? Int ?? (o["pending"] as? [String: Any])?["bpm"] as? Int) == bpm
            }
        }
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) {
                seen(on: subjects.timeline, type: "backbeat.timeline.v1", bpm: 560)
                    && seen(on: subjects.control, type: "backbeat.tempo_change.v1", bpm: 560)
                    && seen(on: subjects.beat, type: "backbeat.beatframe.v1", bpm: 560)
            }, "timeline publication, announcement and frames at the new tempo\n\(pulse.log)")

        // Denials of the consumer role: forgeries on the pulse's subjects (and
        // a request on .timeline, which the node would answer on an open server).
        let marker = "forged-\(UInt64.random(in: 1...UInt64.max))"
        for subject in [subjects.beat, subjects.timeline, subjects.control] {
            XCTAssertTrue(consumer.publish(subject, Array(#"{"type":"backbeat.beatframe.v1","x":"\#(marker)"}"#.utf8)))
            XCTAssertTrue(consumer.publish(subject, Array(#"{"x":"\#(marker)"}"#.utf8), reply: "_INBOX.\(marker)"))
        }
        consumer.flush()
        // Nor may it read the request subjects: an explicit subscription is refused.
        let spy = try Subscriber(url: nats.consumerURL, subject: subjects.controlRequest)
        let refused = ask(
            subjects.controlRequest, #"{"tempo_bpm": 1000, "justification": "unread", "token": "\#(token)"}"#)
        XCTAssertEqual(refused["code"] as? String, "out_of_range", "answered, so it was published: \(refused)")
        let framesBefore = watcher.received.filter { $0.subject == subjects.beat }.count
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) {
                watcher.received.filter { $0.subject == subjects.beat }.count >= framesBefore + 5
            }, "frames keep arriving\n\(pulse.log)")

        let serverLog = (try? String(contentsOfFile: nats.logPath, encoding: .utf8)) ?? ""
        for subject in [subjects.beat, subjects.timeline, subjects.control] {
            XCTAssertTrue(
                serverLog.contains(#"Publish Violation - User "consumer", Subject "\#(subject)""#),
                "no violation for \(subject)\n\(serverLog)")
        }
        XCTAssertTrue(
            serverLog.contains(#"Subscription Violation - User "consumer", Subject "\#(subjects.controlRequest)""#),
            serverLog)
        let violations = serverLog.split(separator: "\n").filter { $0.contains("Violation") }
        XCTAssertTrue(
            violations.allSatisfy { $0.contains(#"User "consumer""#) }, "the pulse hit a denial\n\(serverLog)")
        let everything = watcher.received + inboxes.received + spy.received
        XCTAssertFalse(everything.contains { $0.text.contains(marker) }, "a forgery was delivered")
        XCTAssertFalse(everything.contains { $0.text.contains(token) }, "a consumer read the admin token")
        XCTAssertFalse(
            watcher.received.contains { $0.subject.hasPrefix("backbeat.\(subjects.clusterId).request.") },
            "a consumer read a request")
        XCTAssertGreaterThan(inboxes.count, 0, "the replies travel on the inboxes consumers may read")

        // The pulse worked end to end under that configuration.
        let metrics = NatsProcessSupport.get(port: admin, path: "/metrics")?.text ?? ""
        // Both connections (beat and requests) under the pulse role's grants.
        for connection in ["beat", "requests"] {
            XCTAssertEqual(
                NatsProcessSupport.metric(#"backbeat_nats_connected{connection="\#(connection)"}"#, in: metrics), 1,
                metrics)
        }
        XCTAssertEqual(NatsProcessSupport.metric("backbeat_beats_missed_total", in: metrics), 0, metrics)
        XCTAssertFalse(pulse.log.contains("NATS error"), pulse.log)
    }

    /// Adversarial review F1 (2026-12-07): under the shipped permissions a
    /// consumer may publish tempo requests, so a pulse on a NATS with users
    /// and no admin token refuses every change asked over NATS (403
    /// `token_required`) and the tempo stays as it was.
    func testWithoutATokenNoConsumerChangesTheTempoOverNats() throws {
        let dir = Harness.tempDir("natsperm-notoken")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let nats = try NatsAuthTests.SecuredNats(dir: dir)
        let seedPath = "\(dir)/pulse.nk"
        try Data("\(nats.pulse.seed)\n".utf8).write(to: URL(fileURLWithPath: seedPath))
        let admin = Harness.freePort()
        let subjects = BackbeatSubjects(clusterId: "chorus-aus-01")
        let pulse = try PulseProcess(
            arguments: [
                "-bootstrap", "-bpm", "600", "-max-bpm", "600", "-cluster", subjects.clusterId, "-nats", nats.url,
                "-nats-nkey", seedPath, "-data-dir", "\(dir)/data", "-admin-port", "\(admin)",
            ], logPath: "\(dir)/pulse.log")
        defer { pulse.stop() }
        let consumer = try RawNats(url: nats.consumerURL)
        var answer: [String: Any] = [:]
        XCTAssertTrue(
            Harness.waitUntil(seconds: 15) {
                let body = Array(#"{"tempo_bpm": 560, "justification": "no token"}"#.utf8)
                guard let reply = consumer.request(subjects.controlRequest, body) else { return false }
                answer = (try? JSONSerialization.jsonObject(with: Data(reply)) as? [String: Any]) ?? [:]
                return !answer.isEmpty
            }, pulse.log)
        XCTAssertEqual(answer["status"] as? Int, 403, "\(answer)")
        XCTAssertEqual(answer["code"] as? String, "token_required", "\(answer)")
        let tempo = NatsProcessSupport.get(port: admin, path: "/tempo")?.text ?? ""
        let body = tempo.components(separatedBy: "\r\n\r\n").last ?? ""
        let status = (try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]) ?? [:]
        XCTAssertEqual(status["current_bpm"] as? Int, 600, tempo)
        XCTAssertEqual(status["pending_bpm"] as? Int, 600, "no change pending\n\(tempo)")
    }
}
