import ChatJSON
import Testing

/// JSON numbers of any length are valid JSON: long ones are read without converting their whole text (linear in
/// their length), whole numbers past every Double as infinity (as JavaScript's JSON.parse reads them), longer
/// fractions from their first significant digits. An outside probe saw 311 digits anywhere in an event close the
/// socket ("number too long").
@Suite struct JSONNumberTests {
    private func number(_ text: String) throws -> Double? {
        guard case .array(let values) = try JSONParser.parse(Array("[\(text)]".utf8)), case .number(let d)? = values.first else { return nil }
        return d
    }

    @Test func wholeNumbersPastEveryDoubleAreInfinite() throws {
        #expect(try number("1" + String(repeating: "0", count: 400)) == .infinity)
        #expect(try number("-" + String(repeating: "9", count: 5_000)) == -.infinity)
        #expect(try number("1" + String(repeating: "0", count: 300)) == 1e300)
    }

    @Test func longFractionsAndExponentsAreReadFromTheirFirstDigits() throws {
        #expect(try number("0." + String(repeating: "0", count: 400) + "1") == 0)
        #expect(try number("-0." + String(repeating: "0", count: 400) + "1") == 0)
        #expect(try number("1." + String(repeating: "0", count: 100) + "5") == 1)
        #expect(try number("1." + String(repeating: "0", count: 1_000) + "5") == 1)
        // Against a conversion of the whole text (Swift's, correctly rounded).
        for text in ["3." + String(repeating: "1415926535", count: 10), "-2.718281828" + String(repeating: "459045", count: 30) + "e-12"] {
            #expect(try number(text) == Double(text))
        }
        // 1 + 2^-53 is halfway between 1 and the next double: a digit far past it decides (review: 40 digits did not).
        let halfway = "1.00000000000000011102230246251565404236316680908203125"
        #expect(try number(halfway + String(repeating: "0", count: 100)) == 1)
        #expect(try number(halfway + String(repeating: "0", count: 100) + "1") == 1.0000000000000002)
        // The digits move the exponent as far as the written one does.
        #expect(try number("1" + String(repeating: "0", count: 2_000) + ".0e-2001") == 0.1)
        #expect(try number("1" + String(repeating: "0", count: 60) + ".0e-50") == 1e10)
        #expect(try number("0.00" + String(repeating: "0", count: 70) + "25e+75") == 250)
        #expect(try number("1.0e+" + String(repeating: "0", count: 70) + "2") == 100)
        #expect(try number("1.5e" + String(repeating: "9", count: 80)) == .infinity)
        #expect(try number("-1.5e-" + String(repeating: "9", count: 80)) == 0)
        #expect(try number("2.5e" + String(repeating: "0", count: 80)) == 2.5)
    }

    @Test func malformedNumbersAreStillRefused() {
        for bad in ["01", "1.", "-", "1e", "1.e5", "." + String(repeating: "1", count: 100), "1" + String(repeating: "0", count: 400) + "x"] {
            #expect(throws: JSONParseError.self, "\(bad.prefix(10))") { try JSONParser.parse(Array("[\(bad)]".utf8)) }
        }
    }
}
