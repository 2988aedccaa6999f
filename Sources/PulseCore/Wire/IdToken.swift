// Wire/IdToken.swift — the rule for cluster and node ids: they go into NATS
// subjects, JSON, file names and the nats-kv pulses' pings and reports, so
// one rule serves the flags (`-cluster`, `-node-id`), the data dir's
// `node_id` file, backups, and the ids other pulses send
// (PulsePolicy/KVLeasePeers.swift).
import Foundation

/// Cluster and node ids (`-cluster`, `-node-id`).
public enum IdToken {
    /// Nil when `value` is acceptable as a cluster or node id, else why not
    /// (a phrase after the id's name). Pure; never traps on any string.
    public static func violation(_ value: String) -> String? {
        if value.isEmpty { return "must not be empty" }
        if value.utf8.count > 128 { return "must be at most 128 bytes (got \(value.utf8.count))" }
        // U+FFFD is what invalid UTF-8 on the command line decodes to.
        if value.unicodeScalars.contains("\u{FFFD}") { return "must be valid UTF-8" }
        if value.unicodeScalars.contains(where: CharacterSet.controlCharacters.contains) {
            return "must not contain control characters"
        }
        if value.unicodeScalars.contains(where: forbidden.contains) {
            return "'\(value)' must not contain spaces, '.', '*', '>', '/' or '\\'"
        }
        return nil
    }

    /// Built once: this runs for every clock ping and report a pulse hears
    /// (KVLeasePeers), where building the set was 14 % of a simulated run.
    private static let forbidden = CharacterSet(charactersIn: ".*>/\\").union(.whitespacesAndNewlines)
}
