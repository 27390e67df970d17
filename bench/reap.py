#!/usr/bin/env python3
"""Run a command as a child subreaper, so that the CPU time of its whole
process tree is counted, orphans included.

    python3 bench/reap.py CMD [ARG...]

`/usr/bin/time CMD` counts CMD and the descendants that were waited for.
`spark/merge.py` starts the JVM (and the JVM the Python workers) and exits
without waiting for it, so the JVM's CPU seconds, nearly all of the job's,
were lost (bench/README.md, "Merge on Spark": the 5.9 s figure of round 1).
Here every orphan of the tree is re-parented to this process
(PR_SET_CHILD_SUBREAPER, Linux 3.4+) and reaped by it, so its rusage rolls
into this process's RUSAGE_CHILDREN, which `/usr/bin/time` around this
process reports. Waits until the last descendant has exited. Exits with
CMD's status. On stderr, last line: `tree cpu: USER SYS` (seconds).
"""
import ctypes
import os
import resource
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"reap: prctl failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 2
    child = subprocess.Popen(sys.argv[1:])
    status = child.wait()
    # Every orphaned descendant is now ours: reap until none is left.
    while True:
        try:
            os.wait()
        except ChildProcessError:
            break
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"tree cpu: {ru.ru_utime:.2f} {ru.ru_stime:.2f}", file=sys.stderr)
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    sys.exit(main())
