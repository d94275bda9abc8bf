#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Multiprocessing

// The pure-Swift digests and HMAC of Platform/Digest.swift, against the published test vectors and,
// for many random keys and messages, against CPython's hashlib and hmac.

@Suite struct DigestTests {
    // MARK: Published vectors

    /// The RFC 1321 (appendix A.5) test suite.
    @Test func md5TestSuite() {
        let suite = [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            ("abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"),
            ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", "d174ab98d277d9f5a5611c2c9f419d9f"),
            (String(repeating: "1234567890", count: 8), "57edf4a22be3c955ac49da2e2107b67a"),
        ]
        for (message, digest) in suite {
            #expect(hexString(DigestAlgorithm.md5.hash(Array(message.utf8))) == digest, "MD5(\"\(message)\")")
        }
    }

    /// FIPS 180-4 examples: "abc", the 448-bit and the 896-bit messages.
    @Test func shaExamples() {
        let short = "abc"
        let medium = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
        let long = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"
        let expectations: [(DigestAlgorithm, String, String)] = [
            (.sha256, short, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            (.sha256, medium, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
            (.sha256, long, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"),
            (.sha384, short, "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"),
            (.sha384, medium, "3391fdddfc8dc7393707a65b1b4709397cf8b1d162af05abfe8f450de5f36bc6b0455a8520bc4e6f5fe95b1fe3c8452b"),
            (.sha384, long, "09330c33f71147e83d192fc782cd1b4753111b173b3b05d22fa08086e3b0f712fcc7c71a557e2db966c3e9fa91746039"),
        ]
        for (algorithm, message, digest) in expectations {
            #expect(hexString(algorithm.hash(Array(message.utf8))) == digest, "\(algorithm)(\(message.utf8.count) bytes)")
        }
    }

    /// RFC 2202 HMAC-MD5 test cases 1 to 3.
    @Test func hmacMD5() {
        let cases: [(key: [UInt8], message: [UInt8], code: String)] = [
            ([UInt8](repeating: 0x0b, count: 16), Array("Hi There".utf8), "9294727a3638bb1c13f48ef8158bfc9d"),
            (Array("Jefe".utf8), Array("what do ya want for nothing?".utf8), "750c783e6ab0b503eaa86e310a5db738"),
            ([UInt8](repeating: 0xaa, count: 16), [UInt8](repeating: 0xdd, count: 50), "56be34521d144c88dbb8c733f0e8b3f6"),
        ]
        for (number, test) in zip(1..., cases) {
            #expect(hexString(DigestAlgorithm.md5.authenticationCode(for: test.message, key: test.key)) == test.code, "case \(number)")
        }
    }

    /// RFC 4231 HMAC-SHA-256 and HMAC-SHA-384 test cases 1 to 4, 6 and 7 (case 5 tests truncation).
    @Test func hmacSHA2() {
        let largeKey = [UInt8](repeating: 0xaa, count: 131)
        let cases: [(number: Int, key: [UInt8], message: [UInt8], sha256: String, sha384: String)] = [
            (1, [UInt8](repeating: 0x0b, count: 20), Array("Hi There".utf8),
             "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
             "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6"),
            (2, Array("Jefe".utf8), Array("what do ya want for nothing?".utf8),
             "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
             "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649"),
            (3, [UInt8](repeating: 0xaa, count: 20), [UInt8](repeating: 0xdd, count: 50),
             "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
             "88062608d3e6ad8a0aa2ace014c8a86f0aa635d947ac9febe83ef4e55966144b2a5ab39dc13814b94e3ab6e101a34f27"),
            (4, Array(1...25), [UInt8](repeating: 0xcd, count: 50),
             "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
             "3e8a69b7783c25851933ab6290af6ca77a9981480850009cc5577c6e1f573b4e6801dd23c4a7d679ccf8a386c674cffb"),
            (6, largeKey, Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8),
             "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
             "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c60c2ef6ab4030fe8296248df163f44952"),
            (7, largeKey, Array(("This is a test using a larger than block-size key and a larger than block-size data. "
                                 + "The key needs to be hashed before being used by the HMAC algorithm.").utf8),
             "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
             "6617178e941f020d351e2f254e8fd32c602420feb0b8fb9adccebb82461e99c5a678cc31e799176d3860e6110c46523e"),
        ]
        for test in cases {
            #expect(hexString(DigestAlgorithm.sha256.authenticationCode(for: test.message, key: test.key)) == test.sha256,
                    "HMAC-SHA-256 case \(test.number)")
            #expect(hexString(DigestAlgorithm.sha384.authenticationCode(for: test.message, key: test.key)) == test.sha384,
                    "HMAC-SHA-384 case \(test.number)")
        }
    }

    @Test func digestLengths() {
        #expect(DigestAlgorithm.allCases.map(\.digestLength) == [16, 32, 48])
        #expect(DigestAlgorithm.allCases.map(\.rawValue) == ["md5", "sha256", "sha384"])
        for algorithm in DigestAlgorithm.allCases {
            for length in [0, 1, 55, 56, 63, 64, 111, 112, 127, 128, 1000] {
                let message = [UInt8](repeating: 0x61, count: length)
                #expect(algorithm.hash(message).count == algorithm.digestLength)
                #expect(algorithm.authenticationCode(for: message, key: message).count == algorithm.digestLength)
            }
        }
    }

