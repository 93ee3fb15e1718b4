import Foundation

/// The processors this process may use, read once.
///
/// Foundation's `ProcessInfo.activeProcessorCount` re-reads the cgroup files
/// (`cpuset.cpus.effective`, `cpu.max`) on every call on Linux: two file opens,
/// reads and closes. Called per envelope batch, that was three `close` system calls
/// per point-of-sale lookup in the key-vault (counted with `perf` on the
/// `sys_enter_close` tracepoint). A container's CPU limit is fixed for the life
/// of the process, so it is read once.
public enum Cores {
    public static let active: Int = max(1, ProcessInfo.processInfo.activeProcessorCount)
}
