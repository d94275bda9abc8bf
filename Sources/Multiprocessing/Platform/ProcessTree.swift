#if canImport(Glibc)
import Glibc
#endif
import CMultiprocessing

/// Walks /proc to find the processes descended from a pid.
enum ProcessTree {
    /// Makes this process the subreaper of its descendants: orphans become its children instead of
    /// init's, so it can see (and must reap) every process its children leave behind.
    static func adoptOrphans() throws {
        if mp_set_child_subreaper() != 0 { throw MultiprocessingError.system("prctl(PR_SET_CHILD_SUBREAPER)") }
    }

    /// Sends `signal` to every process descended from `root` (which the caller has stopped): each is
    /// frozen with SIGSTOP while the tree is collected, so none escapes by forking meanwhile, then
    /// signalled and continued. A process that has already ended is skipped.
    static func signalDescendants(of root: Int32, _ signal: Int32) {
        let descendants = descendants(of: root)
        for pid in descendants { Glibc.kill(pid, SIGSTOP) }
        let more = self.descendants(of: root).filter { !descendants.contains($0) }
        for pid in more { Glibc.kill(pid, SIGSTOP) }
        for pid in descendants + more {
            Glibc.kill(pid, signal)
            Glibc.kill(pid, SIGCONT)
        }
    }

    static func descendants(of root: Int32) -> [Int32] {
        var parentOf: [Int32: [Int32]] = [:]
        guard let directory = opendir("/proc") else { return [] }
        defer { closedir(directory) }
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard let pid = Int32(name), let parent = parentPid(of: pid) else { continue }
            parentOf[parent, default: []].append(pid)
        }
        var result: [Int32] = []
        var queue = [root]
        while let next = queue.popLast() {
            for child in parentOf[next] ?? [] {
                result.append(child)
                queue.append(child)
            }
        }
        return result
    }

    private static func parentPid(of pid: Int32) -> Int32? {
        let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { Glibc.close(fd) }
        var buffer = [UInt8](repeating: 0, count: 512)
        let count = read(fd, &buffer, buffer.count)
        guard count > 0 else { return nil }
        let text = String(decoding: buffer.prefix(count), as: UTF8.self)
        guard let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        return fields.count > 1 ? Int32(fields[1]) : nil
    }
}
