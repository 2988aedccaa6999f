// Bench/Fanout.swift — the `fanout` scenario (requirements §9): a 3-server
// NATS cluster with routes on loopback (A, B, C), the pulse connected to A,
// and groups of 1, 100 and 1000 subscribers spread round-robin over the three
// servers (one process: several connections per server, many subscriptions
// per connection, the client's pooled delivery threads). Per group and per
// route (A→A, A→B, A→C): delivery (receive − instant) beside the floor through
// the same route, measured in the same run (a stamped message published on A
// with the pulse's client settings, received on each server); and the pulse's
// CPU per beat, which fan-out must not change (NATS carries it).

import CLoop
import CNats
import Foundation
import PulseCore

#if canImport(Glibc)
    import Glibc
#endif

/// One group's figures.
struct FanoutGroup {
    var subscribers: Int
    var connections: Int
    var expected = 0  // beats in the window × subscribers
    var received = 0
    var delivery = Latencies()  // every subscriber, every route
    var perRoute: [Latencies] = [Latencies(), Latencies(), Latencies()]
    /// The floor through the same routes with the same subscribers: stamped
    /// frames published on A (the pulse's core and priority, the beat rate)
    /// to as many subscriptions, spread and decoded the same way, in a
    /// window just before the group's own (see `measureGroupFloor`).
    var floorPerRoute: [Latencies] = [Latencies(), Latencies(), Latencies()]
    var floorSent = 0
    var cpuUsPerBeat: Double? = nil

    /// The floor a route is judged against: this group's own (same
    /// subscriber count) when measured, else the single-subscriber route floor.
    func floor(route i: Int, single: [Floor]) -> Latencies? {
        if floorPerRoute[i].count > 0 { return floorPerRoute[i] }
        return i < single.count && single[i].latencies.count > 0 ? single[i].latencies : nil
    }
}

/// The scenario's result: groups and the same-run floors per route.
struct FanoutResult {
    static let routes = ["A→A", "A→B", "A→C"]
    var groups: [FanoutGroup] = []
    var floors: [Floor] = []

    func text(name: String, bpm: Int) -> String {
        let indent = String(repeating: " ", count: 24)
        var o = pad(name, 10) + pad("\(bpm)", 5, right: true) + "  3 nats-servers with routes; pulse on A\n"
        o +=
            indent + pad("group / route", 22)
            + ["p50", "p99", "max", "floor p99", "ratio"].map {
                pad($0, 10, right: true)
            }.joined() + "\n"
        for g in groups {
            let all = g.delivery.summary
            o += indent + pad("\(g.subscribers) subs (\(g.connections) conn)", 22)
            o += [all.p50, all.p99, all.max].map { pad(num($0), 10, right: true) }.joined()
            o += pad("", 20, right: true) + "  received \(g.received)/\(g.expected)"
            o += g.cpuUsPerBeat.map { String(format: ", pulse %.1f µs CPU/beat", $0) } ?? "" + "\n"
            if !o.hasSuffix("\n") { o += "\n" }
            for (i, route) in Self.routes.enumerated() where g.perRoute[i].count > 0 {
                let d = g.perRoute[i].summary
                let f = g.floor(route: i, single: floors)?.summary.p99 ?? 0
                o += indent + "  " + pad(route, 20)
                o += [d.p50, d.p99, d.max, f].map { pad(num($0), 10, right: true) }.joined()
                o += pad(f > 0 ? String(format: "%.2f", d.p99 / f) : "-", 10, right: true) + "\n"
            }
        }
        for g in groups where g.floorPerRoute.contains(where: { $0.count > 0 }) {
            let got = g.floorPerRoute.reduce(0) { $0 + $1.count }
            o += indent + "floor with \(g.subscribers) subs (received \(got)/\(g.floorSent * g.subscribers)):"
            for (i, route) in Self.routes.enumerated() where g.floorPerRoute[i].count > 0 {
                let p = g.floorPerRoute[i].summary
                o += " \(route) p50 \(num(p.p50)) p99 \(num(p.p99))"
            }
            o += " µs\n"
        }
        for (i, f) in floors.enumerated() {
            let p = f.latencies.summary
            o +=
                indent
                + "floor \(Self.routes[i]), 1 sub per server: p50 \(num(p.p50)) p99 \(num(p.p99)) max \(num(p.max)) µs (n \(p.count))\n"
            for note in f.notes { o += indent + "note: \(note)\n" }
        }
        return o
    }

