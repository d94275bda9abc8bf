// Message digests and HMAC for the connection handshake, written from the specifications so the package
// needs no cryptography library: MD5 (RFC 1321), SHA-256 and SHA-384 (FIPS 180-4), HMAC (RFC 2104).
// Each digest pads the whole message at once and compresses it block by block; handshake messages are a
// few hundred bytes at most, so there is no incremental interface.

/// A hash function the connection handshake may name, spelled as CPython's `hmac` and `hashlib` spell it.
enum DigestAlgorithm: String, CaseIterable, Sendable {
    case md5, sha256, sha384
}

extension DigestAlgorithm {
    /// The number of bytes in a digest: 16, 32 or 48.
    var digestLength: Int {
        switch self {
        case .md5: 16
        case .sha256: 32
        case .sha384: 48
        }
    }

    /// The number of bytes the compression function consumes at a time (HMAC's `B`): 64 or 128.
    var blockLength: Int {
        switch self {
        case .md5, .sha256: 64
        case .sha384: 128
        }
    }

    /// The digest of `message`.
    func hash(_ message: [UInt8]) -> [UInt8] {
        switch self {
        case .md5: md5Digest(message)
        case .sha256: sha2Digest(message, SHA2Parameters<UInt32>.sha256)
        case .sha384: sha2Digest(message, SHA2Parameters<UInt64>.sha384)
        }
    }

    /// The HMAC (RFC 2104) of `message` under `key`: `H((K ^ opad) || H((K ^ ipad) || message))`, where
    /// `K` is `key` zero-padded to ``blockLength``, after hashing it first if it is longer than that.
    func authenticationCode(for message: [UInt8], key: [UInt8]) -> [UInt8] {
        var block = key.count > blockLength ? hash(key) : key
        block.append(contentsOf: repeatElement(0, count: blockLength - block.count))
        var inner = block.map { $0 ^ 0x36 }
        inner.append(contentsOf: message)
        var outer = block.map { $0 ^ 0x5c }
        outer.append(contentsOf: hash(inner))
        return hash(outer)
    }
}

/// Compares two byte strings in time that depends only on their lengths, not on where they differ.
func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    var difference: UInt8 = 0
    for index in a.indices { difference |= a[index] ^ b[index] }
    return difference == 0
}

// MARK: - Padding

/// `message` followed by the 0x80 byte, zeros, and its length in bits, to a whole number of blocks of
/// `16 * wordBytes` bytes (RFC 1321 section 3.1-3.2, FIPS 180-4 section 5.1). The length field is two
/// words wide; the bit count is written into its low 64 bits, little-endian for MD5, big-endian for SHA-2.
private func padded(_ message: [UInt8], wordBytes: Int, bigEndian: Bool) -> [UInt8] {
    let blockBytes = 16 * wordBytes
    let total = (message.count + 1 + 2 * wordBytes + blockBytes - 1) / blockBytes * blockBytes
    var result = [UInt8]()
    result.reserveCapacity(total)
    result.append(contentsOf: message)
    result.append(0x80)
    result.append(contentsOf: repeatElement(0, count: total - 8 - result.count))
    let bits = UInt64(truncatingIfNeeded: message.count) &* 8
    for index in 0..<8 {
        result.append(UInt8(truncatingIfNeeded: bits >> (bigEndian ? 56 - 8 * index : 8 * index)))
    }
    return result
}

/// Rotates `x` right by `count` bits (0 < count < bit width).
@inline(__always)
private func rotateRight<Word: FixedWidthInteger & UnsignedInteger>(_ x: Word, _ count: Int) -> Word {
    (x >> count) | (x << (Word.bitWidth - count))
}

// MARK: - MD5 (RFC 1321)

/// The MD5 digest of `message`.
private func md5Digest(_ message: [UInt8]) -> [UInt8] {
    let bytes = padded(message, wordBytes: 4, bigEndian: false)
    var state: (a: UInt32, b: UInt32, c: UInt32, d: UInt32) = (0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476)
    var x = [UInt32](repeating: 0, count: 16)
    for block in stride(from: 0, to: bytes.count, by: 64) {
        for i in 0..<16 {
            let at = block + 4 * i
            x[i] = UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
        }
        var (a, b, c, d) = state
        for i in 0..<64 {
            let f: UInt32, k: Int
            switch i >> 4 {
            case 0: f = (b & c) | (~b & d); k = i
            case 1: f = (b & d) | (c & ~d); k = (5 * i + 1) & 15
            case 2: f = b ^ c ^ d; k = (3 * i + 5) & 15
            default: f = c ^ (b | ~d); k = (7 * i) & 15
            }
            // RFC 1321's step: a = b + ((a + F(b, c, d) + X[k] + T[i]) <<< s), then (a, b, c, d) := (d, a, b, c).
            let sum = a &+ f &+ md5Sines[i] &+ x[k]
            (a, d, c) = (d, c, b)
            b = b &+ rotateRight(sum, 32 - md5Shifts[(i >> 4) << 2 | i & 3])
        }
        state = (state.a &+ a, state.b &+ b, state.c &+ c, state.d &+ d)
    }
    var digest = [UInt8]()
    digest.reserveCapacity(16)
    for word in [state.a, state.b, state.c, state.d] {
        for shift in stride(from: 0, to: 32, by: 8) { digest.append(UInt8(truncatingIfNeeded: word >> shift)) }
    }
    return digest
}

