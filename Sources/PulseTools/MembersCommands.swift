import ArgumentParser
import Foundation
// PulseTools/MembersCommands.swift — owns `pulse members list|add|remove` and
// `pulse members transfer` (docs/operations.md#replace-a-dead-node): the
// command line's side of the admin API's `/members` and `/leader/transfer`.
//
// Changes go to the leader: each URL of --admin is tried in turn until one
// answers other than 503 `not_leader` (a follower names the leader; its
// admin URL is not known to it). A change is one single-server step,
// answered once committed. Exit status: 0 done, 1 refused or unreachable,
// 2 bad arguments; errors are one line.
import Pulse

/// `pulse members` options (the action is the first argument).
struct MembersCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pulse members",
        abstract: "list | add --name N --raft HOST:PORT | remove NAME | transfer [NAME]")

    @Argument(help: "list, add, remove or transfer")
    var action: String
    @Argument(help: "remove: the member's name; transfer: the voter to hand leadership to (default: the best follower)")
    var target: String?
    @Option(name: FlagName.both("admin"), help: "Admin API URLs of the cluster's nodes, comma-separated")
    var admin = "http://127.0.0.1:8080"
    @Option(name: FlagName.both("name"), help: "add: the new member's name (its node id; a new name per node)")
    var name: String?
    @Option(name: FlagName.both("raft"), help: "add: the new member's Raft address host:port")
    var raft: String?
    @OptionGroup var access: AdminAccessOptions
    @Option(name: FlagName.both("timeout-ms"), help: "Timeout of each request, in ms")
    var timeoutMs = 10_000

    /// Runs the action; returns the exit status.
    func run(environment: [String: String]) throws -> Int32 {
        guard (1...120_000).contains(timeoutMs) else { throw PulseError.config("--timeout-ms must be 1...120000") }
        let urls = try AdminClient.urls(admin)
        let settings = try access.settings(timeoutMs: timeoutMs, environment: environment)
        let request: (String) throws -> AdminClient.Response
        switch action {
        case "list":
            request = { try AdminClient.get(url: $0, path: "/members", settings) }
        case "add":
            guard let raft else { throw PulseError.config("members add needs --raft host:port") }
            var object: [String: String] = ["raft": raft]
            if let name { object["name"] = name }
            let body = [UInt8](try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]))
            request = {
                try AdminClient.post(url: $0, path: "/members", body: body, settings)
            }
        case "remove":
            guard let target, MembershipBody.nameProblem(target) == nil,
                let encoded = target.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed)
            else { throw PulseError.config("members remove needs the member's name") }
            request = {
                try AdminClient.delete(url: $0, path: "/members/" + encoded, settings)
            }
        case "transfer":
            let object: [String: String] = target.map { ["to": $0] } ?? [:]
            let body = [UInt8](try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]))
            request = {
                try AdminClient.post(url: $0, path: "/leader/transfer", body: body, settings)
            }
        default:
            throw PulseError.config("unknown action '\(action)': list, add, remove or transfer")
        }
        var failures: [String] = []
        for url in urls {
            let response: AdminClient.Response
            do {
                response = try request(url)
            } catch {
                failures.append("\(url): \(error)")
                continue
            }
            if (200..<300).contains(response.status) {
                print(Self.summary(response.body, action: action))
                return 0
            }
            let code = Self.code(response.body)
            failures.append("\(url): \(response.status) \(code ?? "") \(Self.oneLine(response.text))")
            // Only a follower's `not_leader` sends us on to the next node.
            if code != "not_leader" { break }
        }
        FileHandle.standardError.write(Data("pulse members: \(failures.joined(separator: "; "))\n".utf8))
        return 1
    }

    private static func code(_ body: [UInt8]) -> String? {
        ((try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any])?["code"] as? String
    }

    private static func oneLine(_ text: String) -> String {
        String(text.split(whereSeparator: \.isNewline).joined(separator: " ").prefix(300))
    }

    /// The voter set as one line per member (`*` marks the leader), or the raw body.
    static func summary(_ body: [UInt8], action: String) -> String {
        guard let object = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any],
            let members = object["members"] as? [[String: Any]]
        else { return oneLine(String(decoding: body, as: UTF8.self)) }
        var lines: [String] = []
        if action == "transfer" { lines.append("transfer: starts after the leader's next beat") }
        if action == "add" || action == "remove" { lines.append("\(action): committed") }
        for m in members {
            let leader = (m["leader"] as? Bool) == true ? "*" : " "
            lines.append(
                "\(leader) \(m["name"] as? String ?? "?")\t\(m["raft"] as? String ?? "?")\t\(m["id"] as? String ?? "")")
        }
        if (object["change_pending"] as? Bool) == true { lines.append("(a change is not committed yet)") }
        return lines.joined(separator: "\n")
    }
}
