"""torch.profiler's native log lines, kept off a user's terminal.

The profiler (kineto) writes to file descriptor 2 from C++ at every start and stop
("USDT ... profiler_start"), and on a CUDA build of torch without a GPU an error per start
("gpuGetDeviceCount failed with code 35"): noise on a CPU-only run. `profiler_log_filtered()`
captures fd 2 for a block and writes back every line that is not one of those.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# The profiler's own lines: start/stop markers, the GPU probe of a CUDA build without a GPU,
# and the note about memory allocated before it started.
NOISE = re.compile(r"profiler_st(art|op)|gpuGetDeviceCount failed|"
                   r"allocated before the profiling started")


@contextlib.contextmanager
def profiler_log_filtered():
    """For the block, native writes to fd 2 go to a temporary file; afterwards its lines
    other than NOISE go to stderr (a real native error stays visible)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            kept = [line for line in log.read().decode(errors="replace").splitlines()
                    if line.strip() and not NOISE.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)