/// The left-rotation amounts of RFC 1321's four rounds, four per round.
private let md5Shifts = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21]

/// RFC 1321's table `T`: `T[i]` is the integer part of `4294967296 * abs(sin(i + 1))`.
private let md5Sines: [UInt32] = [
    0xd76a_a478, 0xe8c7_b756, 0x2420_70db, 0xc1bd_ceee, 0xf57c_0faf, 0x4787_c62a, 0xa830_4613, 0xfd46_9501,
    0x6980_98d8, 0x8b44_f7af, 0xffff_5bb1, 0x895c_d7be, 0x6b90_1122, 0xfd98_7193, 0xa679_438e, 0x49b4_0821,
    0xf61e_2562, 0xc040_b340, 0x265e_5a51, 0xe9b6_c7aa, 0xd62f_105d, 0x0244_1453, 0xd8a1_e681, 0xe7d3_fbc8,
    0x21e1_cde6, 0xc337_07d6, 0xf4d5_0d87, 0x455a_14ed, 0xa9e3_e905, 0xfcef_a3f8, 0x676f_02d9, 0x8d2a_4c8a,
    0xfffa_3942, 0x8771_f681, 0x6d9d_6122, 0xfde5_380c, 0xa4be_ea44, 0x4bde_cfa9, 0xf6bb_4b60, 0xbebf_bc70,
    0x289b_7ec6, 0xeaa1_27fa, 0xd4ef_3085, 0x0488_1d05, 0xd9d4_d039, 0xe6db_99e5, 0x1fa2_7cf8, 0xc4ac_5665,
    0xf429_2244, 0x432a_ff97, 0xab94_23a7, 0xfc93_a039, 0x655b_59c3, 0x8f0c_cc92, 0xffef_f47d, 0x8584_5dd1,
    0x6fa8_7e4f, 0xfe2c_e6e0, 0xa301_4314, 0x4e08_11a1, 0xf753_7e82, 0xbd3a_f235, 0x2ad7_d2bb, 0xeb86_d391,
]

// MARK: - SHA-2 (FIPS 180-4)

/// What distinguishes SHA-256 (32-bit words) from SHA-384 (64-bit words); the algorithm is otherwise
/// the same (FIPS 180-4 sections 4.1.2, 4.1.3, 6.2 and 6.5).
private struct SHA2Parameters<Word: FixedWidthInteger & UnsignedInteger & Sendable>: Sendable {
    /// The initial hash value `H(0)`.
    let initial: [Word]
    /// The round constants `K`, one per round.
    let constants: [Word]
    /// The rotations of `Σ0` and `Σ1`.
    let bigSigma0: (Int, Int, Int), bigSigma1: (Int, Int, Int)
    /// The two rotations and the final shift of `σ0` and `σ1`.
    let smallSigma0: (Int, Int, Int), smallSigma1: (Int, Int, Int)
    /// How many words of the final hash value make up the digest.
    let outputWords: Int
}

