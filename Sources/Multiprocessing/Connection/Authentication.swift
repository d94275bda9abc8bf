// CPython's connection handshake (multiprocessing/connection.py), so our Listener and Client talk to
// Python's. The listener delivers a challenge and then answers one; the client answers, then delivers.
//
//   challenge: "#CHALLENGE#" + message; a modern message is "{sha256}" + 40 random bytes, a legacy
//              one (Python 3.11 and older) is 20 random bytes and asks for HMAC-MD5.
//   answer:    "{digest}" + HMAC-digest(key, message), or a raw 16-byte HMAC-MD5 for a legacy message.
//   verdict:   "#WELCOME#" or "#FAILURE#".
//
// The MAC covers the whole message, "{sha256}" prefix included, so a peer cannot downgrade the digest.
// Python 3.11 clients do not parse the prefix: they answer any challenge with a raw HMAC-MD5 over the
// whole message, which our listener accepts, as CPython 3.12+ does. Every handshake frame is read with a
// 256-byte limit, so an unauthenticated peer cannot make us allocate more.

/// The handshake's fixed strings and limits.
enum Handshake {
    static let challenge = Array("#CHALLENGE#".utf8)
    static let welcome = Array("#WELCOME#".utf8)
    static let failure = Array("#FAILURE#".utf8)
    /// Random bytes in a challenge we deliver (CPython 3.12+ sends 40).
    static let randomLength = 40
    /// The length of a legacy challenge's message; also the least we accept.
    static let legacyMessageLength = 20
    /// The length of a raw HMAC-MD5 answer.
    static let md5Length = 16
    /// The most any handshake frame may hold.
    static let frameLimit = 256
}

/// The HMAC digests the handshake may name: CPython's allowed set, less the SHA-3 ones.
typealias HandshakeDigest = DigestAlgorithm

extension DigestAlgorithm {
    /// HMAC of `message` under `key`.
    func authenticationCode(_ message: [UInt8], key: [UInt8]) -> [UInt8] {
        authenticationCode(for: message, key: key)
    }

    /// Splits a challenge message or an answer into its digest and payload (CPython's
    /// `_get_digest_name_and_payload`): 16 or 20 bytes mean legacy MD5 without a prefix (nil digest),
    /// anything else must start with a known "{digest}".
    static func parse(_ bytes: [UInt8]) throws -> (digest: HandshakeDigest?, payload: [UInt8]) {
        if bytes.count == Handshake.legacyMessageLength || bytes.count == Handshake.md5Length {
            return (nil, bytes)
        }
        if bytes.first == UInt8(ascii: "{"),
           let close = bytes.prefix(Self.longestName + 2).firstIndex(of: UInt8(ascii: "}")),
           let digest = HandshakeDigest(rawValue: String(decoding: bytes[1..<close], as: UTF8.self)) {
            return (digest, Array(bytes[(close + 1)...]))
        }
        throw MultiprocessingError(
            .authenticationFailed,
            "unsupported message length, missing digest prefix, or unsupported digest (\(bytes.count) bytes)")
    }

    private static let longestName = allCases.map(\.rawValue.utf8.count).max()!
}

/// A fresh challenge: the frame to send, and the message the answer must authenticate.
func makeChallenge() -> (frame: [UInt8], message: [UInt8]) {
    var message = Array("{\(HandshakeDigest.sha256.rawValue)}".utf8)
    var generator = SystemRandomNumberGenerator()
    for _ in 0..<Handshake.randomLength { message.append(generator.next()) }
    return (Handshake.challenge + message, message)
}

/// Checks a peer's answer to our challenge `message`.
///
/// - Throws: ``MultiprocessingError/Code/authenticationFailed`` ("digest received was wrong").
func checkAnswer(_ answer: [UInt8], to message: [UInt8], authkey: [UInt8]) throws {
    let (digest, code) = try HandshakeDigest.parse(answer)
    let expected = (digest ?? .md5).authenticationCode(message, key: authkey)
    guard constantTimeEqual(expected, code) else {
        throw MultiprocessingError(.authenticationFailed, "digest received was wrong")
    }
}

/// Our answer to a peer's challenge frame.
///
/// - Throws: ``MultiprocessingError/Code/authenticationFailed`` when the challenge is malformed.
func answer(toChallenge frame: [UInt8], authkey: [UInt8]) throws -> [UInt8] {
    guard frame.starts(with: Handshake.challenge) else {
        throw MultiprocessingError(.authenticationFailed, "protocol error: expected a challenge, got \(frame.count) other bytes")
    }
    let message = Array(frame.dropFirst(Handshake.challenge.count))
    guard message.count >= Handshake.legacyMessageLength else {
        throw MultiprocessingError(.authenticationFailed, "challenge too short: \(message.count) bytes")
    }
    switch try HandshakeDigest.parse(message).digest {
    case nil:
        return HandshakeDigest.md5.authenticationCode(message, key: authkey)
    case let digest?:
        return Array("{\(digest.rawValue)}".utf8) + digest.authenticationCode(message, key: authkey)
    }
}

/// Checks the peer's verdict on our answer.
///
/// - Throws: ``MultiprocessingError/Code/authenticationFailed`` ("digest sent was rejected").
func checkVerdict(_ frame: [UInt8]) throws {
    guard frame == Handshake.welcome else {
        throw MultiprocessingError(.authenticationFailed, "digest sent was rejected")
    }
}

/// The listener's half: sends a challenge, checks the answer, and tells the peer the verdict
/// (CPython's `deliver_challenge`).
///
/// - Throws: ``MultiprocessingError/Code/authenticationFailed`` ("digest received was wrong") when the
///   answer does not match, after sending `#FAILURE#`.
func deliverChallenge(_ connection: Connection, authkey: [UInt8], deadline: Deadline) throws {
    let (frame, message) = makeChallenge()
    try connection.sendBytes(frame)
    try judgeAnswer(receiveHandshakeFrame(connection, deadline: deadline), to: message, on: connection, authkey: authkey)
}

/// Checks an answer and sends the verdict: `#WELCOME#`, or `#FAILURE#` and a throw.
func judgeAnswer(_ answer: [UInt8], to message: [UInt8], on connection: Connection, authkey: [UInt8]) throws {
    do {
        try checkAnswer(answer, to: message, authkey: authkey)
    } catch {
        try? connection.sendBytes(Handshake.failure)
        throw error
    }
    try connection.sendBytes(Handshake.welcome)
}

/// The client's half: answers the peer's challenge and reads its verdict (CPython's `answer_challenge`).
///
/// - Throws: ``MultiprocessingError/Code/authenticationFailed`` when the challenge is malformed or the
///   peer rejects the answer ("digest sent was rejected").
func answerChallenge(_ connection: Connection, authkey: [UInt8], deadline: Deadline) throws {
    let frame = try receiveHandshakeFrame(connection, deadline: deadline)
    try connection.sendBytes(answer(toChallenge: frame, authkey: authkey))
    try checkVerdict(receiveHandshakeFrame(connection, deadline: deadline))
}

/// One handshake frame of at most 256 bytes; a longer announced length fails before anything is
/// allocated for it (and closes the connection).
private func receiveHandshakeFrame(_ connection: Connection, deadline: Deadline) throws -> [UInt8] {
    do {
        return try connection.receiveBytes(maxLength: Handshake.frameLimit, deadline: deadline)
    } catch let error as MultiprocessingError where error.code == .protocolViolation {
        throw MultiprocessingError(.authenticationFailed, "handshake failed: \(error.message)")
    }
}

