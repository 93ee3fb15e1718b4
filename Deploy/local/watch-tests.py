#!/usr/bin/env python3
"""Runs the test command, passing its output through, and ends a run that hangs.

A test run that stops printing for VEIL_TEST_SILENCE_LIMIT seconds (default 480;
the longest test takes about three minutes here) is stuck: some await is never
resumed, and Swift Testing's time limits cannot end a task that ignores
cancellation. Instead of waiting for CI's own limit, this prints the tests that
started and never finished and every thread's stack of the test process (when gdb
is installed), then kills the run and exits non-zero, so the CI log says where it
stuck.

Usage: watch-tests.py COMMAND [ARG...]
"""
import os
import re
import signal
import subprocess
import sys
import threading
import time

LIMIT = float(os.environ.get("VEIL_TEST_SILENCE_LIMIT", "480"))
STARTED = re.compile(r'Test "(.*)" started\.')
ENDED = re.compile(r'Test "(.*)" (?:with \d+ test cases? )?(?:passed|failed|skipped)')


def main() -> int:
    command = sys.argv[1:]
    if not command:
        print(__doc__, file=sys.stderr)
        return 2
    # Line-buffered output from the test process even into a pipe (stdbuf reaches the
    # xctest binary that `swift test` starts).
    if subprocess.run(["sh", "-c", "command -v stdbuf"], capture_output=True).returncode == 0:
        command = ["stdbuf", "-oL", "-eL"] + command
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    last = [time.monotonic()]
    running: dict[str, float] = {}
    lock = threading.Lock()

    def pump() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            sys.stdout.buffer.write(raw)
            sys.stdout.buffer.flush()
            line = raw.decode("utf-8", "replace")
            with lock:
                last[0] = time.monotonic()
                if m := STARTED.search(line):
                    running[m.group(1)] = last[0]
                elif m := ENDED.search(line):
                    running.pop(m.group(1), None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    while process.poll() is None:
        time.sleep(5)
        with lock:
            silent = time.monotonic() - last[0]
            stuck = dict(running)
        if silent < LIMIT:
            continue
        print(f"\n==> no test output for {silent:.0f} s: the run is stuck. Tests started and not finished:", flush=True)
        now = time.monotonic()
        for name, since in sorted(stuck.items(), key=lambda item: item[1]):
            print(f"    {name}  (running {now - since:.0f} s)", flush=True)
        dump_stacks(process.pid)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return 124
    reader.join(timeout=5)
    return process.returncode


def dump_stacks(root: int) -> None:
    """Every thread's stack of the test binaries this run started (its session; gdb, if installed)."""
    pids = subprocess.run(["pgrep", "-s", str(root), "-f", "PackageTests.xctest"], capture_output=True, text=True).stdout.split()
    if not pids:
        print("==> no test process found to inspect", flush=True)
        return
    if subprocess.run(["sh", "-c", "command -v gdb"], capture_output=True).returncode != 0:
        print("==> gdb is not installed: no stacks (apt-get install gdb)", flush=True)
        return
    for pid in pids:
        print(f"==> stacks of test process {pid}", flush=True)
        dump = subprocess.run(["gdb", "-p", pid, "-batch", "-ex", "thread apply all bt 20"],
                              capture_output=True, text=True, timeout=120)
        print(dump.stdout[-200_000:], flush=True)


if __name__ == "__main__":
    sys.exit(main())
