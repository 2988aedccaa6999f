// PulseTools/AdminAccess.swift — how `pulse backup` and `pulse members`
// reach the admin API: the token's sources and the CA of https:// nodes.
import ArgumentParser
import Foundation
import Pulse

/// The options `pulse backup` and `pulse members` share to reach the admin
/// API: the bearer token (a flag, a file, or the environment) and the CA of
/// `https://` nodes.
struct AdminAccessOptions: ParsableArguments {
    @Option(name: FlagName.both("token"), help: "Admin bearer token (env BACKBEAT_ADMIN_TOKEN)")
    var token: String?
    @Option(
        name: FlagName.both("token-file"),
        help: "File holding the admin bearer token, e.g. a mounted secret (env BACKBEAT_ADMIN_TOKEN_FILE)")
    var tokenFile: String?
    @Option(
        name: FlagName.both("ca"),
        help: "CA certificate (PEM) that signs https:// nodes' certificates (default: the system's trust store)")
    var ca: String?

    /// The settings for requests bounded by `timeoutMs`. The token comes from
    /// --token, else --token-file, else BACKBEAT_ADMIN_TOKEN, else
    /// BACKBEAT_ADMIN_TOKEN_FILE; --token with --token-file is refused.
    func settings(timeoutMs: Int, environment: [String: String]) throws -> AdminClient.Settings {
        if token != nil && tokenFile != nil { throw PulseError.config("give --token or --token-file, not both") }
        var resolved = token
        if resolved == nil, let tokenFile { resolved = try AdminTokenFile.read(tokenFile, flag: "--token-file") }
        if resolved == nil { resolved = environment["BACKBEAT_ADMIN_TOKEN"].flatMap { $0.isEmpty ? nil : $0 } }
        if resolved == nil, let file = environment["BACKBEAT_ADMIN_TOKEN_FILE"], !file.isEmpty {
            resolved = try AdminTokenFile.read(file, flag: "BACKBEAT_ADMIN_TOKEN_FILE")
        }
        if let ca, !FileManager.default.isReadableFile(atPath: ca) {
            throw PulseError.config("--ca \(ca): not a readable file")
        }
        return AdminClient.Settings(token: resolved, timeoutMs: timeoutMs, caFile: ca ?? "")
    }
}