    func checks(scenario: String) -> [Check] {
        var out: [Check] = []
        for g in groups {
            var worst: (route: String, ratio: Double, value: Double, floor: Double)? = nil
            for (i, route) in Self.routes.enumerated() where g.perRoute[i].count > 0 {
                let f = g.floor(route: i, single: floors)?.summary.p99 ?? 0
                guard f > 0 else { continue }
                let v = g.perRoute[i].summary.p99
                if worst == nil || v / f > worst!.ratio { worst = (route, v / f, v, f) }
            }
            out.append(
                Check(
                    scenario: scenario, target: "§9 delivery p99 ≤ 1.25× route floor, \(g.subscribers) subs",
                    pass: worst.map { $0.ratio <= 1.25 },
                    detail: worst.map {
                        "worst route \($0.route): \(us($0.value)) vs floor \(us($0.floor)) (ratio \(String(format: "%.2f", $0.ratio)))"
                    } ?? "no samples"))
        }
        if let one = groups.first?.cpuUsPerBeat, let most = groups.last?.cpuUsPerBeat, groups.count > 1 {
            // "Unchanged": within 25 % or 10 µs (the machine is noisy).
            out.append(
                Check(
                    scenario: scenario, target: "§9 pulse CPU unchanged by fan-out",
                    pass: most <= max(one * 1.25, one + 10),
                    detail: String(
                        format: "%.1f µs/beat at %d subs vs %.1f at %d", most, groups.last!.subscribers, one,
                        groups.first!.subscribers)))
        }
        return out
    }

    struct GroupJSON: Encodable {
        var subscribers, connections, expected, received: Int
        var delivery_us: PercentilesJSON
        var routes: [String: RouteJSON]
        var pulse_cpu_us_per_beat: Double?
    }
    struct RouteJSON: Encodable {
        var delivery_us: PercentilesJSON
        /// The floor the route is judged against (same subscriber count when measured).
        var floor_us: PercentilesJSON?
        /// "same_subscribers" or "single_subscriber".
        var floor_kind: String?
        var ratio_p99: Double?
    }
    struct JSON: Encodable {
        var groups: [GroupJSON]
        var floors_us: [String: PercentilesJSON]
    }

    func json() -> JSON {
        var floorsJSON: [String: PercentilesJSON] = [:]
        for (i, f) in floors.enumerated() where f.latencies.count > 0 {
            floorsJSON[Self.routes[i]] = PercentilesJSON(f.latencies)
        }
        return JSON(
            groups: groups.map { g in
                var routes: [String: RouteJSON] = [:]
                for (i, route) in Self.routes.enumerated() where g.perRoute[i].count > 0 {
                    let floor = g.floor(route: i, single: floors)
                    let f = floor?.summary.p99 ?? 0
                    routes[route] = RouteJSON(
                        delivery_us: PercentilesJSON(g.perRoute[i]), floor_us: floor.map(PercentilesJSON.init),
                        floor_kind: floor == nil
                            ? nil : (g.floorPerRoute[i].count > 0 ? "same_subscribers" : "single_subscriber"),
                        ratio_p99: f > 0 ? g.perRoute[i].summary.p99 / f : nil)
                }
                return GroupJSON(
                    subscribers: g.subscribers, connections: g.connections, expected: g.expected, received: g.received,
                    delivery_us: PercentilesJSON(g.delivery), routes: routes, pulse_cpu_us_per_beat: g.cpuUsPerBeat)
            }, floors_us: floorsJSON)
    }
}

/// Three nats-servers on loopback with routes between them.
final class NatsCluster {
    private(set) var children: [Child] = []
    private(set) var urls: [String] = []

    init(_ ctx: BenchContext) throws {
        guard let binary = ctx.tool("nats-server") else { throw BenchError("fanout: nats-server not found") }
        let clientPorts = (0..<3).map { _ in freePort() }
        let routePorts = (0..<3).map { _ in freePort() }
        for i in 0..<3 {
            let routes = (0..<3).filter { $0 != i }.map { "nats://127.0.0.1:\(routePorts[$0])" }.joined(separator: ",")
            let child = try Child(
                name: "nats-server", path: binary,
                arguments: [
                    "-a", "127.0.0.1", "-p", "\(clientPorts[i])", "--cluster_name", "bench-fanout", "--cluster",
                    "nats://127.0.0.1:\(routePorts[i])", "--routes", routes,
                ], outputPath: ctx.tempDir + "/nats-fanout-\(i).log")
            children.append(child)
            urls.append("nats://127.0.0.1:\(clientPorts[i])")
        }
        guard waitUntil(seconds: 10, { clientPorts.allSatisfy { canConnect(port: $0) } }) else {
            stop()
            throw BenchError("fanout: the 3 nats-servers did not start")
        }
        // Routes up: a message published on A reaches B and C.
        let probes = try (1..<3).map { try Receiver(url: urls[$0], subject: "bench.fanout.route", payload: .stamp) }
        defer { probes.forEach { $0.close() } }
        let publisher = try Publisher(url: urls[0], sendAsap: true)
        let routed = waitUntil(seconds: 10) {
            let stamp = Array("\(cloop_realtime_ns())".utf8)
            stamp.withUnsafeBytes { _ = publisher.publish("bench.fanout.route", $0) }
            publisher.flush()
            sleepSeconds(0.05)
            return probes.allSatisfy { $0.received > 0 }
        }
        guard routed else {
            stop()
            throw BenchError("fanout: routes between the 3 nats-servers did not form within 10 s")
        }
    }

