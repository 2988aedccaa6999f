// `Bench` as a user runs it: it says which pulse binary and build mode it
// measures, refuses a debug build unless --allow-debug, and exits non-zero
// when a scenario could not run. (Finding or building the release pulse
// when PULSE_BINARY is unset is a release build: minutes, so not here; see
// docs/benchmark.md.)
import Foundation
import XCTest

final class BenchCommandTests: XCTestCase {
    var bench: String { Harness.binDir.appendingPathComponent("Bench").path }

    private func run(_ arguments: [String], pulse: String) -> (status: Int32, output: String) {
        Harness.sh("PULSE_BINARY=\(pulse) \(bench) \(arguments.joined(separator: " ")) 2>&1", timeout: 120)
    }

    func testRefusesADebugPulseUnlessAsked() throws {
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: bench), "Bench not built (swift build)")
        let version = try runPulse(["--version"]).stdout
        try XCTSkipUnless(version.hasSuffix(", debug)\n"), "these tests run against a debug pulse: \(version)")
        let refused = run(["--seconds", "1", "--scenarios", "idle"], pulse: Harness.pulsePath)
        XCTAssertEqual(refused.status, 1, refused.output)
        XCTAssertTrue(refused.output.contains("is a debug build"), refused.output)
        XCTAssertTrue(refused.output.contains("--allow-debug"), refused.output)
        XCTAssertFalse(refused.output.contains("idle floors"), "nothing measured: \(refused.output)")

        let missing = run(["--seconds", "1", "--scenarios", "idle"], pulse: "/nonexistent/pulse")
        XCTAssertEqual(missing.status, 1, missing.output)
        XCTAssertTrue(missing.output.contains("no executable pulse at /nonexistent/pulse"), missing.output)
    }

    func testSaysWhatItMeasuresAndFailsWhenAScenarioCannotRun() throws {
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: bench), "Bench not built (swift build)")
        // A "release" pulse that answers --version and then refuses to start.
        let dir = Harness.tempDir("bench")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fake = dir + "/pulse"
        try """
        #!/bin/sh
        [ "$1" = --version ] && { echo "pulse 0.1.0 (commit test, Swift 6.3, release)"; exit 0; }
        echo "pulse: error: refusing to start (test)" >&2; exit 2
        """.write(toFile: fake, atomically: true, encoding: .utf8)
        chmod(fake, 0o755)
        let failed = run(["--seconds", "1", "--scenarios", "idle"], pulse: fake)
        XCTAssertEqual(failed.status, 1, failed.output)
        XCTAssertTrue(
            failed.output.contains("measuring \(fake): pulse 0.1.0 (commit test, Swift 6.3, release), a release build"),
            failed.output)
        XCTAssertTrue(failed.output.contains("pulse binary: \(fake)"), "the report names it too: \(failed.output)")
        XCTAssertTrue(failed.output.contains("1 scenario(s) could not run: idle"), failed.output)

        // A debug pulse measured on request: says so; idle runs, exit 0.
        let debug = run(["--seconds", "1", "--scenarios", "idle", "--allow-debug"], pulse: Harness.pulsePath)
        XCTAssertEqual(debug.status, 0, debug.output)
        XCTAssertTrue(debug.output.contains("a debug build"), debug.output)
    }
}