/// The SHA-2 digest of `message` (FIPS 180-4 sections 5.1, 6.2.2 and 6.4.2).
private func sha2Digest<Word>(_ message: [UInt8], _ parameters: SHA2Parameters<Word>) -> [UInt8] {
    let wordBytes = Word.bitWidth / 8
    let bytes = padded(message, wordBytes: wordBytes, bigEndian: true)
    let k = parameters.constants
    let (s0, s1, t0, t1) = (parameters.bigSigma0, parameters.bigSigma1, parameters.smallSigma0, parameters.smallSigma1)
    var hash = parameters.initial
    var w = [Word](repeating: 0, count: k.count)
    for block in stride(from: 0, to: bytes.count, by: 16 * wordBytes) {
        for t in 0..<16 {
            var word: Word = 0
            for byte in bytes[(block + t * wordBytes)..<(block + (t + 1) * wordBytes)] { word = word << 8 | Word(byte) }
            w[t] = word
        }
        for t in 16..<k.count {
            let x = w[t - 15], y = w[t - 2]
            let sigma0 = rotateRight(x, t0.0) ^ rotateRight(x, t0.1) ^ (x >> t0.2)
            let sigma1 = rotateRight(y, t1.0) ^ rotateRight(y, t1.1) ^ (y >> t1.2)
            w[t] = sigma1 &+ w[t - 7] &+ sigma0 &+ w[t - 16]
        }
        var (a, b, c, d, e, f, g, h) = (hash[0], hash[1], hash[2], hash[3], hash[4], hash[5], hash[6], hash[7])
        for t in 0..<k.count {
            let sum1 = rotateRight(e, s1.0) ^ rotateRight(e, s1.1) ^ rotateRight(e, s1.2)
            let choose = (e & f) ^ (~e & g)
            let temporary1 = h &+ sum1 &+ choose &+ k[t] &+ w[t]
            let sum0 = rotateRight(a, s0.0) ^ rotateRight(a, s0.1) ^ rotateRight(a, s0.2)
            let majority = (a & b) ^ (a & c) ^ (b & c)
            let temporary2 = sum0 &+ majority
            (h, g, f, e, d, c, b, a) = (g, f, e, d &+ temporary1, c, b, a, temporary1 &+ temporary2)
        }
        for (index, value) in [a, b, c, d, e, f, g, h].enumerated() { hash[index] &+= value }
    }
    var digest = [UInt8]()
    digest.reserveCapacity(parameters.outputWords * wordBytes)
    for word in hash.prefix(parameters.outputWords) {
        for shift in stride(from: Word.bitWidth - 8, through: 0, by: -8) {
            digest.append(UInt8(truncatingIfNeeded: word >> shift))
        }
    }
    return digest
}

extension SHA2Parameters<UInt32> {
    /// SHA-256: `H(0)` is the first 32 bits of the fractional parts of the square roots of the first 8
    /// primes, `K` of the cube roots of the first 64 primes.
    static let sha256 = SHA2Parameters(
        initial: [0x6a09_e667, 0xbb67_ae85, 0x3c6e_f372, 0xa54f_f53a, 0x510e_527f, 0x9b05_688c, 0x1f83_d9ab, 0x5be0_cd19],
        constants: [
            0x428a_2f98, 0x7137_4491, 0xb5c0_fbcf, 0xe9b5_dba5, 0x3956_c25b, 0x59f1_11f1, 0x923f_82a4, 0xab1c_5ed5,
            0xd807_aa98, 0x1283_5b01, 0x2431_85be, 0x550c_7dc3, 0x72be_5d74, 0x80de_b1fe, 0x9bdc_06a7, 0xc19b_f174,
            0xe49b_69c1, 0xefbe_4786, 0x0fc1_9dc6, 0x240c_a1cc, 0x2de9_2c6f, 0x4a74_84aa, 0x5cb0_a9dc, 0x76f9_88da,
            0x983e_5152, 0xa831_c66d, 0xb003_27c8, 0xbf59_7fc7, 0xc6e0_0bf3, 0xd5a7_9147, 0x06ca_6351, 0x1429_2967,
            0x27b7_0a85, 0x2e1b_2138, 0x4d2c_6dfc, 0x5338_0d13, 0x650a_7354, 0x766a_0abb, 0x81c2_c92e, 0x9272_2c85,
            0xa2bf_e8a1, 0xa81a_664b, 0xc24b_8b70, 0xc76c_51a3, 0xd192_e819, 0xd699_0624, 0xf40e_3585, 0x106a_a070,
            0x19a4_c116, 0x1e37_6c08, 0x2748_774c, 0x34b0_bcb5, 0x391c_0cb3, 0x4ed8_aa4a, 0x5b9c_ca4f, 0x682e_6ff3,
            0x748f_82ee, 0x78a5_636f, 0x84c8_7814, 0x8cc7_0208, 0x90be_fffa, 0xa450_6ceb, 0xbef9_a3f7, 0xc671_78f2,
        ],
        bigSigma0: (2, 13, 22), bigSigma1: (6, 11, 25),
        smallSigma0: (7, 18, 3), smallSigma1: (17, 19, 10),
        outputWords: 8)
}

