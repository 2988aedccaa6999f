// The membership surface as untrusted input: `POST /members` and
// `POST /leader/transfer` bodies, `DELETE /members/{name}` paths, the
// member contexts a leader's log carries (`name\nhost:port`), and the
// -join flag's rules.
import CHttpParser
import Foundation
import PulsePolicy
import Raft
import XCTest

@testable import Pulse

final class MembershipAdminTests: XCTestCase {
    func testAddBodiesAreValidated() {
        XCTAssertEqual(
            try MembershipBody.parseAdd(Array(#"{"name":"n4","raft":"127.0.0.1:7004"}"#.utf8)).get(),
            .add(name: "n4", raft: "127.0.0.1:7004"))
        XCTAssertEqual(
            try MembershipBody.parseAdd(Array(#"{"raft":"pulse-4.example:7000"}"#.utf8)).get(),
            .add(name: "pulse-4.example:7000", raft: "pulse-4.example:7000"), "no name: the address is the name")
        let refused: [(String, String)] = [
            ("", "malformed_json"), ("[1]", "malformed_json"), ("{", "malformed_json"),
            (#"{"name":"n4"}"#, "invalid_field"), (#"{"raft":7004}"#, "invalid_field"),
            (#"{"raft":"nohost"}"#, "invalid_field"), (#"{"raft":"n4@127.0.0.1:7004"}"#, "invalid_field"),
            (#"{"raft":"127.0.0.1:70000"}"#, "invalid_field"),
            (#"{"name":5,"raft":"127.0.0.1:7004"}"#, "invalid_field"),
            (#"{"name":"","raft":"127.0.0.1:7004"}"#, "invalid_field"),
            (#"{"name":"a b","raft":"127.0.0.1:7004"}"#, "invalid_field"),
            (#"{"name":"a\nb","raft":"127.0.0.1:7004"}"#, "invalid_field"),
            (#"{"name":"x@y","raft":"127.0.0.1:7004"}"#, "invalid_field"),
            ("{\"name\":\"\(String(repeating: "a", count: 254))\",\"raft\":\"127.0.0.1:1\"}", "invalid_field"),
        ]
        for (body, code) in refused {
            switch MembershipBody.parseAdd(Array(body.utf8)) {
            case .success(let parsed): XCTFail("accepted \(body): \(parsed)")
            case .failure(let failure): XCTAssertEqual(failure.code, code, body)
            }
        }
        XCTAssertEqual(try MembershipBody.parseTransfer([]).get(), nil)
        XCTAssertEqual(try MembershipBody.parseTransfer(Array("{}".utf8)).get(), nil)
        XCTAssertEqual(try MembershipBody.parseTransfer(Array(#"{"to":"n4"}"#.utf8)).get(), "n4")
        XCTAssertThrowsError(try MembershipBody.parseTransfer(Array(#"{"to":4}"#.utf8)).get())
        XCTAssertThrowsError(try MembershipBody.parseTransfer(Array("nope".utf8)).get())
    }

    private func answer(
        _ router: AdminRouter, _ method: UInt32, _ path: String, body: String = "", token: String? = nil
    )
        -> AdminResponse?
    {
        var response: AdminResponse?
        router.handle(
            AdminRequest(
                method: method, path: path, body: Array(body.utf8),
                authorization: token.map { Array("Bearer \($0)".utf8) },
                contentType: body.isEmpty ? nil : Array("application/json".utf8))
        ) { response = $0 }
        return response
    }

    func testRoutesAreTokenGuarded() {
        let router = AdminRouter(backend: FakeAdminBackend(), authToken: "sekret", limits: AdminLimits())
        let post = HTTP_POST.rawValue
        let delete = HTTP_DELETE.rawValue
        let get = HTTP_GET.rawValue
        XCTAssertEqual(answer(router, post, "/members", body: #"{"raft":"127.0.0.1:1"}"#)?.status, 401)
        XCTAssertEqual(answer(router, delete, "/members/n3")?.status, 401)
        XCTAssertEqual(answer(router, post, "/leader/transfer")?.status, 401)
        XCTAssertEqual(answer(router, get, "/members/n3")?.status, 405)
        XCTAssertEqual(answer(router, delete, "/members")?.status, 405)
        XCTAssertEqual(answer(router, get, "/leader/transfer")?.status, 405)
        // With the token: a bad body is 400, a single node (the fake) has no voter set.
        XCTAssertEqual(answer(router, post, "/members", body: "{", token: "sekret")?.status, 400)
        XCTAssertEqual(answer(router, delete, "/members/a%20b", token: "sekret")?.status, 400)
        XCTAssertEqual(
            answer(router, post, "/members", body: #"{"raft":"127.0.0.1:1"}"#, token: "sekret")?.status, 409)
        XCTAssertEqual(answer(router, delete, "/members/n3", token: "sekret")?.status, 409)
        XCTAssertEqual(answer(router, get, "/members")?.status, 409)
    }

    func testMemberContextsFromTheLogAreValidated() throws {
        let peer = try PeerList.parsePeer("n4@127.0.0.1:7004")
        let member = Member(id: peer.raftId, context: peer.memberContext)
        XCTAssertEqual(PeerList.peer(member: member), peer)
        let byAddress = try PeerList.parsePeer("pulse-2.example:7000")
        XCTAssertEqual(PeerList.peer(member: Member(id: byAddress.raftId, context: byAddress.memberContext)), byAddress)
        // Not the id the name hashes to, malformed, or empty: unknown.
        XCTAssertNil(PeerList.peer(member: Member(id: peer.raftId &+ 1, context: peer.memberContext)))
        for context in [
            "", "n4", "n4\n", "\n127.0.0.1:7004", "n4\n127.0.0.1", "n4\nx@127.0.0.1:7004", "n 4\n127.0.0.1:1",
            "n4\n127.0.0.1:7004\nextra",
        ] {
            let name = context.split(separator: "\n", omittingEmptySubsequences: false).first.map(String.init) ?? ""
            XCTAssertNil(
                PeerList.peer(member: Member(id: PeerList.stableId(name), context: Array(context.utf8))), context)
        }
        XCTAssertNil(PeerList.peer(member: Member(id: 1, context: [0xFF, 0xFE, 0x0A, 0x31])), "not UTF-8")
        var state: UInt64 = 0x5EED
        for _ in 0..<2000 {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            let bytes = (0..<Int(state >> 58)).map { UInt8(truncatingIfNeeded: state >> UInt64($0 % 7 * 8)) }
            _ = PeerList.peer(member: Member(id: state, context: bytes))  // never traps
        }
    }

    func testReconfiguredPeersFollowTheVoterSet() throws {
        let list = try PeerList.parse(
            peers: ["n1@127.0.0.1:7001", "n2@127.0.0.1:7002", "n3@127.0.0.1:7003"], nodeId: "n1",
            raftBind: "127.0.0.1:7001")
        let n4 = try PeerList.parsePeer("n4@127.0.0.1:7004")
        let ids = list.peers.map(\.raftId)
        // n3 removed, n4 added with its context; bootstrap voters without one come from -peers.
        let (next, unknown) = list.reconfigured(
            members: [
                Member(id: ids[0]), Member(id: ids[1]), Member(id: n4.raftId, context: n4.memberContext),
                Member(id: 99),
            ],
            fallback: list)
        XCTAssertEqual(next.peers.map(\.name), ["n1", "n2", "n4"])
        XCTAssertEqual(unknown, [99])
        XCTAssertEqual(next.others.map(\.name), ["n2", "n4"])
        XCTAssertEqual(next.publishers(nodeId: "n1"), .known(["n2", "n4", "n1"]))
        // This node, removed, stays in its own list (never among `others`).
        let (removed, _) = list.reconfigured(members: [Member(id: ids[1]), Member(id: ids[2])], fallback: list)
        XCTAssertEqual(removed.peers.map(\.name), ["n2", "n3", "n1"])
        XCTAssertEqual(removed.others.map(\.name), ["n2", "n3"])
        XCTAssertEqual(DegradationPolicy.rank(of: 20, among: [30, 10, 20]), 1)
    }

    func testJoinExcludesBootstrap() throws {
        let peers = "n1@127.0.0.1:7001,n2@127.0.0.1:7002"
        XCTAssertThrowsError(
            try PulseCommand.parseConfig(["-join", "-bootstrap", "-peers", peers, "-node-id", "n1"], environment: [:])
        ) { error in
            XCTAssertTrue("\(error)".contains("-join and -bootstrap"), "\(error)")
            XCTAssertFalse("\(error)".contains("\n"))
        }
        XCTAssertThrowsError(try PulseCommand.parseConfig(["-join"], environment: [:]))
        let joining = try PulseCommand.parseConfig(
            ["-peers", peers, "-node-id", "n2"], environment: ["BACKBEAT_JOIN": "true"])
        XCTAssertTrue(joining.join)
        XCTAssertFalse(joining.bootstrap)
    }
}
