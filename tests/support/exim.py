"""A private Exim 4 (unpacked from Debian's packages, never installed: they would remove
Postfix) running the shipped packaging/exim/ fragments (real-peers.md recipe 2).

The .debs are fetched once into ``.cache/debs/`` and unpacked into ``.cache/exim/<key>/``
with exim4's setuid bit removed (a setuid exim_path makes each delivery re-exec in
secure mode, where LD_LIBRARY_PATH is ignored). Each instance runs in a private mount
namespace with its own passwd/group (the compiled-in Debian-exim user) and resolv.conf
(the DNSSEC bed's relay, ``options trust-ad``) bind-mounted; the host's stay untouched.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import shutil
import smtplib
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support.delivery import wait_for_line
from tests.support.ports import free_port
from tests.support.postfix import RcptReply, _accepts, wait_for

REPO = Path(__file__).resolve().parents[2]
DEB_CACHE = REPO / ".cache" / "debs"
UNPACKED = REPO / ".cache" / "exim"
FRAGMENTS = REPO / "packaging" / "exim"
PACKAGES = ("exim4-daemon-light", "exim4-base", "exim4-config", "libidn12")
EXIM_UID = 990
_MOUNTS = ('for f in resolv.conf passwd group services; do mount --bind "$1/$f" "/etc/$f" '
           '|| exit 1; done; shift; exec "$@"')


class EximError(RuntimeError):
    pass


def _debs() -> list[Path]:
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
            raise EximError(f"no .debs for {missing} in {DEB_CACHE} (run "
                            f"scripts/install-system-deps): {done.stderr.strip()[-500:]}")
    return [debs[p] for p in PACKAGES]


@functools.cache
def exim_root() -> Path:
    """The unpacked packages (once per set of .debs, kept across runs)."""
    debs = _debs()
    key = hashlib.sha256("\n".join(d.name for d in debs).encode()).hexdigest()[:16]
    target = UNPACKED / key
    UNPACKED.mkdir(parents=True, exist_ok=True)
    with (UNPACKED / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_dir():
            building = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=UNPACKED))
            try:
                for deb in debs:
                    subprocess.run(["dpkg-deb", "-x", str(deb), str(building)], check=True,
                                   capture_output=True)
                binary = building / "usr" / "sbin" / "exim4"
                binary.chmod(binary.stat().st_mode & ~0o6000)
                building.chmod(0o755)
                building.rename(target)
            except (OSError, subprocess.CalledProcessError) as exc:
                shutil.rmtree(building, ignore_errors=True)
                raise EximError(f"unpacking Exim failed: {exc}") from exc
    return target


CONFIG = """\
DANEMILTER_SOCKET = {socket}
{macros}keep_environment = LD_LIBRARY_PATH
exim_path = {root}/usr/sbin/exim4
primary_hostname = mta.exim.test
spool_directory = {run}/spool
log_file_path = {run}/log/%slog
pid_file_path = {run}/exim.pid
local_interfaces = <; 127.0.0.1
host_lookup =
rfc1413_hosts =
tls_advertise_hosts =
log_selector = +received_recipients +smtp_confirmation +deliver_time
acl_smtp_rcpt = acl_rcpt
begin acl
acl_rcpt:
.include {fragments}/acl_rcpt.conf
  accept
begin routers
.include {fragments}/routers.conf
mx:
  driver = dnslookup
  dnssec_request_domains = *
  self = send
  transport = danemilter_smtp
begin transports
.include {fragments}/transports.conf
begin retry
*  *  F,1h,1h
"""


class PrivateExim:
    def __init__(self, policy_socket: Path | str, resolv_conf: Path,
                 sts_ca: Path | None = None) -> None:
        self.root = exim_root()
        self.run_dir = Path(tempfile.mkdtemp(prefix="dm-exim-"))
        self.run_dir.chmod(0o755)
        self.port = free_port()
        self.policy_socket = str(policy_socket)
        self.resolv_conf = resolv_conf
        # The roots MTA-STS deliveries verify against (the fragments default to system).
        self.sts_ca = sts_ca
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.run_dir / "exim.conf"

    def configure(self) -> None:
        run = self.run_dir
        macros = ""
        if self.sts_ca is not None:
            # A copy in the run directory: Exim's delivery runs as Debian-exim.
            shutil.copy(self.sts_ca, run / "sts-ca.pem")
            macros = f"DANEMILTER_STS_CA = {run / 'sts-ca.pem'}\n"
        self.config.write_text(CONFIG.format(socket=self.policy_socket, macros=macros,
                                             root=self.root, run=run, fragments=FRAGMENTS))
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        (run / "passwd").write_text(
            passwd + f"Debian-exim:x:{EXIM_UID}:{EXIM_UID}::/nonexistent:/usr/sbin/nologin\n")
        (run / "group").write_text(group + f"Debian-exim:x:{EXIM_UID}:\n")
        shutil.copy(self.resolv_conf, run / "resolv.conf")
        # The delivery world's "smtp" port (its receiver's), else the host's services.
        services = self.resolv_conf.with_name("services")
        shutil.copy(services if services.exists() else "/etc/services", run / "services")
        for name in ("spool", "log"):
            (run / name).mkdir(exist_ok=True)
            shutil.chown(run / name, EXIM_UID, EXIM_UID)

    def command(self, *args: str) -> list[str]:
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", _MOUNTS, "sh",
                str(self.run_dir), "env",
                f"LD_LIBRARY_PATH={self.root}/usr/lib/x86_64-linux-gnu",
                str(self.root / "usr" / "sbin" / "exim4"), "-C", str(self.config), *args]

    def start(self) -> None:
        self.configure()
        with (self.run_dir / "stderr").open("ab") as err:
            self.process = subprocess.Popen(self.command("-bdf", "-oX", str(self.port)),
                                            stdout=subprocess.DEVNULL, stderr=err)
        wait_for(self._ready, 20, "exim's SMTP port")

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise EximError(f"exim exited with {self.process.returncode}: "
                            f"{(self.run_dir / 'stderr').read_text(errors='replace')}")
        return _accepts(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def mainlog(self) -> str:
        path = self.run_dir / "log" / "mainlog"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_log(self, *fragments: str, timeout: float = 30) -> str:
        try:
            return wait_for_line(self.mainlog, fragments, timeout, "exim mainlog")
        except RuntimeError as exc:
            stderr = (self.run_dir / "stderr").read_text(errors="replace")
            raise EximError(f"{exc}\nmainlog:\n{self.mainlog()[-3000:]}\nstderr:\n"
                            f"{stderr[-1500:]}") from None

    def submit(self, recipients: Sequence[str], message: str,
               sender: str = "alice@client.test") -> tuple[list[RcptReply], int | None]:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as client:
            client.ehlo("client.test")
            code, reply = client.mail(sender)
            if code != 250:
                return [RcptReply(r, code, reply.decode()) for r in recipients], None
            replies = []
            for rcpt in recipients:
                code, reply = client.rcpt(rcpt)
                replies.append(RcptReply(rcpt, code, reply.decode("utf-8", "replace")))
            if not any(r.code == 250 for r in replies):
                return replies, None
            code, _ = client.data(message.encode())
            return replies, code


@contextlib.contextmanager
def running(exim: PrivateExim) -> Iterator[PrivateExim]:
    """``exim`` started, and stopped afterwards (also when it did not start)."""
    try:
        exim.start()
        yield exim
    finally:
        exim.stop()