    @Test func constantTimeComparison() {
        let bytes: [UInt8] = Array(0..<48)
        #expect(constantTimeEqual([], []))
        #expect(constantTimeEqual(bytes, bytes))
        for index in [0, 17, 47] {
            var other = bytes
            other[index] ^= 0x80
            #expect(!constantTimeEqual(bytes, other), "differs at \(index)")
        }
        #expect(!constantTimeEqual(bytes, Array(bytes.dropLast())))
        #expect(!constantTimeEqual(Array(bytes.dropLast()), bytes))
        #expect(!constantTimeEqual([], [0]))
        #expect(!constantTimeEqual(bytes, bytes + [0]))
    }

    // MARK: Against CPython

    /// Every message length from 0 to 300 under keys of the interesting lengths, then every interesting
    /// message length (block boundaries for 64- and 128-byte blocks) under every interesting key length,
    /// all random bytes, for every algorithm: one python3 run computes `hashlib.new` and `hmac.new` for
    /// all of them.
    @Test func matchesCPython() throws {
        let keyLengths = [0, 1, 20, 63, 64, 65, 127, 128, 129, 200]
        let messageLengths = [0, 1, 55, 56, 57, 63, 64, 65, 111, 112, 113, 119, 120, 127, 128, 129, 191, 192, 255, 256, 300]
        var random = SystemRandomNumberGenerator()
        func randomBytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in random.next() } }
        var cases: [(algorithm: DigestAlgorithm, key: [UInt8], message: [UInt8])] = []
        for algorithm in DigestAlgorithm.allCases {
            for length in 0...300 {
                cases.append((algorithm, randomBytes(keyLengths[length % keyLengths.count]), randomBytes(length)))
            }
            for keyLength in keyLengths {
                for length in messageLengths { cases.append((algorithm, randomBytes(keyLength), randomBytes(length))) }
            }
        }
        let input = cases.map { "\($0.algorithm.rawValue) \(hexString($0.key)) \(hexString($0.message))\n" }.joined()
        let output = try runPython(Self.referenceScript, input: input)
        let lines = output.split(separator: "\n")
        try #require(lines.count == cases.count, "python printed \(lines.count) lines for \(cases.count) cases: \(output.prefix(500))")
        for (test, line) in zip(cases, lines) {
            let expected = line.split(separator: " ").map(String.init)
            let description = "\(test.algorithm) key \(hexString(test.key)) message \(hexString(test.message))"
            #expect([hexString(test.algorithm.hash(test.message)),
                     hexString(test.algorithm.authenticationCode(for: test.message, key: test.key))] == expected,
                    "\(description)")
        }
    }

    /// Reads "NAME KEYHEX MESSAGEHEX" lines and prints "DIGEST HMAC" in hex for each.
    static let referenceScript = """
        import sys, hashlib, hmac
        for line in sys.stdin:
            name, key, message = line.split(" ")
            key, message = bytes.fromhex(key), bytes.fromhex(message.strip())
            print(hashlib.new(name, message).hexdigest(), hmac.new(key, message, name).hexdigest())
        """
}

// MARK: - Helpers

/// Lower-case hexadecimal, two digits a byte (as Python's `hexdigest`).
private func hexString(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var text = [UInt8]()
    text.reserveCapacity(bytes.count * 2)
    for byte in bytes {
        text.append(digits[Int(byte >> 4)])
        text.append(digits[Int(byte & 15)])
    }
    return String(decoding: text, as: UTF8.self)
}

/// Runs `timeout 60 python3 -c script` with `input` (via a temporary file) on its standard input and
/// returns its standard output; the run is bounded by `timeout`, which kills python after 60 seconds.
/// Throws unless python exits with status 0.
private func runPython(_ script: String, input: String) throws -> String {
    struct PythonFailed: Error, CustomStringConvertible { let description: String }
    var template = Array("/tmp/digest-tests-XXXXXX".utf8CString)
    let fd = mkstemp(&template)
    guard fd >= 0 else { throw PythonFailed(description: "mkstemp: errno \(errno)") }
    let path = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    defer { unlink(path) }
    let bytes = Array(input.utf8)
    var written = 0
    while written < bytes.count {
        let result = bytes[written...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if result < 0 && errno == EINTR { continue }
        guard result > 0 else { close(fd); throw PythonFailed(description: "write: errno \(errno)") }
        written += result
    }
    close(fd)
    // The script holds no single quotes, so it can be quoted whole for the shell.
    precondition(!script.contains("'"))
    guard let pipe = popen("timeout 60 python3 -c '\(script)' < \(path)", "r") else {
        throw PythonFailed(description: "popen: errno \(errno)")
    }
    var output = [UInt8]()
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = buffer.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, pipe) }
        if count == 0 { break }
        output.append(contentsOf: buffer[..<count])
    }
    let status = pclose(pipe)
    let text = String(decoding: output, as: UTF8.self)
    guard status == 0 else { throw PythonFailed(description: "python3 exited with wait status \(status): \(text.prefix(500))") }
    return text
}
