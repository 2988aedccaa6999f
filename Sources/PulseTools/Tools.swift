// PulseTools — the `pulse` executable's tools, clients of a running cluster
// rather than the server: `pulse watch` (the beat subject, live),
// `pulse members` and `pulse backup` (the admin API), `pulse restore` (seeds a
// new node's data dir from a backup file). `Sources/PulseMain` hands them to
// `PulseEntry.main`, which runs the one the command line names.
import Pulse

/// The tools by the word that names them on the command line.
public enum PulseTools {
    public static let all: [String: PulseEntry.Tool] = [
        "watch": watch,
        "members": { arguments, environment in
            PulseEntry.runTool(
                MembersCommand.self, arguments,
                preface:
                    "pulse members: list the voters, add or remove one (a change at a time, through the leader), or transfer leadership.\n"
            ) { try $0.run(environment: environment) }
        },
        "backup": { arguments, environment in
            PulseEntry.runTool(
                BackupCommand.self, arguments,
                preface: "pulse backup: save a running cluster's committed timeline to a file (GET /backup).\n"
            ) { try $0.run(environment: environment) }
        },
        "restore": { arguments, _ in
            PulseEntry.runTool(
                RestoreCommand.self, arguments,
                preface: "pulse restore: seed a new node's data dir from a backup, to continue the same timeline.\n"
            ) { try $0.run() }
        },
    ]

    /// `pulse watch`: Go-style switches (`-raw`) are normalized first.
    static func watch(_ arguments: [String], _ environment: [String: String]) -> Never {
        PulseEntry.handleHelp(
            WatchCommand.self, arguments, preface: "pulse watch: show a cluster's BeatFrames live, one line each.\n")
        let normalized: [String]
        do {
            normalized = try GoSwitches.normalize(arguments, switches: ["raw"]).arguments
        } catch {
            PulseEntry.fail(PulseEntry.firstLine(WatchCommand.message(for: error)), status: 2)
        }
        PulseEntry.runTool(WatchCommand.self, normalized, preface: "") {
            try Watcher(options: $0).run(environment: environment)
        }
    }
}
