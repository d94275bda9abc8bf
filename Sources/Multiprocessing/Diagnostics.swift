import Logging

/// Where the package reports what it does on its own behalf: a fork server restarted, a child that could not
/// start, a dead holder's lock taken over, a listener that ran out of descriptors. Nothing is printed by
/// default; give the package a logger to see them:
///
/// ```swift
/// import Logging
/// Multiprocessing.diagnostics = Logger(label: "multiprocessing")
/// ```
///
/// Children inherit nothing of it: set it in the child's task too when its diagnostics matter.
public var diagnostics: Logger {
    get { diagnosticsStorage.withLock { $0 } }
    set { diagnosticsStorage.withLock { $0 = newValue } }
}

private let diagnosticsStorage = ForkSafeMutex(Logger(label: "multiprocessing", factory: { _ in SwiftLogNoOpLogHandler() }))
