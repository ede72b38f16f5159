"""A private Sendmail (unpacked from Debian's packages) as a real milter client.

Debian's sendmail packages conflict with postfix, so they are never installed: their
.debs (``scripts/install-system-deps`` puts them in ``.cache/debs/``) are unpacked once
into ``.cache/sendmail/<key>/`` with a small syslog shim (there is no /dev/log here, and
without it Sendmail's milter decisions would be lost). Each instance lives in its own
temporary directory, listens on a fresh loopback port, relays everything to smtp-sink
and runs in its own UTS namespace with a dotted hostname (Sendmail sleeps 60 s when its
unqualified host name is unknown). Recipe and traps: ../shared/notes/real-peers.md, 1.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import free_port
from tests.support.postfix import RcptReply, _accepts, wait_for

REPO = Path(__file__).resolve().parents[2]
DEB_CACHE = REPO / ".cache" / "debs"
UNPACKED = REPO / ".cache" / "sendmail"
SHIPPED_MC = REPO / "packaging" / "sendmail" / "danemilter.mc"
PACKAGES = ("sendmail-bin", "sendmail-base", "sendmail-cf", "m4", "liblockfile1", "libwrap0")
HOSTNAME = "mta.sendmail.test"

_START_TIMEOUT = 20.0
_SHIM = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
/* The path is read in a constructor: sendmail clears its environment at start. */
static char path[4096] = "/dev/stderr", ident[64] = "";
__attribute__((constructor)) static void init(void) {
    const char *p = getenv("SYSLOG_FILE");
    if (p) snprintf(path, sizeof path, "%s", p);
}
void openlog(const char *id, int o, int f) { if (id) snprintf(ident, sizeof ident, "%s", id); }
void closelog(void) {}
void vsyslog(int pri, const char *fmt, va_list ap) {
    char b[8192]; struct timespec t; clock_gettime(CLOCK_REALTIME, &t);
    int n = snprintf(b, sizeof b, "%ld.%03ld %s[%d]: ", (long)t.tv_sec,
                     t.tv_nsec / 1000000, ident, getpid());
    n += vsnprintf(b + n, sizeof b - n - 1, fmt, ap);
    if (n > (int)sizeof b - 2) n = sizeof b - 2;
    b[n++] = '\n';
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) { if (write(fd, b, n)) {} close(fd); }
}
void syslog(int p, const char *f, ...) { va_list a; va_start(a, f); vsyslog(p, f, a); va_end(a); }
void __syslog_chk(int p, int fl, const char *f, ...) {
    va_list a; va_start(a, f); vsyslog(p, f, a); va_end(a);
}
void __vsyslog_chk(int p, int fl, const char *f, va_list a) { vsyslog(p, f, a); }
"""


class SendmailError(RuntimeError):
    pass


@dataclass(frozen=True)
class SendmailInstall:
    """The unpacked packages and the compiled shim (shared by every instance)."""

    root: Path
    shim: Path

    @property
    def binary(self) -> Path:
        return self.root / "usr" / "libexec" / "sendmail" / "sendmail"

    @property
    def cf_dir(self) -> Path:
        return self.root / "usr" / "share" / "sendmail" / "cf"

    @property
    def library_path(self) -> str:
        return ":".join(str(p) for p in sorted((self.root / "usr" / "lib").glob("*-linux-gnu")))

    def m4(self, mc: str) -> str:
        """sendmail.cf from ``mc`` text, with the packages' own m4 and cf tree."""
        done = subprocess.run(
            [str(self.root / "usr" / "bin" / "m4"), f"-D_CF_DIR_={self.cf_dir}/",
             str(self.cf_dir / "m4" / "cf.m4"), "-"],
            input=mc, capture_output=True, text=True, check=False)
        if done.returncode != 0 or done.stderr.strip():
            raise SendmailError(f"m4 failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout


def _debs() -> list[Path]:
    """One .deb per package in DEB_CACHE; ``apt-get download`` fetches what is missing."""
    def present() -> dict[str, Path]:
        return {p: found[-1] for p in PACKAGES
                if (found := sorted(DEB_CACHE.glob(f"{p}_*.deb")))}

    debs = present()
    missing = [p for p in PACKAGES if p not in debs]
    if missing:
        DEB_CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["apt-get", "download", *missing], cwd=DEB_CACHE,
                              capture_output=True, text=True, check=False)
        debs = present()
        if done.returncode != 0 or len(debs) != len(PACKAGES):
            raise SendmailError(
                f"no .debs for {missing} in {DEB_CACHE} (run scripts/install-system-deps): "
                f"{done.stderr.strip()[-500:]}")
    return [debs[p] for p in PACKAGES]


