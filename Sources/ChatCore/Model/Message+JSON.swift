import ChatJSON

extension Message {
    /// Reads a message back from its wire shape (as sealed in history chunks).
    public init?(json: JSONValue) {
        guard let id = json["id"]?.stringValue, let threadId = json["threadId"]?.stringValue,
            let seq = json["seq"]?.intValue, let senderId = json["senderId"]?.stringValue,
            let type = json["type"]?.stringValue.flatMap(MessageType.init(rawValue:)),
            let content = json["content"]?.stringValue,
            let createdAt = json["createdAt"]?.stringValue.flatMap(Timestamp.init(iso8601:))
        else { return nil }
        self.init(
            id: id, threadId: threadId, seq: seq, senderId: senderId, type: type, content: content,
            attachmentUrl: json["attachmentUrl"]?.stringValue, attachmentType: json["attachmentType"]?.stringValue,
            createdAt: createdAt,
            editedAt: json["editedAt"]?.stringValue.flatMap(Timestamp.init(iso8601:)),
            deletedAt: json["deletedAt"]?.stringValue.flatMap(Timestamp.init(iso8601:)),
            tempId: json["tempId"]?.stringValue)
    }
}

extension Timestamp {
    /// Parses `YYYY-MM-DDTHH:MM:SS.mmmZ` (the only form this broker writes).
    public init?(iso8601 text: String) {
        let b = Array(text.utf8)
        guard b.count == 24, b[4] == 0x2D, b[7] == 0x2D, b[10] == 0x54, b[13] == 0x3A, b[16] == 0x3A, b[19] == 0x2E,
            b[23] == 0x5A
        else { return nil }
        func num(_ r: Range<Int>) -> Int? {
            var v = 0
            for i in r {
                guard b[i] >= 0x30 && b[i] <= 0x39 else { return nil }
                v = v * 10 + Int(b[i] - 0x30)
            }
            return v
        }
        guard let y = num(0..<4), let m = num(5..<7), let d = num(8..<10), let hh = num(11..<13), let mm = num(14..<16),
            let ss = num(17..<19), let ms = num(20..<23), (1...12).contains(m), (1...31).contains(d)
        else { return nil }
        // Days-from-civil.
        let yy = m <= 2 ? y - 1 : y
        let era = (yy >= 0 ? yy : yy - 399) / 400
        let yoe = yy - era * 400
        let doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146_097 + doe - 719_468
        self.init(millis: (Int64(days) * 86400 + Int64(hh * 3600 + mm * 60 + ss)) * 1000 + Int64(ms))
    }
}
