import Foundation
import VeilCore

/// Runs a CPU-bound transform over a batch in a task group, on contiguous
/// chunks (a few per core, so that a core that finishes early takes the next
/// chunk instead of idling), and returns the results in input order.
enum ParallelBatch {
    static func map<Item: Sendable, Output: Sendable>(
        _ items: [Item], _ transform: @escaping @Sendable (Item) -> Output
    ) async -> [Output] {
        let cores = Cores.active
        guard items.count > 1, cores > 1 else { return items.map(transform) }
        let chunks = min(items.count, cores * 4)
        let chunkSize = (items.count + chunks - 1) / chunks
        return await withTaskGroup(of: (Int, [Output]).self) { group in
            for start in stride(from: 0, to: items.count, by: chunkSize) {
                let end = min(start + chunkSize, items.count)
                group.addTask { (start, items[start..<end].map(transform)) }
            }
            var chunks: [(Int, [Output])] = []
            for await chunk in group { chunks.append(chunk) }
            chunks.sort { $0.0 < $1.0 }
            var results: [Output] = []
            results.reserveCapacity(items.count)
            for chunk in chunks { results.append(contentsOf: chunk.1) }
            return results
        }
    }
}