@functools.cache
def sendmail_install() -> SendmailInstall:
    """Unpack the .debs and compile the shim, once per set of .debs (kept across runs)."""
    debs = _debs()
    key = hashlib.sha256("\n".join([*(d.name for d in debs), _SHIM]).encode()).hexdigest()[:16]
    target = UNPACKED / key
    install = SendmailInstall(target / "root", target / "syslogshim.so")
    UNPACKED.mkdir(parents=True, exist_ok=True)
    with (UNPACKED / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel sessions: one unpacks, the others wait
        if target.is_dir():
            return install
        building = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=UNPACKED))
        try:
            for deb in debs:
                subprocess.run(["dpkg-deb", "-x", str(deb), str(building / "root")],
                               check=True, capture_output=True)
            # setgid mail: ld.so would ignore LD_LIBRARY_PATH (libwrap.so.0 not found).
            binary = building / install.binary.relative_to(target)
            binary.chmod(binary.stat().st_mode & ~0o6000)
            (building / "syslogshim.c").write_text(_SHIM)
            subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o",
                            str(building / "syslogshim.so"), str(building / "syslogshim.c")],
                           check=True, capture_output=True)
            building.chmod(0o755)
            building.rename(target)
        except (OSError, subprocess.CalledProcessError) as exc:
            shutil.rmtree(building, ignore_errors=True)
            detail = getattr(exc, "stderr", b"") or b""
            raise SendmailError(f"unpacking Sendmail failed: {exc} {detail!r}") from exc
    return install


def shipped_filter(spec: str) -> str:
    """packaging/sendmail/danemilter.mc with its socket (S=) replaced by ``spec``."""
    text, count = re.subn(r"^(INPUT_MAIL_FILTER\(.*?\bS=)[^,']+", rf"\g<1>{spec}",
                          SHIPPED_MC.read_text(), flags=re.MULTILINE)
    if count != 1:
        raise SendmailError(f"{SHIPPED_MC}: want one INPUT_MAIL_FILTER line with S=, "
                            f"found {count}")
    return text


@dataclass(frozen=True)
class Session:
    """One SMTP transaction's replies, as the client saw them."""

    mail: tuple[int, str]
    replies: tuple[RcptReply, ...]
    data: tuple[int, str] | None

    @property
    def queue_id(self) -> str | None:
        """From Sendmail's ``250 2.0.0 QUEUEID Message accepted for delivery``."""
        if self.data is None or self.data[0] != 250:
            return None
        return self.data[1].split()[1]


