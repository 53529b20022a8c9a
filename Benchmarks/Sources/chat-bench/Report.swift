import Foundation
import Histogram
import NIOCore

/// One reported number. `check` marks correctness counters that must be zero.
struct Metric: Encodable, Sendable {
    var key: String
    var label: String
    var value: Double
    var unit: String
    var check: Bool = false
}

/// A scenario's result: printed as a table (stderr when `--json`, else stdout) and, with `--json`, as one JSON
/// object on stdout.
struct Report: Encodable, Sendable {
    var scenario: String
    var target: String
    var label: String
    var date: String
    var cores: Int
    var parameters: [String: String] = [:]
    var parameterOrder: [String] = []
    var metrics: [Metric] = []
    var problems: [String] = []
    var notes: [String] = []

    init(scenario: String, settings: Settings) {
        self.init(scenario: scenario, target: settings.endpoints.map(\.description).joined(separator: ","), label: settings.label)
    }

    /// A report of a scenario that measures `target` (a broker's URLs, or the machine itself).
    init(scenario: String, target: String, label: String) {
        self.scenario = scenario
        self.target = target
        self.label = label
        let formatter = ISO8601DateFormatter()
        date = formatter.string(from: Date())
        cores = System.coreCount
        loadAverage = Self.loadAverage()
    }

    /// The 1-minute load average when the run started: other work on the machine skews every number.
    var loadAverage: Double?

    static func loadAverage() -> Double? {
        ProcessProbe.readFile("/proc/loadavg")?.split(separator: " ").first.flatMap { Double($0) }
    }

    var passed: Bool { problems.isEmpty }

    mutating func param(_ key: String, _ value: any CustomStringConvertible) {
        if parameters[key] == nil { parameterOrder.append(key) }
        parameters[key] = value.description
    }

    mutating func add(_ key: String, _ label: String, _ value: Double, _ unit: String = "") {
        metrics.append(Metric(key: key, label: label, value: value, unit: unit))
    }

    /// A counter that must be zero; a non-zero value is a problem.
    mutating func check(_ key: String, _ label: String, _ value: Int) {
        metrics.append(Metric(key: key, label: label, value: Double(value), unit: "", check: true))
        if value != 0 { problems.append("\(label): \(value) (must be 0)") }
    }

    mutating func latency(_ prefix: String, _ label: String, _ h: Histogram<UInt64>) {
        add("\(prefix)_p50_ms", "\(label) p50", h.millis(50), "ms")
        add("\(prefix)_p90_ms", "\(label) p90", h.millis(90), "ms")
        add("\(prefix)_p99_ms", "\(label) p99", h.millis(99), "ms")
        add("\(prefix)_p999_ms", "\(label) p99.9", h.millis(99.9), "ms")
        add("\(prefix)_max_ms", "\(label) max", h.maxMillis, "ms")
        add("\(prefix)_samples", "\(label) samples", Double(h.totalCount))
    }

    var table: String {
        var out = "chat-bench \(scenario) against \(label) (\(target)), \(date), \(cores) cores"
        if let loadAverage { out += ", load \(fmt(loadAverage, 2)) at start" }
        out += "\n"
        if !parameterOrder.isEmpty {
            out += "  " + parameterOrder.map { "\($0)=\(parameters[$0] ?? "")" }.joined(separator: " ") + "\n"
        }
        let width = max(20, metrics.map(\.label.count).max() ?? 20)
        for m in metrics {
            let pad = String(repeating: " ", count: width - m.label.count)
            var line = "  \(m.label)\(pad)  \(Self.format(m.value, unit: m.unit))"
            if m.check { line += m.value == 0 ? "  ok" : "  FAIL" }
            out += line + "\n"
        }
        for note in notes { out += "  note: \(note)\n" }
        out += problems.isEmpty ? "  result: PASS\n" : "  result: FAIL — " + problems.joined(separator: "; ") + "\n"
        return out
    }

    static func format(_ v: Double, unit: String) -> String {
        switch unit {
        case "ms": return fmt(v, 3) + " ms"
        case "s": return fmt(v, 2) + " s"
        case "KiB": return fmt(v, 2) + " KiB"
        case "MiB": return fmt(v, 1) + " MiB"
        case "x": return fmt(v, 2) + "×"
        case "%": return fmt(v, 1) + " %"
        case "µs": return fmt(v, 3) + " µs"
        default:
            let s = v == v.rounded() && abs(v) < 1e15 ? grouped(Int(v)) : fmt(v, 2)
            return unit.isEmpty ? s : s + " " + unit
        }
    }

    static func grouped(_ n: Int) -> String {
        let digits = String(abs(n))
        var out = ""
        for (i, c) in digits.enumerated() {
            if i > 0 && (digits.count - i) % 3 == 0 { out.append(",") }
            out.append(c)
        }
        return n < 0 ? "-" + out : out
    }

    func emit(json: Bool) {
        if json {
            writeStderr(table)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            if let data = try? encoder.encode(self) { print(String(decoding: data, as: UTF8.self)) }
        } else {
            print(table, terminator: "")
        }
    }
}

