// Service/Entry.swift — owns the command line of the `pulse` executable:
// `pulse [flags]` runs a node, `pulse --version` says which build this is,
// and a first word naming a tool (`watch`, `members`, `backup`, `restore`:
// the PulseTools module, which the server does not link against) hands the
// rest of the line to it. Errors are one line on stderr and exit status 2
// (configuration) or 1 (start-up).
import ArgumentParser
import Foundation
import Glibc
import Logging

/// The `pulse` executable's entry point (`Sources/PulseMain` calls it), kept in
/// the library so that tests, fuzzers and the simulator link the same code.
public enum PulseEntry {
    /// A tool's entry: its arguments (after its name) and the environment; never returns.
    public typealias Tool = (_ arguments: [String], _ environment: [String: String]) -> Never

    /// Parses the command line and runs a node or one of `tools` (by the
    /// command line's first word); never returns.
    public static func main(tools: [String: Tool] = [:]) -> Never {
        let environment = ProcessInfo.processInfo.environment
        let arguments = Array(CommandLine.arguments.dropFirst())

        if arguments.contains(where: { ["-version", "--version"].contains($0) }) || arguments.first == "version" {
            print(BuildInfo.line)
            exit(0)
        }

        if let first = arguments.first, let tool = tools[first] {
            tool(Array(arguments.dropFirst()), environment)
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
        } catch is StoppedBeforeStart {
            exit(0)
        } catch let error as PulseError {
            if case .config = error { fail(error.description, status: 2) }
            fail(error.description, status: 1)
        } catch {
            fail("\(error)", status: 1)
        }
        exit(0)
    }

    /// The first line of an argument parser's message.
    public static func firstLine(_ message: String) -> String {
        message.split(separator: "\n").first.map(String.init) ?? message
    }

    /// One line on stderr and exit `status`.
    public static func fail(_ message: String, status: Int32) -> Never {
        FileHandle.standardError.write(Data("pulse: error: \(message)\n".utf8))
        exit(status)
    }

    /// Prints help for `--help`/`-help`/`-h` and exits; otherwise returns.
    public static func handleHelp<Command: ParsableArguments>(
        _ type: Command.Type, _ arguments: [String], preface: String
    ) {
        if arguments.contains(where: { ["-h", "-help", "--help"].contains($0) }) {
            print(preface)
            print(type.helpMessage(columns: 100))
            exit(0)
        }
    }

    /// A subcommand (`watch`, `members`, `backup`, `restore`): help, parse,
    /// run, and exit with its status; a configuration error or a command
    /// line it cannot use exits 2 (one line), any other failure 1.
    public static func runTool<Command: ParsableArguments>(
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