    func stop() {
        for c in children { c.stop(seconds: 3) }
        children = []
    }
}

/// Many subscriptions on one subject, spread over servers and connections;
/// the client's pooled delivery threads call back (not one thread each).
final class FanoutSubscribers {
    private var connections: [OpaquePointer?] = []
    private var subscriptions: [OpaquePointer?] = []
    private let lock = NSLock()
    private let storage: UnsafeMutablePointer<(index: Int64, ns: Int64, route: Int32)>
    private let capacity: Int
    private var count = 0
    private(set) var dropped = 0
    private var contexts: [Unmanaged<Context>] = []
    let connectionCount: Int

    private final class Context {
        unowned let owner: FanoutSubscribers
        let route: Int32
        init(owner: FanoutSubscribers, route: Int32) {
            self.owner = owner
            self.route = route
        }
    }

    init(urls: [String], subject: String, count subscribers: Int, capacity: Int) throws {
        self.capacity = capacity
        storage = .allocate(capacity: capacity)
        // Up to 4 connections per server, at most 100 subscriptions each.
        let perServer = (subscribers + urls.count - 1) / urls.count
        let connectionsPerServer = max(1, min(4, (perServer + 99) / 100))
        connectionCount = min(subscribers, urls.count) * connectionsPerServer
        var byServer: [[OpaquePointer?]] = []
        for url in urls {
            var list: [OpaquePointer?] = []
            for _ in 0..<connectionsPerServer {
                var opts: OpaquePointer?
                natsOptions_Create(&opts)
                natsOptions_SetURL(opts, url)
                natsOptions_SetName(opts, "pulse-bench-fanout")
                natsOptions_UseGlobalMessageDelivery(opts, true)
                var nc: OpaquePointer?
                let status = natsConnection_Connect(&nc, opts)
                natsOptions_Destroy(opts)
                guard status == NATS_OK else { throw BenchError("fanout connect \(url): \(natsStatusText(status))") }
                list.append(nc)
                connections.append(nc)
            }
            byServer.append(list)
        }
        for i in 0..<subscribers {
            let server = i % urls.count
            let connection = byServer[server][(i / urls.count) % connectionsPerServer]
            let context = Unmanaged.passRetained(Context(owner: self, route: Int32(server)))
            contexts.append(context)
            var sub: OpaquePointer?
            let status = natsConnection_Subscribe(
                &sub, connection, subject,
                { _, _, msg, closure in
                    let now = cloop_realtime_ns()
                    let context = Unmanaged<Context>.fromOpaque(closure!).takeUnretainedValue()
                    let bytes = UnsafeRawBufferPointer(
                        start: natsMsg_GetData(msg), count: Int(natsMsg_GetDataLength(msg)))
                    if case .success(let frame) = BeatFrameDecoder.result(bytes) {
                        context.owner.record(frame.beatIndex, now, context.route)
                    }
                    natsMsg_Destroy(msg)
                }, context.toOpaque())
            guard status == NATS_OK else { throw BenchError("fanout subscribe: \(natsStatusText(status))") }
            natsSubscription_SetPendingLimits(sub, 1 << 16, 1 << 26)
            subscriptions.append(sub)
        }
        for nc in connections { natsConnection_FlushTimeout(nc, 5000) }
    }

    private func record(_ index: Int64, _ ns: Int64, _ route: Int32) {
        lock.lock()
        defer { lock.unlock() }
        guard count < capacity else {
            dropped += 1
            return
        }
        storage[count] = (index, ns, route)
        count += 1
    }

    func snapshot() -> [(index: Int64, ns: Int64, route: Int32)] {
        lock.lock()
        defer { lock.unlock() }
        return Array(UnsafeBufferPointer(start: storage, count: count))
    }

