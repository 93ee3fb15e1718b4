/// A small RFC 4180 CSV reader: quoted fields, doubled quotes, commas and line breaks
/// inside quotes, CRLF or LF line ends. Reads row by row from bytes.
public struct CSVReader: Sequence, IteratorProtocol {
    let bytes: [UInt8]
    var index = 0
    /// 1-based number of the row last returned.
    public private(set) var line = 0

    public init(_ bytes: [UInt8]) {
        self.bytes = bytes
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { index = 3 }  // UTF-8 byte-order mark
    }

    /// The next row's fields, or nil at the end. A row with an unterminated quote is returned as read.
    public mutating func next() -> [String]? {
        var row = CSVRow()
        guard nextRow(into: &row) else { return nil }
        return (0..<row.count).map { row.string($0) }
    }

    /// Reads the next row into `row` (its storage reused, so reading a file allocates
    /// per row nothing but growth), or returns false at the end. The same rows as `next()`:
    /// runs of plain bytes are copied at once rather than byte by byte.
    public mutating func nextRow(into row: inout CSVRow) -> Bool {
        guard index < bytes.count else { return false }
        row.removeAll()
        line += 1
        let quote = UInt8(ascii: "\""), comma = UInt8(ascii: ","), lf = UInt8(ascii: "\n"), cr = UInt8(ascii: "\r")
        index = bytes.withUnsafeBufferPointer { buffer in
            var i = index, runStart = index, quoted = false
            func takeRun() { row.bytes.append(contentsOf: UnsafeBufferPointer(rebasing: buffer[runStart..<i])) }
            while i < buffer.count {
                let byte = buffer[i]
                if quoted {
                    guard byte == quote else { i += 1; continue }
                    takeRun()
                    if i + 1 < buffer.count, buffer[i + 1] == quote {  // a doubled quote is one quote
                        row.bytes.append(quote)
                        i += 2
                    } else {
                        quoted = false
                        i += 1
                    }
                    runStart = i
                    continue
                }
                switch byte {
                case quote:
                    takeRun()
                    quoted = true
                    i += 1
                    runStart = i
                case comma:
                    takeRun()
                    row.ends.append(row.bytes.count)
                    i += 1
                    runStart = i
                case lf:
                    takeRun()
                    row.ends.append(row.bytes.count)
                    return i + 1
                case cr:
                    takeRun()
                    row.ends.append(row.bytes.count)
                    return i + 1 < buffer.count && buffer[i + 1] == lf ? i + 2 : i + 1
                default:
                    i += 1
                }
            }
            takeRun()
            row.ends.append(row.bytes.count)
            return buffer.count
        }
        return true
    }

    /// Quotes a field if it needs it.
    public static func escape(_ field: String) -> String {
        guard field.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) else { return field }
        return "\"" + field.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}

/// One CSV row as its fields' unquoted bytes, back to back, and where each field ends.
public struct CSVRow: Sendable {
    public fileprivate(set) var bytes: [UInt8] = []
    fileprivate var ends: [Int] = []

    public init() {}

    /// The number of fields (a blank line has one, empty).
    public var count: Int { ends.count }

    /// Field `index`'s bytes as read (not checked as UTF-8).
    public subscript(index: Int) -> ArraySlice<UInt8> {
        bytes[(index == 0 ? 0 : ends[index - 1])..<ends[index]]
    }

    /// Field `index` decoded as UTF-8 (invalid sequences replaced, as `String(decoding:as:)` does).
    public func string(_ index: Int) -> String { String(decoding: self[index], as: UTF8.self) }

    fileprivate mutating func removeAll() {
        bytes.removeAll(keepingCapacity: true)
        ends.removeAll(keepingCapacity: true)
    }
}
