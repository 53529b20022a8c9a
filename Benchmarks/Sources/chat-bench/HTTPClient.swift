#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import ChatJSON

/// Where the broker listens. Only IPv4 literals and `localhost` are accepted: the harness never resolves names.
struct Endpoint: Sendable, CustomStringConvertible {
    var host: String
    var port: Int

    init(url: String) throws(BenchError) {
        var rest = Substring(url)
        for scheme in ["http://", "ws://"] where rest.hasPrefix(scheme) { rest = rest.dropFirst(scheme.count) }
        if let slash = rest.firstIndex(of: "/") { rest = rest[..<slash] }
        let parts = rest.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count <= 2, let hostPart = parts.first, !hostPart.isEmpty else { throw BenchError("bad URL \(url)") }
        host = hostPart == "localhost" ? "127.0.0.1" : String(hostPart)
        var addr = in_addr()
        guard inet_pton(AF_INET, host, &addr) == 1 else { throw BenchError("the URL's host must be an IPv4 address (got \(hostPart))") }
        if parts.count == 2 {
            guard let p = Int(parts[1]), (1...65535).contains(p) else { throw BenchError("bad port in \(url)") }
            port = p
        } else {
            port = 80
        }
    }

    var description: String { "http://\(host):\(port)" }
}

struct BenchError: Error, CustomStringConvertible, Sendable {
    let description: String
    init(_ description: String) { self.description = description }
}

struct HTTPResponse: Sendable {
    var status: Int
    var body: [UInt8]

    var json: JSONValue? { try? JSONParser.parse(body) }
    var text: String { String(decoding: body, as: UTF8.self) }
}

/// A deliberately small blocking HTTP/1.1 client (one request per connection, `Connection: close`) for set-up calls
/// and scraping: thread creation, `/health`, `/metrics`. Never on a hot path.
enum HTTPClient {
    static func request(
        _ endpoint: Endpoint, method: String, path: String, bearer: String? = nil, json: JSONValue? = nil,
        timeoutSeconds: Int = 30
    ) throws(BenchError) -> HTTPResponse {
        let body = json.map { JSONWriter.encode($0) } ?? []
        var head = "\(method) \(path) HTTP/1.1\r\nHost: \(endpoint.host):\(endpoint.port)\r\nConnection: close\r\n"
        if let bearer { head += "Authorization: Bearer \(bearer)\r\n" }
        if json != nil { head += "Content-Type: application/json\r\n" }
        head += "Content-Length: \(body.count)\r\n\r\n"
        let request = Array(head.utf8) + body

        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw BenchError("socket(): \(errnoText())") }
        defer { close(fd) }
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(endpoint.port).bigEndian)
        inet_pton(AF_INET, endpoint.host, &addr.sin_addr)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { throw BenchError("connect to \(endpoint): \(errnoText())") }
        var sent = 0
        while sent < request.count {
            let n = request.withUnsafeBytes { send(fd, $0.baseAddress! + sent, request.count - sent, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw BenchError("send to \(endpoint): \(errnoText())") }
            sent += n
        }
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n == 0 { break }
            guard n > 0 else { throw BenchError("\(method) \(path): \(errnoText())") }
            response.append(contentsOf: chunk[0..<n])
            if let parsed = parse(response, complete: false) { return parsed }
        }
        guard let parsed = parse(response, complete: true) else { throw BenchError("\(method) \(path): malformed response") }
        return parsed
    }

    /// Parses a full response; `nil` while incomplete (unless `complete`, when the body runs to the end).
    private static func parse(_ bytes: [UInt8], complete: Bool) -> HTTPResponse? {
        guard let headEnd = find([13, 10, 13, 10], in: bytes, from: 0) else { return nil }
        let head = String(decoding: bytes[0..<headEnd], as: UTF8.self)
        let lines = head.split(separator: "\r\n")
        guard let statusLine = lines.first else { return nil }
        let statusParts = statusLine.split(separator: " ")
        guard statusParts.count >= 2, let status = Int(statusParts[1]) else { return nil }
        var contentLength: Int?
        var chunked = false
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingCharacters(in: " \t")
            if name == "content-length" { contentLength = Int(value) }
            if name == "transfer-encoding", value.lowercased().contains("chunked") { chunked = true }
        }
        let bodyStart = headEnd + 4
        if chunked {
            var out: [UInt8] = []
            var i = bodyStart
            while true {
                guard let lineEnd = find([13, 10], in: bytes, from: i) else { return nil }
                let sizeText = String(decoding: bytes[i..<lineEnd], as: UTF8.self).split(separator: ";").first ?? ""
                guard let size = Int(sizeText.trimmingCharacters(in: " "), radix: 16) else { return nil }
                let dataStart = lineEnd + 2
                if size == 0 { return HTTPResponse(status: status, body: out) }
                guard bytes.count >= dataStart + size + 2 else { return nil }
                out.append(contentsOf: bytes[dataStart..<(dataStart + size)])
                i = dataStart + size + 2
            }
        }
        if let contentLength {
            guard bytes.count >= bodyStart + contentLength else { return nil }
            return HTTPResponse(status: status, body: Array(bytes[bodyStart..<(bodyStart + contentLength)]))
        }
        return complete ? HTTPResponse(status: status, body: Array(bytes[bodyStart...])) : nil
    }

    private static func find(_ needle: [UInt8], in bytes: [UInt8], from: Int) -> Int? {
        guard bytes.count >= needle.count else { return nil }
        var i = from
        while i + needle.count <= bytes.count {
            if bytes[i] == needle[0], Array(bytes[i..<(i + needle.count)]) == needle { return i }
            i += 1
        }
        return nil
    }
}