    func close() {
        for s in subscriptions {
            natsSubscription_Unsubscribe(s)
            natsSubscription_Destroy(s)
        }
        subscriptions = []
        for c in connections { natsConnection_Destroy(c) }
        connections = []
        // Delivery threads may still hold a context for a moment: released at deinit.
    }

    deinit {
        close()
        storage.deallocate()
        for c in contexts { c.release() }
    }
}

/// The NATS floor per route: one publisher on `urls[0]` (the pulse's client
/// settings: SendAsap, on the pulse's core at its priority), one receiver on
/// each server, stamped messages at the beat rate.
func measureRouteFloors(urls: [String], bpm: Int, seconds: Int, cpu: Int, priority: Int) -> [Floor] {
    var floors = urls.indices.map { _ in
        Floor(source: "NATS C client, SendAsap publish on A → threaded subscriber per server, \(bpm)/min")
    }
    let subject = "bench.fanout.floor.\(getpid())"
    do {
        let receivers = try urls.map { try Receiver(url: $0, subject: subject, payload: .stamp) }
        defer { receivers.forEach { $0.close() } }
        let publisher = try Publisher(url: urls[0], sendAsap: true)
        let period = Int64(60_000_000_000) / Int64(bpm)
        let count = max(1, Int(Int64(seconds) * 1_000_000_000 / period))
        var sent = 0
        _ = runOnThread(seconds: Double(seconds) + 10) {
            _ = cloop_pin_to_cpu(Int32(cpu))
            if priority > 0 { _ = cloop_set_fifo_priority(Int32(priority)) }
            let start = (cloop_realtime_ns() / 100_000_000 + 3) * 100_000_000
            for k in 0..<count {
                sleepUntilRealtime(start + Int64(k) * period)
                let text = Array("\(cloop_realtime_ns())".utf8)
                if text.withUnsafeBytes({ publisher.publish(subject, $0) }) { sent += 1 }
            }
        }
        for (i, receiver) in receivers.enumerated() {
            waitUntil(seconds: 2) { receiver.received >= sent }
            let got = receiver.snapshot()
            for r in got { floors[i].latencies.record(ns: r.receivedNs - r.value) }
            if got.count < sent { floors[i].notes.append("\(sent - got.count) of \(sent) floor messages lost") }
        }
    } catch {
        floors[0].notes.append("route floors failed: \(error)")
    }
    return floors
}

/// The floor of one group: the same number of subscriptions, spread over the
/// same servers and connections and decoded by the same callback as the
/// beat frames, receive stamped frames (a real BeatFrame whose `beat_index`
/// carries the CLOCK_REALTIME ns it was published at) from a publisher on A
/// with the pulse's client settings (SendAsap), on the pulse's core at its
/// priority, at the beat rate. So the floor contains exactly what the
/// group's delivery contains except the pulse: the servers' fan-out work and
/// the subscriber process's own queueing of `size` callbacks per message.
func measureGroupFloor(
    _ group: inout FanoutGroup, urls: [String], size: Int, bpm: Int, seconds: Int, cpu: Int, priority: Int
) throws {
    let subject = "bench.fanout.floor.\(getpid()).\(size)"
    let period = Int64(60_000_000_000) / Int64(bpm)
    let count = max(1, Int(Int64(seconds) * 1_000_000_000 / period))
    let subscribers = try FanoutSubscribers(urls: urls, subject: subject, count: size, capacity: size * (count + 16))
    defer { subscribers.close() }
    sleepSeconds(1 + Double(period) / 1e9)  // settle: subscriptions propagate over the routes
    let publisher = try Publisher(url: urls[0], sendAsap: true)
    let encoder = BeatFrameEncoder(clusterId: "bench", phases: ["floor"], nodeId: "bench-floor")
    let frame = UnsafeMutableRawBufferPointer.allocate(byteCount: encoder.maxFrameBytes, alignment: 8)
    defer { frame.deallocate() }
    let windowId = Array(repeating: UInt8(ascii: "0"), count: 32)
    var sent = 0
    _ = runOnThread(seconds: Double(seconds) + 10) {
        _ = cloop_pin_to_cpu(Int32(cpu))
        if priority > 0 { _ = cloop_set_fifo_priority(Int32(priority)) }
        let start = (cloop_realtime_ns() / 100_000_000 + 3) * 100_000_000
        for k in 0..<count {
            sleepUntilRealtime(start + Int64(k) * period)
            let stamp = cloop_realtime_ns()
            let length = windowId.withUnsafeBytes { id in
                encoder.encode(
                    into: frame, beatIndex: stamp, downbeat: false, phaseIndex: 0,
                    hlc: HLCStamp(wallMs: stamp / 1_000_000, counter: 0), deadlineUnixMs: stamp / 1_000_000 + 100,
                    tempoBpm: Int64(bpm), windowId: id.baseAddress!, term: 1, degraded: false)
            }
            guard length > 0 else { continue }
            if publisher.publish(subject, UnsafeRawBufferPointer(rebasing: frame[0..<length])) { sent += 1 }
        }
    }
    waitUntil(seconds: 5) { subscribers.snapshot().count >= sent * size }
    for r in subscribers.snapshot() { group.floorPerRoute[Int(r.route)].record(ns: r.ns - r.index) }
    group.floorSent = sent
}

