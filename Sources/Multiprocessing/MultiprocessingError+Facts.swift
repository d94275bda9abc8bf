extension MultiprocessingError {
    /// This error with the process and signal it concerns as fields, for packages built on this one
    /// (the MPI pool reports a task's crash in another rank with the pid and signal of its local worker).
    @_spi(Transport) public func withFacts(pid: Int32?, signal: Int32?) -> MultiprocessingError {
        with(pid: pid, signal: signal)
    }
}
