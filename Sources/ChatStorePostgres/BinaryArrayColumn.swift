import NIOCore
import PostgresNIO

/// One column of a batch's rows (`text[]` or `bigint[]`), bound to a statement in PostgreSQL's binary array format
/// in one pass: the size is summed first, then every element is stored straight into the reserved bytes. A Swift
/// array bound as it is goes through `ByteBuffer`'s checked writes three times per element (length placeholder,
/// bytes, length), which was 5 % of the machine's CPU at full load (`perf` on `send-load`). A `nil` element is a
/// real SQL `NULL`.
///
/// The format (`array_recv`): the number of dimensions (0 for an empty array, else 1), whether any element is
/// `NULL`, the element type's OID, then for the one dimension its length and lower bound (1), then each element as
/// its byte count (-1 for `NULL`) and its bytes.
struct BinaryArrayColumn<Element: BinaryArrayElement>: PostgresDynamicTypeEncodable, Sendable {
    private(set) var values: [Element?] = []

    var psqlType: PostgresDataType { Element.arrayType }
    var psqlFormat: PostgresFormat { .binary }
    var isEmpty: Bool { values.isEmpty }

    mutating func append(_ value: Element?) { values.append(value) }

    func encode<JSONEncoder: PostgresJSONEncoder>(into buffer: inout ByteBuffer, context: PostgresEncodingContext<JSONEncoder>) {
        var size = 0
        var hasNull = false
        for value in values {
            size += 4
            if let value { size += value.binaryByteCount } else { hasNull = true }
        }
        buffer.writeInteger(Int32(isEmpty ? 0 : 1))
        buffer.writeInteger(Int32(hasNull ? 1 : 0))
        buffer.writeInteger(Element.elementType.rawValue)
        guard !isEmpty else { return }
        buffer.writeInteger(Int32(values.count))
        buffer.writeInteger(Int32(1))
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { out in
            var at = 0
            for value in values {
                guard let value else {
                    out.storeBytes(of: Int32(-1).bigEndian, toByteOffset: at, as: Int32.self)
                    at += 4
                    continue
                }
                let count = value.binaryByteCount
                out.storeBytes(of: Int32(count).bigEndian, toByteOffset: at, as: Int32.self)
                value.storeBinary(into: UnsafeMutableRawBufferPointer(rebasing: out[(at + 4)..<(at + 4 + count)]))
                at += 4 + count
            }
            return at
        }
    }
}

/// A value `BinaryArrayColumn` can hold: its PostgreSQL types and its binary form.
protocol BinaryArrayElement: Sendable {
    static var elementType: PostgresDataType { get }
    static var arrayType: PostgresDataType { get }
    /// The size of the binary form (constant time).
    var binaryByteCount: Int { get }
    /// Stores the binary form into `out`, which is exactly `binaryByteCount` bytes.
    func storeBinary(into out: UnsafeMutableRawBufferPointer)
}

extension String: BinaryArrayElement {
    static var elementType: PostgresDataType { .text }
    static var arrayType: PostgresDataType { .textArray }
    var binaryByteCount: Int { utf8.count }

    func storeBinary(into out: UnsafeMutableRawBufferPointer) {
        var text = self
        text.withUTF8 { utf8 in out.copyMemory(from: UnsafeRawBufferPointer(utf8)) }
    }
}

extension Int64: BinaryArrayElement {
    static var elementType: PostgresDataType { .int8 }
    static var arrayType: PostgresDataType { .int8Array }
    var binaryByteCount: Int { 8 }

    func storeBinary(into out: UnsafeMutableRawBufferPointer) {
        out.storeBytes(of: bigEndian, as: Int64.self)
    }
}
