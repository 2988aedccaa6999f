// Issue 20, signed publications, against a real `pulse -sign-key` and a real
// nats-server: keys made as docs/protocol.md says (openssl genpkey / pkey
// -pubout); the Swift client holding the public key connects (its timeline
// replies verify) and takes the frames, while forgeries on the beat subject —
// the real frame without its signature, signed by another key, another key's
// signature under the real key id, the real frame with its term changed — and
// an unsigned timeline publication are refused with their reasons and
// counted; the node's timeline publication and tempo announcement verify,
// and its beat path allocated nothing; a client holding only another key
// cannot connect.
import BackbeatClient
import CNats
import Crypto
import Foundation
import PulseCore
import XCTest

final class SignedPublicationTests: XCTestCase {
    private static let cluster = "signed"

    private func openssl(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0, "openssl \(arguments)")
    }

    /// `unsigned` (a JSON object) signed with `key` under key id `kid`, in the protocol's layout.
    private static func sign(_ unsigned: String, with key: Curve25519.Signing.PrivateKey, kid: String) throws -> String
    {
        let message = String(unsigned.dropLast()) + #","kid":""# + kid + #""}"#
        let signature = try key.signature(for: Data(message.utf8))
        return String(message.dropLast(2)) + #"","sig":""# + PublicationSignature.hex(signature) + #""}"#
    }

    /// The next message on `subscription` whose body satisfies `match`, within `ms`.
    private static func next(_ subscription: OpaquePointer?, ms: Int64, _ match: (Data, Bool) -> Bool) -> Data? {
        let deadline = BackbeatClient.localNs() + ms * 1_000_000
        while BackbeatClient.localNs() < deadline {
            var msg: OpaquePointer?
            guard natsSubscription_NextMsg(&msg, subscription, 100) == NATS_OK, let msg else { continue }
            let data = Data(bytes: natsMsg_GetData(msg), count: Int(natsMsg_GetDataLength(msg)))
            let isReply = natsMsg_GetReply(msg) != nil
            natsMsg_Destroy(msg)
            if match(data, isReply) { return data }
        }
        return nil
    }

    /// A rotation's overlap in a 3-node cluster: n1 signs with the old key,
    /// n2 and n3 with the new one; leadership moves from one key to the
    /// other. A client holding both keys takes every frame of both (no
    /// refusal, no gap). (One holding a single key refuses the other's
    /// frames as `unknown_key`: signatures.json, in every client.)
    func testKeyRotationWithOverlap() async throws {
        let keys = Proc.tempDir("signed-keys")
        defer { try? FileManager.default.removeItem(atPath: keys) }
        var pems: [String] = []
        for name in ["old", "new"] {
            try openssl(["genpkey", "-algorithm", "ed25519", "-out", "\(keys)/\(name).key"])
            try openssl(["pkey", "-in", "\(keys)/\(name).key", "-pubout", "-out", "\(keys)/\(name).pub"])
            pems.append(try String(contentsOfFile: "\(keys)/\(name).pub", encoding: .utf8))
        }
        let verifier = try PublicationVerifier(publicKeyPEMs: pems)
        let cluster = try PulseCluster(cluster: "rotation", bpm: 600, maxBpm: 600) { i in
            ["-sign-key", "\(keys)/\(i == 0 ? "old" : "new").key"]
        }
        let leader = try XCTUnwrap(cluster.leader(), cluster.logs)
        var options = BackbeatClientOptions(url: cluster.nats.url, clusterId: "rotation")
        options.signatureVerifier = verifier
        options.connectTimeoutMs = 10_000
        let client = try await BackbeatClient.connect(options)
        defer { client.close() }
        // The key ids on the subject, as a plain subscriber sees them.
        var nc: OpaquePointer?
        XCTAssertEqual(natsConnection_ConnectTo(&nc, cluster.nats.url), NATS_OK)
        defer { natsConnection_Destroy(nc) }
        var sub: OpaquePointer?
        XCTAssertEqual(natsConnection_SubscribeSync(&sub, nc, "backbeat.rotation.beat"), NATS_OK)
        defer { natsSubscription_Destroy(sub) }
        usleep(500_000)

        // Leadership to a node with the other key, gracefully.
        let target = leader == 0 ? 1 : 0
        let moved = Proc.http(
            "POST", port: cluster.adminPorts[leader], path: "/leader/transfer",
            body: #"{"to":"\#(cluster.names[target])"}"#)
        XCTAssertEqual(moved?.status, 202, moved.map { String(decoding: $0.body, as: UTF8.self) } ?? "no answer")
        XCTAssertTrue(
            Proc.waitUntil(seconds: 5) {
                Proc.json(Proc.http("GET", port: cluster.adminPorts[target], path: "/leader")?.body ?? Data())[
                    "is_leader"] as? Bool == true
            }, cluster.logs)

        var beats = 0
        var refusals: [String] = []
        var gaps = 0
        let until = BackbeatClient.localNs() + 2_000_000_000
        for await event in client.events {
            switch event {
            case .beat: beats += 1
            case .refused(let reason): refusals.append(reason)
            case .gap: gaps += 1
            default: break
            }
            if BackbeatClient.localNs() > until { break }
        }
        var kids = Set<String>()
        let drainUntil = BackbeatClient.localNs() + 500_000_000  // frames keep coming: bounded
        while BackbeatClient.localNs() < drainUntil, let frame = Self.next(sub, ms: 200, { _, _ in true }) {
            XCTAssertNil(verifier.check(frame))
            kids.insert(
                String(decoding: frame.suffix(PublicationSignature.trailerBytes).dropFirst(8).prefix(16), as: UTF8.self)
            )
        }
        XCTAssertEqual(kids, Set(verifier.keyIds), "frames signed by both keys were published")
        XCTAssertGreaterThanOrEqual(beats, 20, cluster.logs)
        XCTAssertEqual(refusals, [], "a client holding both keys refuses nothing")
        XCTAssertEqual(client.signatureRefusals, 0)
        XCTAssertEqual(gaps, 0, "the hand-over between keys loses no beat")
    }

    func testSignedClusterVerifiesAndForgeriesAreRefusedAndCounted() async throws {
        let nats = try NatsServerProcess()
        let dir = Proc.tempDir("signed")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try openssl(["genpkey", "-algorithm", "ed25519", "-out", dir + "/sign.key"])
        try openssl(["pkey", "-in", dir + "/sign.key", "-pubout", "-out", dir + "/sign.pub"])
        let publicPEM = try String(contentsOfFile: dir + "/sign.pub", encoding: .utf8)
        let verifier = try PublicationVerifier(publicKeyPEMs: [publicPEM])
        let realKid = try XCTUnwrap(verifier.keyIds.first)
        let stranger = Curve25519.Signing.PrivateKey()
        let strangerKid = PublicationSignature.keyId(publicKey: stranger.publicKey.rawRepresentation)

        // A plain NATS connection: the attacker's, and the observer of publications.
        var nc: OpaquePointer?
        XCTAssertEqual(natsConnection_ConnectTo(&nc, nats.url), NATS_OK)
        defer { natsConnection_Destroy(nc) }
        var beatSub: OpaquePointer?
        var timelineSub: OpaquePointer?
        var controlSub: OpaquePointer?
        let (beat, timeline, control) = (
            "backbeat.\(Self.cluster).beat", "backbeat.\(Self.cluster).timeline", "backbeat.\(Self.cluster).control"
        )
        XCTAssertEqual(natsConnection_SubscribeSync(&beatSub, nc, beat), NATS_OK)
        XCTAssertEqual(natsConnection_SubscribeSync(&timelineSub, nc, timeline), NATS_OK)
        XCTAssertEqual(natsConnection_SubscribeSync(&controlSub, nc, control), NATS_OK)
        defer { [beatSub, timelineSub, controlSub].forEach { natsSubscription_Destroy($0) } }

        let (node, admin) = try PulseNodeProcess.single(
            cluster: Self.cluster, bpm: 600, maxBpm: 660, nats: nats.url, dir: dir,
            extra: ["-sign-key", dir + "/sign.key"])
        defer { node.stop() }
        XCTAssertTrue(
            Proc.waitUntil(seconds: 10) { node.log.contains(realKid) }, "the node logs its key id: \(node.log)")

        var options = BackbeatClientOptions(url: nats.url, clusterId: Self.cluster)
        options.signatureVerifier = verifier
        let client = try await BackbeatClient.connect(options)  // its timeline reply verified
        defer { client.close() }
        // Without keys, a signed cluster is an ordinary one (kid and sig are ignored members).
        let plain = try await BackbeatClient.connect(BackbeatClientOptions(url: nats.url, clusterId: Self.cluster))
        defer { plain.close() }

        // A real frame, its signature checked here too; then the forgeries.
        let real = try XCTUnwrap(Self.next(beatSub, ms: 3000) { _, _ in true }, "a frame")
        XCTAssertNil(verifier.check(real), String(decoding: real, as: UTF8.self))
        let realText = String(decoding: real, as: UTF8.self)
        let unsigned = String(realText.dropLast(PublicationSignature.trailerBytes)) + "}"
        let decoded = try BeatFrameDecoder.decode([UInt8](real))
        let forgeries: [(String, String)] = [
            (unsigned, "unsigned"),
            (try Self.sign(unsigned, with: stranger, kid: strangerKid), "unknown_key"),
            (try Self.sign(unsigned, with: stranger, kid: realKid), "bad_signature"),
            (
                realText.replacingOccurrences(of: "\"term\":\(decoded.term)", with: "\"term\":\(decoded.term + 1)"),
                "bad_signature"
            ),
        ]
        for (forged, _) in forgeries { XCTAssertEqual(natsConnection_PublishString(nc, beat, forged), NATS_OK) }
        let timelineBody = try XCTUnwrap(Proc.http("GET", port: admin, path: "/timeline")).body  // HTTP: unsigned
        XCTAssertNil(String(decoding: timelineBody, as: UTF8.self).range(of: "\"sig\""))
        XCTAssertEqual(natsConnection_Publish(nc, timeline, [UInt8](timelineBody), Int32(timelineBody.count)), NATS_OK)
        natsConnection_Flush(nc)

        // A tempo change: the node's timeline publication and its announcement are signed.
        let answer = try XCTUnwrap(
            Proc.http("POST", port: admin, path: "/tempo", body: #"{"tempo_bpm": 630, "justification": "signed"}"#))
        XCTAssertEqual(answer.status, 202, String(decoding: answer.body, as: UTF8.self))
        let publication = Self.next(timelineSub, ms: 3000) { data, isReply in
            !isReply && verifier.check(data) == nil && String(decoding: data, as: UTF8.self).contains("\"bpm\":630")
        }
        XCTAssertNotNil(publication, "a signed timeline publication with the pending change")
        let announcement = Self.next(controlSub, ms: 5000) { data, _ in
            String(decoding: data, as: UTF8.self).contains("backbeat.tempo_change.v1")
        }
        XCTAssertNil(verifier.check(try XCTUnwrap(announcement, "an announcement")), "the announcement verifies")

        // The client: beats flowing, every forgery refused with its reason and counted.
        var reasons: [String] = []
        var beats = 0
        var tempoChanged = false
        let until = BackbeatClient.localNs() + 4_000_000_000
        for await event in client.events {
            switch event {
            case .beat: beats += 1
            case .refused(let reason): reasons.append(reason)
            case .tempoChanged(let bpm, _, _): tempoChanged = tempoChanged || bpm == 630
            default: break
            }
            if BackbeatClient.localNs() > until || (tempoChanged && beats >= 20 && reasons.count >= 5) { break }
        }
        XCTAssertEqual(
            reasons.sorted(), (forgeries.map(\.1) + ["timeline_unsigned"]).sorted(), "refusals: \(reasons)")
        XCTAssertEqual(client.signatureRefusals, 5)
        XCTAssertGreaterThanOrEqual(beats, 20, "signed frames accepted")
        XCTAssertTrue(tempoChanged, "the signed timeline carried the change")
        XCTAssertEqual(plain.signatureRefusals, 0)
        XCTAssertGreaterThan(plain.frameCounts.accepted, 0, "a client without keys reads signed frames")

        // The node's own count of bytes allocated on its beat path, signing
        // every frame, across the tempo change (announced after the wake's count).
        let metrics = String(
            decoding: try XCTUnwrap(Proc.http("GET", port: admin, path: "/metrics")).body, as: UTF8.self)
        let hotPath = metrics.split(separator: "\n").first { $0.hasPrefix("backbeat_hot_path_allocated_bytes_total ") }
        XCTAssertEqual(hotPath, "backbeat_hot_path_allocated_bytes_total 0")

        // A client that holds only another key refuses every reply: no pulse.
        var wrong = BackbeatClientOptions(url: nats.url, clusterId: Self.cluster)
        wrong.signatureVerifier = try PublicationVerifier(publicKeys: [Array(stranger.publicKey.rawRepresentation)])
        wrong.connectTimeoutMs = 1000
        do {
            let connected = try await BackbeatClient.connect(wrong)
            connected.close()
            XCTFail("connected with the wrong key")
        } catch {
            XCTAssertTrue("\(error)".contains("unknown_key"), "\(error)")
        }
    }
}