/// The scenario: cluster up → route floors → pulse on A → each group in turn.
func runFanoutScenario(_ ctx: BenchContext, bpm: Int, groups sizes: [Int] = [1, 100, 1000]) throws -> ScenarioResult {
    let seconds = ctx.options.seconds
    let cluster = try NatsCluster(ctx)
    defer { cluster.stop() }
    var fanout = FanoutResult()
    fanout.floors = measureRouteFloors(
        urls: cluster.urls, bpm: bpm, seconds: seconds, cpu: ctx.cpu, priority: ctx.priority)
    let savedURL = ctx.natsURL
    ctx.natsURL = cluster.urls[0]
    defer { ctx.natsURL = savedURL }
    var result = ScenarioResult(
        name: "fanout", bpm: bpm, timerFloor: Floor(source: "not measured"), natsFloor: fanout.floors[0])
    let pulse = try PulseRun(ctx, name: "fanout", bpm: bpm)
    defer { _ = pulse.stop() }
    let period = 60.0 / Double(bpm)
    let subject = "backbeat.bench.beat"
    for size in sizes {
        let beatsInWindow = Int(Double(seconds) / period) + 2
        // The same-count floor first, with no beat subscriber yet (one set of
        // `size` subscriptions at a time, as in the group's own window).
        var floorOnly = FanoutGroup(subscribers: size, connections: 0)
        do {
            try measureGroupFloor(
                &floorOnly, urls: cluster.urls, size: size, bpm: bpm, seconds: seconds, cpu: ctx.cpu,
                priority: ctx.priority)
        } catch {
            result.notes.append("\(size) subs: same-count floor failed (\(error)); judged on the 1-subscriber floor")
        }
        let subscribers = try FanoutSubscribers(
            urls: cluster.urls, subject: subject, count: size, capacity: size * (beatsInWindow + 16))
        defer { subscribers.close() }
        var group = FanoutGroup(subscribers: size, connections: subscribers.connectionCount)
        group.floorPerRoute = floorOnly.floorPerRoute
        group.floorSent = floorOnly.floorSent
        sleepSeconds(1 + period)  // settle: subscriptions propagate over the routes
        guard let epoch = pulse.epoch() else { throw BenchError("fanout: cannot read the pulse's GET /timeline") }
        let m0 = pulse.metrics(["backbeat_beats_total"])
        let cpu0 = processCPUNs(pulse.child.pid)
        let windowStart = cloop_realtime_ns()
        sleepSeconds(Double(seconds))
        let windowEnd = cloop_realtime_ns()
        let cpu1 = processCPUNs(pulse.child.pid)
        let m1 = pulse.metrics(["backbeat_beats_total"])
        sleepSeconds(min(1.0, 0.2 + period))
        let first = epoch.beat(atOrBeforeNs: windowStart - 1) + 1
        let last = epoch.beat(atOrBeforeNs: windowEnd - 1)
        group.expected = Int(max(0, last - first + 1)) * size
        for r in subscribers.snapshot() where r.index >= first && r.index <= last {
            let latency = r.ns - epoch.instantNs(ofBeat: r.index)
            group.received += 1
            group.delivery.record(ns: latency)
            group.perRoute[Int(r.route)].record(ns: latency)
        }
        if let b0 = m0["backbeat_beats_total"], let b1 = m1["backbeat_beats_total"], b1 > b0, let cpu0, let cpu1 {
            group.cpuUsPerBeat = Double(cpu1 - cpu0) / 1000 / (b1 - b0)
        }
        if subscribers.dropped > 0 {
            result.notes.append("\(size) subs: \(subscribers.dropped) receptions beyond capacity")
        }
        fanout.groups.append(group)
        result.beats = Int(max(0, last - first + 1))
    }
    result.fanout = fanout
    result.notes.append(
        "delivery timed in the subscriber's delivery callback (pooled threads): at 1000 subscriptions it includes the client's own queueing; so does each group's floor (same subscriptions, same callback)"
    )
    return result
}
