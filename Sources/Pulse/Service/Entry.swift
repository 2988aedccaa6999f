// Service/Entry.swift — owns the command line of the `pulse` executable:
// `pulse [flags]` runs a node, `pulse watch [flags]` shows a cluster's beats,
// `pulse backup`/`pulse restore` save and seed the committed timeline
// (Backup/), `pulse --version` says which build this is. Errors are one line on stderr
// and exit status 2 (configuration) or 1 (start-up).
import ArgumentParser
import Foundation
import Glibc
import Logging

/// The `pulse` executable's entry point (`Sources/PulseMain` calls it), kept in
/// the library so that tests, fuzzers and the simulator link the same code.
public enum PulseEntry {
    /// Parses the command line and runs a node or the watcher; never returns.
    public static func main() -> Never {
        let environment = ProcessInfo.processInfo.environment
        let arguments = Array(CommandLine.arguments.dropFirst())

        if arguments.contains(where: { ["-version", "--version"].contains($0) }) || arguments.first == "version" {
            print(BuildInfo.line)
            exit(0)
        }

        switch arguments.first {
        case "watch":
            let watchArguments = Array(arguments.dropFirst())
            handleHelp(
                WatchCommand.self, watchArguments,
                preface: "pulse watch: show a cluster's BeatFrames live, one line each.\n")
            let normalized: [String]
            do {
                normalized = try GoSwitches.normalize(watchArguments, switches: ["raw"]).arguments
            } catch {
                fail(firstLine(WatchCommand.message(for: error)), status: 2)
            }
            runTool(WatchCommand.self, normalized, preface: "") {
                try Watcher(options: $0).run(environment: environment)
            }
        case "members":
            runTool(
                MembersCommand.self, Array(arguments.dropFirst()),
                preface:
                    "pulse members: list the voters, add or remove one (a change at a time, through the leader), or transfer leadership.\n"
            ) { try $0.run(environment: environment) }
        case "backup":
            runTool(
                BackupCommand.self, Array(arguments.dropFirst()),
                preface: "pulse backup: save a running cluster's committed timeline to a file (GET /backup).\n"
            ) { try $0.run(environment: environment) }
        case "restore":
            runTool(
                RestoreCommand.self, Array(arguments.dropFirst()),
                preface: "pulse restore: seed a new node's data dir from a backup, to continue the same timeline.\n"
            ) { try $0.run() }
        default: break
        }

        handleHelp(
            PulseCommand.self, arguments,
            preface: """
                pulse: keeps one beat timeline for a cluster and publishes BeatFrames on NATS.
                Flags take one dash or two (-bpm 12, --bpm 12, -bpm=12).
                Every flag has an environment variable BACKBEAT_<FLAG> (-raft-bind: BACKBEAT_RAFT_BIND,
                -bootstrap: BACKBEAT_BOOTSTRAP=true), except -cluster: BACKBEAT_CLUSTER_ID. -config FILE reads
                the same NAME=value lines (a systemd EnvironmentFile). The command line wins over the
                environment, which wins over the file. SIGHUP re-reads the Raft TLS files and the log level
                from -config; SIGINT/SIGTERM stop (a leader hands over first).
                Also: pulse watch --help, pulse members --help, pulse backup --help, pulse restore --help,
                pulse --version

                """)

        runNode(arguments, environment: environment)
    }

    /// `pulse [flags]`: runs a node until SIGINT/SIGTERM.
    static func runNode(_ arguments: [String], environment: [String: String]) -> Never {
        let config: PulseConfig
        do {
            config = try PulseCommand.parseConfig(arguments, environment: environment)
        } catch {
            fail("\(error)", status: 2)
        }
        LogSetup.bootstrap(level: config.logLevel, format: config.logFormat)
        do {
            let node = try PulseNode(config: config, environment: environment)
            SystemdNotify.notifyWhenReady(config: config, environment: environment) {
                Logger(label: "pulse").warning("\($0)")
            }
            try node.run()
        } catch let error as PulseError {
            if case .config = error { fail(error.description, status: 2) }
            fail(error.description, status: 1)
        } catch {
            fail("\(error)", status: 1)
        }
        exit(0)
    }

    /// The first line of an argument parser's message.
    static func firstLine(_ message: String) -> String {
        message.split(separator: "\n").first.map(String.init) ?? message
    }

    /// One line on stderr and exit `status`.
    static func fail(_ message: String, status: Int32) -> Never {
        FileHandle.standardError.write(Data("pulse: error: \(message)\n".utf8))
        exit(status)
    }

    /// Prints help for `--help`/`-help`/`-h` and exits; otherwise returns.
    static func handleHelp<Command: ParsableArguments>(_ type: Command.Type, _ arguments: [String], preface: String) {
        if arguments.contains(where: { ["-h", "-help", "--help"].contains($0) }) {
            print(preface)
            print(type.helpMessage(columns: 100))
            exit(0)
        }
    }

    /// A subcommand (`watch`, `members`, `backup`, `restore`): help, parse,
    /// run, and exit with its status; a configuration error or a command
    /// line it cannot use exits 2 (one line), any other failure 1.
    static func runTool<Command: ParsableArguments>(
        _ type: Command.Type, _ arguments: [String], preface: String, run: (Command) throws -> Int32
    ) -> Never {
        handleHelp(type, arguments, preface: preface)
        let command: Command
        do {
            command = try type.parse(arguments)
        } catch {
            fail(firstLine(type.message(for: error)), status: 2)
        }
        do {
            exit(try run(command))
        } catch let error as PulseError {
            if case .config = error { fail(error.description, status: 2) }
            fail(error.description, status: 1)
        } catch {
            fail(firstLine(type.message(for: error)), status: 2)
        }
    }
}
