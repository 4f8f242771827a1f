#!/usr/bin/env python3
"""Interleaved A/B timing of whole commands: each iteration runs every command once, in an
order that rotates from one iteration to the next, and times fork/exec/wait with
CLOCK_MONOTONIC; reports median and p90 per command. Used for the "measured interleaved
against the build before it" figures in docs/benchmarks.md, e.g. with two builds copied
side by side (each `bulwark` next to its own `bulwark-sandbox`):

  bench/ab.py 300 "/tmp/old/bulwark exec --config C -- /bin/true" \\
                  "/tmp/new/bulwark exec --config C -- /bin/true"

An argument `{OUT}` is replaced by a fresh empty directory (made under $TMPDIR before the
timer starts) for each run, for `bulwark run --out {OUT} ...`. Output goes to /dev/null; a
command that exits non-zero stops the script."""
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time

def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    runs, cmds = int(sys.argv[1]), [shlex.split(c) for c in sys.argv[2:]]
    for c in cmds:
        c[0] = shutil.which(c[0]) or sys.exit(f"{c[0]}: not found")
    outs = tempfile.mkdtemp(prefix="bulwark-ab.")
    null = os.open("/dev/null", os.O_WRONLY)
    times = [[] for _ in cmds]
    warmup = 10
    try:
        for i in range(warmup + runs):
            order = list(range(len(cmds)))
            order = order[i % len(order):] + order[:i % len(order)]
            for k in order:
                argv = [tempfile.mkdtemp(dir=outs) if a == "{OUT}" else a for a in cmds[k]]
                t0 = time.monotonic_ns()
                pid = os.posix_spawn(argv[0], argv, os.environ,
                                     file_actions=[(os.POSIX_SPAWN_DUP2, null, 1),
                                                   (os.POSIX_SPAWN_DUP2, null, 2)])
                _, st = os.waitpid(pid, 0)
                dt = (time.monotonic_ns() - t0) / 1e6
                if st != 0:
                    sys.exit(f"{' '.join(argv)}: exit status {st}")
                if i >= warmup:
                    times[k].append(dt)
    finally:
        shutil.rmtree(outs, ignore_errors=True)
    for k, c in enumerate(sys.argv[2:]):
        t = sorted(times[k])
        print(f"{statistics.median(t):8.3f} ms  p90 {t[int(len(t) * .9)]:8.3f}  {c}")

main()