extension SHA2Parameters<UInt64> {
    /// SHA-384: SHA-512's compression with its own `H(0)` (the first 64 bits of the fractional parts of
    /// the square roots of the 9th to 16th primes), truncated to six words. `K` is the first 64 bits of
    /// the fractional parts of the cube roots of the first 80 primes.
    static let sha384 = SHA2Parameters(
        initial: [
            0xcbbb_9d5d_c105_9ed8, 0x629a_292a_367c_d507, 0x9159_015a_3070_dd17, 0x152f_ecd8_f70e_5939,
            0x6733_2667_ffc0_0b31, 0x8eb4_4a87_6858_1511, 0xdb0c_2e0d_64f9_8fa7, 0x47b5_481d_befa_4fa4,
        ],
        constants: [
            0x428a_2f98_d728_ae22, 0x7137_4491_23ef_65cd, 0xb5c0_fbcf_ec4d_3b2f, 0xe9b5_dba5_8189_dbbc,
            0x3956_c25b_f348_b538, 0x59f1_11f1_b605_d019, 0x923f_82a4_af19_4f9b, 0xab1c_5ed5_da6d_8118,
            0xd807_aa98_a303_0242, 0x1283_5b01_4570_6fbe, 0x2431_85be_4ee4_b28c, 0x550c_7dc3_d5ff_b4e2,
            0x72be_5d74_f27b_896f, 0x80de_b1fe_3b16_96b1, 0x9bdc_06a7_25c7_1235, 0xc19b_f174_cf69_2694,
            0xe49b_69c1_9ef1_4ad2, 0xefbe_4786_384f_25e3, 0x0fc1_9dc6_8b8c_d5b5, 0x240c_a1cc_77ac_9c65,
            0x2de9_2c6f_592b_0275, 0x4a74_84aa_6ea6_e483, 0x5cb0_a9dc_bd41_fbd4, 0x76f9_88da_8311_53b5,
            0x983e_5152_ee66_dfab, 0xa831_c66d_2db4_3210, 0xb003_27c8_98fb_213f, 0xbf59_7fc7_beef_0ee4,
            0xc6e0_0bf3_3da8_8fc2, 0xd5a7_9147_930a_a725, 0x06ca_6351_e003_826f, 0x1429_2967_0a0e_6e70,
            0x27b7_0a85_46d2_2ffc, 0x2e1b_2138_5c26_c926, 0x4d2c_6dfc_5ac4_2aed, 0x5338_0d13_9d95_b3df,
            0x650a_7354_8baf_63de, 0x766a_0abb_3c77_b2a8, 0x81c2_c92e_47ed_aee6, 0x9272_2c85_1482_353b,
            0xa2bf_e8a1_4cf1_0364, 0xa81a_664b_bc42_3001, 0xc24b_8b70_d0f8_9791, 0xc76c_51a3_0654_be30,
            0xd192_e819_d6ef_5218, 0xd699_0624_5565_a910, 0xf40e_3585_5771_202a, 0x106a_a070_32bb_d1b8,
            0x19a4_c116_b8d2_d0c8, 0x1e37_6c08_5141_ab53, 0x2748_774c_df8e_eb99, 0x34b0_bcb5_e19b_48a8,
            0x391c_0cb3_c5c9_5a63, 0x4ed8_aa4a_e341_8acb, 0x5b9c_ca4f_7763_e373, 0x682e_6ff3_d6b2_b8a3,
            0x748f_82ee_5def_b2fc, 0x78a5_636f_4317_2f60, 0x84c8_7814_a1f0_ab72, 0x8cc7_0208_1a64_39ec,
            0x90be_fffa_2363_1e28, 0xa450_6ceb_de82_bde9, 0xbef9_a3f7_b2c6_7915, 0xc671_78f2_e372_532b,
            0xca27_3ece_ea26_619c, 0xd186_b8c7_21c0_c207, 0xeada_7dd6_cde0_eb1e, 0xf57d_4f7f_ee6e_d178,
            0x06f0_67aa_7217_6fba, 0x0a63_7dc5_a2c8_98a6, 0x113f_9804_bef9_0dae, 0x1b71_0b35_131c_471b,
            0x28db_77f5_2304_7d84, 0x32ca_ab7b_40c7_2493, 0x3c9e_be0a_15c9_bebc, 0x431d_67c4_9c10_0d4c,
            0x4cc5_d4be_cb3e_42b6, 0x597f_299c_fc65_7e2a, 0x5fcb_6fab_3ad6_faec, 0x6c44_198c_4a47_5817,
        ],
        bigSigma0: (28, 34, 39), bigSigma1: (14, 18, 41),
        smallSigma0: (1, 8, 7), smallSigma1: (19, 61, 6),
        outputWords: 6)
}