extension StringProtocol {
    func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let c = s.first, set.contains(c) { s = s.dropFirst() }
        while let c = s.last, set.contains(c) { s = s.dropLast() }
        return String(s)
    }
}

func errnoText() -> String { String(cString: strerror(errno)) }

/// Facts about other processes and this one, read from `/proc` (Linux).
enum ProcessProbe {
    /// `VmRSS` of a process in bytes.
    static func rss(pid: Int) -> Int? {
        guard let text = readFile("/proc/\(pid)/status") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            let digits = line.dropFirst(6).filter(\.isNumber)
            return Int(digits).map { $0 * 1024 }
        }
        return nil
    }

    static func ownRSS() -> Int? { rss(pid: Int(getpid())) }

    /// Total CPU time (user + system) of a process in seconds.
    static func cpuSeconds(pid: Int) -> Double? {
        guard let text = readFile("/proc/\(pid)/stat"), let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // Fields after the command: state(0) ... utime(11) stime(12).
        guard fields.count > 12, let u = Double(fields[11]), let s = Double(fields[12]) else { return nil }
        let hz = Double(sysconf(Int32(_SC_CLK_TCK)))
        return (u + s) / hz
    }

    static func readFile(_ path: String) -> String? {
        guard let f = fopen(path, "r") else { return nil }
        defer { fclose(f) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { fread($0.baseAddress!, 1, $0.count, f) }
            if n <= 0 { break }
            out.append(contentsOf: buf[0..<n])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Raises this process's open-file limit to at least `wanted` (the hard limit too when allowed, e.g. as root).
    @discardableResult
    static func raiseFileLimit(to wanted: Int) -> Int {
        var lim = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
        let target = rlim_t(wanted)
        if lim.rlim_cur >= target { return Int(lim.rlim_cur) }
        if lim.rlim_max < target {
            var raised = rlimit(rlim_cur: target, rlim_max: target)
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { return wanted }
        }
        lim.rlim_cur = min(target, lim.rlim_max)
        setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
        return Int(lim.rlim_cur)
    }
}

/// Reads a Prometheus counter from `/metrics` (the first series whose name is one of `names`).
func scrapeMetric(_ endpoint: Endpoint, names: [String]) -> Double? {
    guard let response = try? HTTPClient.request(endpoint, method: "GET", path: "/metrics", timeoutSeconds: 5),
        response.status == 200
    else { return nil }
    for line in response.text.split(separator: "\n") where !line.hasPrefix("#") {
        let parts = line.split(separator: " ")
        guard parts.count >= 2 else { continue }
        var name = parts[0]
        if let brace = name.firstIndex(of: "{") { name = name[..<brace] }
        if names.contains(String(name)), let v = Double(parts[1]) { return v }
    }
    return nil
}
