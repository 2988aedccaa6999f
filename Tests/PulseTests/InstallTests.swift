// `make install PREFIX=… DESTDIR=…` (scripts/install.sh) into a staging
// directory, as a packager runs it: the binary, a unit whose ExecStart is
// the installed binary and which systemd-analyze accepts, the docs and the
// --help text. And `make dist` (scripts/dist.sh) refusing a debug build.
import Foundation
import XCTest

final class InstallTests: XCTestCase {
    let root = DeployTests.repoRoot.path

    func testInstallIntoADestdirWithAPrefix() throws {
        let dir = Harness.tempDir("install")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let run = Harness.sh("\(root)/scripts/install.sh \(Harness.pulsePath) /opt/backbeat \(dir)/stage")
        XCTAssertEqual(run.status, 0, run.output)
        let prefix = dir + "/stage/opt/backbeat"
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: prefix + "/bin/pulse"))
        let unit = try String(contentsOfFile: prefix + "/lib/systemd/system/pulse@.service", encoding: .utf8)
        XCTAssertTrue(unit.contains("ExecStart=/opt/backbeat/bin/pulse -config"), unit)
        XCTAssertTrue(unit.contains("Type=notify"), unit)
        XCTAssertFalse(unit.contains("/usr/local/"), "every path follows PREFIX")
        for doc in ["README.md", "CHANGELOG.md", "LICENSE", "operations.md", "security.md", "protocol.md"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: prefix + "/share/doc/backbeat/" + doc), doc)
        }
        let help = try String(contentsOfFile: prefix + "/share/doc/backbeat/pulse.txt", encoding: .utf8)
        for text in ["pulse 0.1.0 (commit", "-admin-token-file", "pulse backup", "pulse members", "--token-file"] {
            XCTAssertTrue(help.contains(text), "pulse.txt mentions \(text)")
        }
        // The installed unit verifies, its ExecStart pointed at the staged binary.
        let staged = dir + "/pulse@n1.service"
        try unit.replacingOccurrences(of: "/opt/backbeat/bin/pulse", with: prefix + "/bin/pulse")
            .write(toFile: staged, atomically: true, encoding: .utf8)
        let verify = Harness.sh("SYSTEMD_LOG_LEVEL=warning systemd-analyze verify \(staged) 2>&1")
        XCTAssertEqual(verify.status, 0, verify.output)
        XCTAssertFalse(verify.output.contains("pulse@n1.service"), verify.output)
        // A relative PREFIX is refused.
        XCTAssertEqual(Harness.sh("\(root)/scripts/install.sh \(Harness.pulsePath) opt \(dir)/x").status, 2)
    }

    func testDistRefusesADebugBuild() throws {
        let version = try runPulse(["--version"]).stdout
        try XCTSkipUnless(version.hasSuffix(", debug)\n"), "needs the debug pulse: \(version)")
        let dir = Harness.tempDir("dist")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let run = Harness.sh("\(root)/scripts/dist.sh \(Harness.pulsePath) \(dir)/out")
        XCTAssertEqual(run.status, 1, run.output)
        XCTAssertTrue(run.output.contains("is not a release build"), run.output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out"))
    }
}
