import Distributed
import Multiprocessing

// Shared objects behind a manager process, beside CPython's Manager doing the same in the same run.

/// The benchmark's own shared object: a counter with one method (CPython's side registers a class).
distributed actor BenchCounter: SharedObject {
    var total = 0

    distributed func increment(by amount: Int) -> Int {
        total += amount
        return total
    }
}

/// Runs `body` against a fresh manager child and shuts it down afterwards.
private func withManager<T: Sendable>(_ body: @escaping @Sendable (SharedObjectManager) async throws -> T) throws -> T {
    try runAwaited {
        let manager = try SharedObjectManager()
        do {
            let result = try await body(manager)
            try await manager.shutdown()
            return result
        } catch {
            try? manager.process?.kill()
            throw error
        }
    }
}

/// Set then get of a small value in a shared dictionary: pairs per second.
private func dictionarySetGet() throws -> Double {
    try withManager { manager in
        let dictionary = try await manager.makeDictionary([String: Int].self)
        for i in 0..<1_000 {
            try await dictionary.setValue(i, forKey: "key")
            _ = try await dictionary.value(forKey: "key")
        }
        let count = 20_000
        let start = now()
        for i in 0..<count {
            try await dictionary.setValue(i, forKey: "key")
            guard try await dictionary.value(forKey: "key") == i else { throw BenchError("wrong value read back") }
        }
        return Double(count) / (now() - start)
    }
}

/// A distributed method's round trip: calls per second.
private func actorCalls() throws -> Double {
    try withManager { manager in
        let counter = try await manager.make(BenchCounter.self)
        for _ in 0..<1_000 { _ = try await counter.increment(by: 1) }
        let count = 40_000
        let start = now()
        for _ in 0..<count { _ = try await counter.increment(by: 1) }
        let rate = Double(count) / (now() - start)
        guard try await counter.increment(by: 0) == count + 1_000 else { throw BenchError("the counter lost calls") }
        return rate
    }
}

/// 1,000 updates of a shared dictionary in one batched call, in updates per second; the same updates
/// one call each are printed beside it.
private func dictionaryBatch() throws -> Double {
    try withManager { manager in
        let dictionary = try await manager.makeDictionary([Int: Int].self)
        let batch = Dictionary(uniqueKeysWithValues: (0..<1_000).map { ($0, $0 * 2) })
        try await dictionary.update(batch)
        let rounds = 200
        var start = now()
        for _ in 0..<rounds { try await dictionary.update(batch) }
        let batched = Double(rounds * batch.count) / (now() - start)
        start = now()
        for (key, value) in batch { try await dictionary.setValue(value, forKey: key) }
        let each = Double(batch.count) / (now() - start)
        guard try await dictionary.count() == batch.count else { throw BenchError("updates were lost") }
        print("MANAGER manager-dict-batch batched=\(Int(batched)) updates/s one-by-one=\(Int(each)) updates/s ratio=\(Int(batched / each))")
        return batched
    }
}

let managerWorkloads: [Workload] = [
    Workload(name: "manager-dict-setget", unit: "pairs/s", higherIsBetter: true, swift: dictionarySetGet, python: """
        import time
        from multiprocessing.managers import SyncManager
        def main(d, n):
            set_item, get_item = d.__setitem__, d.__getitem__
            for i in range(500):
                set_item('key', i); get_item('key')
            start = time.perf_counter()
            for i in range(n):
                set_item('key', i)
                if get_item('key') != i:
                    raise SystemExit('wrong value read back')
            return n / (time.perf_counter() - start)
        if __name__ == '__main__':
            with SyncManager() as manager:
                print(main(manager.dict(), 5000))
        """),
    Workload(name: "manager-actor-call", unit: "calls/s", higherIsBetter: true, swift: actorCalls, python: """
        import time
        from multiprocessing.managers import BaseManager
        class Counter:
            def __init__(self):
                self.total = 0
            def increment(self, amount):
                self.total += amount
                return self.total
        class CounterManager(BaseManager):
            pass
        CounterManager.register('Counter', Counter)
        def main(counter, n):
            increment = counter.increment
            for _ in range(500):
                increment(1)
            start = time.perf_counter()
            for _ in range(n):
                increment(1)
            return n / (time.perf_counter() - start)
        if __name__ == '__main__':
            with CounterManager() as manager:
                print(main(manager.Counter(), 10000))
        """),
    Workload(name: "manager-dict-batch", unit: "updates/s", higherIsBetter: true, swift: dictionaryBatch, python: """
        import time
        from multiprocessing.managers import SyncManager
        def main(d, rounds):
            batch = {i: i * 2 for i in range(1000)}
            update = d.update
            update(batch)
            start = time.perf_counter()
            for _ in range(rounds):
                update(batch)
            return rounds * len(batch) / (time.perf_counter() - start)
        if __name__ == '__main__':
            with SyncManager() as manager:
                print(main(manager.dict(), 200))
        """),
]
