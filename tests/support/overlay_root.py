"""Run a command as root in a throw-away copy of this machine's root file system.

A private mount namespace (``unshare -m``) with an overlay over ``/``: the command sees
the machine as it is and may install packages, add users, write /etc; every change goes
to a tmpfs that vanishes with the namespace. The network (loopback daemons of the test)
is shared. For testing what a package's installation does without doing it to the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

_ENTER = r"""
set -eu
base=$1; shift
mount -t tmpfs -o mode=0755 overlay-root "$base"
mkdir "$base/upper" "$base/work" "$base/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
mount --bind /proc "$base/root/proc"
mount --rbind /dev "$base/root/dev"
mount --rbind /sys "$base/root/sys"
for file in "$@"; do cp "$file" "$base/root/tmp/"; done
exec chroot "$base/root" /bin/bash -c "$OVERLAY_SCRIPT"
"""


def overlay_command(workdir: Path, script: str, files: Sequence[Path] = ()) -> tuple[
        list[str], dict[str, str]]:
    """argv and extra environment for subprocess: ``script`` (bash) runs chrooted in the
    overlay, with ``files`` copied into its /tmp; the last command may ``exec`` a daemon,
    which is then the process subprocess started (unshare and chroot exec, not fork)."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = ["unshare", "-m", "--propagation", "private", "bash", "-c", _ENTER, "enter",
            str(workdir), *map(str, files)]
    return argv, {"OVERLAY_SCRIPT": script}