class PrivateSendmail:
    """``sendmail -bD`` on a fresh port, relaying to ``sink_port``, with ``milter_mc``."""

    def __init__(self, milter_mc: str, sink_port: int,
                 install: SendmailInstall | None = None) -> None:
        self.install = install or sendmail_install()
        self.root = Path(tempfile.mkdtemp(prefix="dm-sendmail-"))
        self.root.chmod(0o755)
        self.port = free_port()
        self.sink_port = sink_port
        self.milter_mc = milter_mc
        self.cf_path = self.root / "sendmail.cf"
        self.log_path = self.root / "maillog"
        self.process: subprocess.Popen[bytes] | None = None

    def mc(self) -> str:
        w, helpfile = self.root, self.install.root / "etc" / "mail" / "helpfile"
        defines = {
            "confDOMAIN_NAME": HOSTNAME, "confDONT_PROBE_INTERFACES": "True",
            "QUEUE_DIR": w / "queue", "confPID_FILE": w / "sendmail.pid",
            "STATUS_FILE": w / "sendmail.st", "ALIAS_FILE": w / "aliases",
            "HELP_FILE": helpfile, "confDEAD_LETTER_DROP": w / "dead.letter",
            "confHOSTS_FILE": w / "hosts", "confSERVICE_SWITCH_FILE": w / "service.switch",
            "confLOG_LEVEL": 14, "confMILTER_LOG_LEVEL": 14,
            "confQUEUE_LA": 100, "confREFUSE_LA": 100, "confDELAY_LA": 0,
            # The milter's unix socket is under /tmp: every directory up the path is
            # checked, and a world-writable one is only trusted for its sticky bit.
            "confDONT_BLAME_SENDMAIL": "GroupWritableDirPathSafe,TrustStickyBit",
            "SMART_HOST": "relay:[127.0.0.1]", "RELAY_MAILER_ARGS": f"TCP $h {self.sink_port}",
        }
        lines = ["divert(-1)", *(f"define(`{k}', `{v}')" for k, v in defines.items()),
                 "divert(0)dnl", "OSTYPE(`linux')dnl", "FEATURE(`no_default_msa')dnl",
                 "FEATURE(`nocanonify')dnl", "FEATURE(`accept_unresolvable_domains')dnl",
                 "FEATURE(`accept_unqualified_senders')dnl",
                 f"DAEMON_OPTIONS(`Port={self.port}, Addr=127.0.0.1, Family=inet, "
                 "Name=MTA-test')dnl",
                 self.milter_mc.rstrip("\n"), "MAILER(`smtp')dnl"]
        return "\n".join(lines) + "\n"

    def configure(self) -> None:
        queue = self.root / "queue"
        queue.mkdir(mode=0o700)
        for name in ("aliases", "sendmail.st"):
            (self.root / name).write_text("")
        (self.root / "service.switch").write_text("hosts files\naliases files\n")  # no DNS
        (self.root / "hosts").write_text(f"127.0.0.1 {HOSTNAME} localhost\n")
        (self.root / "sendmail.mc").write_text(self.mc())
        self.cf_path.write_text(self.install.m4(self.mc()))

    def cf(self) -> str:
        return self.cf_path.read_text()

    def start(self) -> None:
        self.configure()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "LD_LIBRARY_PATH": self.install.library_path,
               "LD_PRELOAD": str(self.install.shim), "SYSLOG_FILE": str(self.log_path)}
        with (self.root / "stderr").open("wb") as out:
            self.process = subprocess.Popen(
                ["unshare", "-u", "sh", "-c", f'hostname {HOSTNAME} && exec "$@"', "sh",
                 str(self.install.binary), "-C", str(self.cf_path), "-bD"],
                stdout=out, stderr=out, env=env)
        wait_for(self._ready, _START_TIMEOUT, "sendmail's 220 banner")

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise SendmailError(f"sendmail exited with {self.process.returncode}: "
                                f"{(self.root / 'stderr').read_text(errors='replace')}"
                                f"{self.log()[-2000:]}")
        return _accepts(self.port)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        shutil.rmtree(self.root, ignore_errors=True)

    def submit(self, recipients: Sequence[str], message: str | None = None,
               sender: str = "alice@client.test", timeout: float = 40.0) -> Session:
        """MAIL, every RCPT (each reply kept), then DATA if ``message`` and one was accepted."""
        with smtplib.SMTP("127.0.0.1", self.port, timeout=timeout) as client:
            client.ehlo("client.test")
            mail = _reply(*client.mail(sender))
            rcpts = tuple(RcptReply(r, *_reply(*client.rcpt(r))) for r in recipients)
            data = None
            if message is not None and any(r.code == 250 for r in rcpts):
                data = _reply(*client.data(message))  # str: smtplib sends CRLF
            return Session(mail, rcpts, data)


def _reply(code: int, text: bytes) -> tuple[int, str]:
    return code, text.decode("utf-8", "replace")
