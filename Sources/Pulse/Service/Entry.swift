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
        var arguments = Array(CommandLine.arguments.dropFirst())

        func fail(_ message: String, status: Int32) -> Never {
            FileHandle.standardError.write(Data("pulse: error: \(message)\n".utf8))
            exit(status)
        }

        /// Prints help for `--help`/`-help`/`-h` and exits; otherwise returns.
        func handleHelp<Command: ParsableArguments>(_ type: Command.Type, _ arguments: [String], preface: String) {
            if arguments.contains(where: { ["-h", "-help", "--help"].contains($0) }) {
                print(preface)
                print(type.helpMessage(columns: 100))
                exit(0)
            }
        }

        if arguments.contains(where: { ["-version", "--version"].contains($0) }) || arguments.first == "version" {
            print(BuildInfo.line)
            exit(0)
        }

        if arguments.first == "watch" {
            arguments.removeFirst()
            handleHelp(
                WatchCommand.self, arguments, preface: "pulse watch: show a cluster's BeatFrames live, one line each.\n"
            )
            do {
                let options = try WatchCommand.parse(GoSwitches.normalize(arguments, switches: ["raw"]).arguments)
                exit(try Watcher(options: options).run(environment: environment))
            } catch let error as PulseError {
                fail(error.description, status: 1)
            } catch {
                fail(
                    WatchCommand.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)",
                    status: 2)
            }
        }

        if arguments.first == "members" {
            arguments.removeFirst()
            handleHelp(
                MembersCommand.self, arguments,
                preface:
                    "pulse members: list the voters, add or remove one (a change at a time, through the leader), or transfer leadership.\n"
            )
            do {
                exit(try MembersCommand.parse(arguments).run(environment: environment))
            } catch let error as PulseError {
                if case .config = error { fail(error.description, status: 2) }
                fail(error.description, status: 1)
            } catch {
                fail(
                    MembersCommand.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)",
                    status: 2)
            }
        }

        if arguments.first == "backup" || arguments.first == "restore" {
            let backup = arguments.removeFirst() == "backup"
            if backup {
                handleHelp(
                    BackupCommand.self, arguments,
                    preface: "pulse backup: save a running cluster's committed timeline to a file (GET /backup).\n")
            } else {
                handleHelp(
                    RestoreCommand.self, arguments,
                    preface: "pulse restore: seed a new node's data dir from a backup, to continue the same timeline.\n"
                )
            }
            do {
                exit(
                    backup
                        ? try BackupCommand.parse(arguments).run(environment: environment)
                        : try RestoreCommand.parse(arguments).run())
            } catch let error as PulseError {
                if case .config = error { fail(error.description, status: 2) }
                fail(error.description, status: 1)
            } catch {
                let message =
                    backup ? BackupCommand.message(for: error) : RestoreCommand.message(for: error)
                fail(message.split(separator: "\n").first.map(String.init) ?? "\(error)", status: 2)
            }
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
}
