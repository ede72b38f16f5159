"""What a test daemon holds, from /proc: threads and open file descriptors."""

from __future__ import annotations

import os
from pathlib import Path


def thread_count(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("Threads:")))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
