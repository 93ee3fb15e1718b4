import Foundation
import Synchronization
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

extension URLSession {
    /// Sends `request` and returns the body and the HTTP response, and always returns by
    /// `request.timeoutInterval` plus `grace`: when the deadline passes the task is
    /// cancelled and the call throws `URLError(.timedOut)` without waiting for the
    /// session to confirm.
    ///
    /// `URLRequest.timeoutInterval` is an *idle* time-out that the session itself must
    /// enforce, and `data(for:)` ends only when the session calls back. On Linux
    /// (swift-corelibs-foundation over libcurl) that call-back has been lost in known
    /// cases (swift-corelibs-foundation issues 3497, 3876; an unanswered auth challenge,
    /// swift-package-manager PR 9945), leaving the caller suspended for good. A device
    /// or a test waiting on Veil must not inherit that: here the deadline is kept by
    /// a timer of our own, and task cancellation cancels the request as well.
    public func boundedData(for request: URLRequest, grace: TimeInterval = 5) async throws -> (data: Data, response: HTTPURLResponse) {
        let exchange = Exchange()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<(data: Data, response: HTTPURLResponse), any Error>) in
                let task = dataTask(with: request) { data, response, error in
                    if let error {
                        exchange.finish(.failure(error))
                    } else if let response = response as? HTTPURLResponse {
                        exchange.finish(.success((data ?? Data(), response)))
                    } else {
                        exchange.finish(.failure(URLError(.badServerResponse)))
                    }
                }
                guard exchange.start(continuation, task: task) else { return }
                task.resume()
                let seconds = max(request.timeoutInterval, 1) + grace
                DispatchQueue.global().asyncAfter(deadline: .now() + seconds) {
                    exchange.finish(.failure(URLError(.timedOut, userInfo: [
                        NSLocalizedDescriptionKey: "no answer from \(request.url?.absoluteString ?? "?") within \(Int(seconds)) s",
                    ])))
                }
            }
        } onCancel: {
            exchange.finish(.failure(CancellationError()))
        }
    }
}

/// One request's outcome, delivered exactly once: by the session, the deadline or
/// cancellation, whichever comes first. The losers find it finished and do nothing;
/// the winner cancels the session's task if the session has not answered.
private final class Exchange: Sendable {
    private enum State {
        case idle
        case running(CheckedContinuation<(data: Data, response: HTTPURLResponse), any Error>, URLSessionDataTask)
        /// Finished before it started (cancelled first).
        case finished(any Error)
        case done
    }
    private let state = Mutex<State>(.idle)

    /// Installs the continuation; `false` (and the continuation resumed) when already cancelled.
    func start(_ continuation: CheckedContinuation<(data: Data, response: HTTPURLResponse), any Error>, task: URLSessionDataTask) -> Bool {
        let early: (any Error)? = state.withLock { state in
            if case .finished(let error) = state {
                state = .done
                return error
            }
            state = .running(continuation, task)
            return nil
        }
        if let early {
            continuation.resume(throwing: early)
            return false
        }
        return true
    }

    func finish(_ result: Result<(data: Data, response: HTTPURLResponse), any Error>) {
        let running: (CheckedContinuation<(data: Data, response: HTTPURLResponse), any Error>, URLSessionDataTask)? = state.withLock { state in
            switch state {
            case .idle:
                if case .failure(let error) = result { state = .finished(error) }
                return nil
            case .running(let continuation, let task):
                state = .done
                return (continuation, task)
            case .finished, .done:
                return nil
            }
        }
        guard let (continuation, task) = running else { return }
        if case .failure = result { task.cancel() }
        continuation.resume(with: result)
    }
}
