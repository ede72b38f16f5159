"""The Debian package: built from this tree by packaging/debian/build, installed with
``apt-get install ./danemilter_*.deb`` into a throw-away overlay of this machine (so the
host is untouched), then ``danemilter check-config`` and a milter session through the
installed binary, run as the package's user, behind a real Postfix."""

from __future__ import annotations

import gzip
import os
import re
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from danemilter.cli import build_parser
from tests.support.dnsbed import DnssecTestBed
from tests.support.overlay_root import overlay_command
from tests.support.ports import free_port, tcp_accepts
from tests.support.postfix import PrivatePostfix, SmtpSink, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prebuilt = os.environ.get("DANEMILTER_TEST_DEB")  # CI builds once, tests that one
    if prebuilt:
        return Path(prebuilt)
    out = tmp_path_factory.mktemp("deb")
    began = time.monotonic()
    built = subprocess.run([str(ROOT / "packaging" / "debian" / "build"), str(out)],
                           capture_output=True, text=True, timeout=280, check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    path = Path(built.stdout.strip().splitlines()[-1])
    print(f"built {path.name} ({path.stat().st_size // 1024} KiB) in "
          f"{time.monotonic() - began:.1f} s")
    return path


def _members(deb: Path, part: str) -> tarfile.TarFile:
    data = subprocess.run(["dpkg-deb", part, str(deb)], capture_output=True, check=True,
                          timeout=60).stdout
    import io

    return tarfile.open(fileobj=io.BytesIO(data))


def test_the_package_holds_what_it_must(deb: Path) -> None:
    control = _members(deb, "--ctrl-tarfile")
    conffiles = control.extractfile("./conffiles")
    assert conffiles is not None
    assert conffiles.read().decode().split() == ["/etc/danemilter/danemilter.yaml"]
    files = _members(deb, "--fsys-tarfile")
    names = {m.name.removeprefix(".") : m for m in files.getmembers()}
    link = names["/usr/bin/danemilter"]
    assert link.issym() and link.linkname == "/opt/danemilter/venv/bin/danemilter"
    for unit in ("danemilter.service", "danemilter.socket", "danemilter-policy.socket",
                 "danemilter-ocsp-fetch.timer"):
        assert f"/lib/systemd/system/{unit}" in names
    service = files.extractfile("./lib/systemd/system/danemilter.service")
    assert service is not None
    text = service.read().decode()
    assert "ExecStart=/usr/bin/danemilter run" in text
    assert not re.search(r"^Exec\w*=/usr/local", text, re.M)
    script = files.extractfile("./opt/danemilter/venv/bin/danemilter")
    assert script is not None
    assert script.readline() == b"#!/opt/danemilter/venv/bin/python3\n"  # relocated


def test_the_man_pages_render_and_cover_every_command(deb: Path, tmp_path: Path) -> None:
    files = _members(deb, "--fsys-tarfile")
    pages = {}
    for name in ("./usr/share/man/man8/danemilter.8.gz",
                 "./usr/share/man/man5/danemilter.yaml.5.gz"):
        member = files.extractfile(name)
        assert member is not None
        page = tmp_path / Path(name).stem
        page.write_bytes(gzip.decompress(member.read()))
        rendered = subprocess.run(["groff", "-man", "-Tutf8", "-ww", str(page)],
                                  capture_output=True, text=True, timeout=30, check=True)
        assert rendered.stderr == "", rendered.stderr  # no roff warnings
        pages[page.name] = re.sub(".\b", "", rendered.stdout)  # no bold overstrikes
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for command in commands:  # type: ignore[union-attr]
        assert command in pages["danemilter.8"], command
    for key in ("listen", "resolver", "resolver_check", "metrics", "policy", "cache"):
        assert f"\n   {key}\n" in pages["danemilter.yaml.5"], key


@pytest.fixture
def installed(deb: Path, tmp_path: Path, dns_bed: DnssecTestBed) -> Iterator[tuple[int, Path]]:
    """The package installed in an overlay root, its daemon running as danemilter there."""
    port = free_port()
    log = tmp_path / "daemon.log"
    config = (f"listen: inet:{port}@127.0.0.1\n"
              f"resolver: {{address: 127.0.0.1, port: {dns_bed.resolver_port}}}\n"
              "resolver_check: {signed_name: test.}\ncache: {backend: memory}\n")
    script = f"""
set -e
apt-get install -y -q --no-install-recommends /tmp/{deb.name} > /tmp/apt.log 2>&1 \
    || {{ cat /tmp/apt.log; exit 1; }}
echo "user: $(id -nG danemilter)"
echo "socket dir: $(stat -c '%U:%G %a' /var/spool/postfix/danemilter)"
echo "conffiles: $(dpkg-query -W -f='${{Conffiles}}' danemilter)"
danemilter check-config /etc/danemilter/danemilter.yaml
printf '%s' '{config}' > /tmp/test.yaml
echo "starting"
exec setpriv --reuid=danemilter --regid=danemilter --init-groups \
    danemilter run --config /tmp/test.yaml
"""
    host_before = _host_state()
    argv, env = overlay_command(tmp_path / "overlay", script, [deb])
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT)

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {log.read_text()}")
        return tcp_accepts(port)

    try:
        wait_for(listening, 120, "the installed daemon")
        yield port, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        assert code == 0, log.read_text()
        assert _host_state() == host_before, "the install must stay in the overlay"


def _host_state() -> tuple[str, bool, bool]:
    dpkg = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "danemilter"],
                          capture_output=True, text=True, check=False).stdout
    users = Path("/etc/passwd").read_text()
    return dpkg, "\ndanemilter:" in "\n" + users, Path("/usr/bin/danemilter").exists()


def test_installed_with_apt_it_checks_its_config_and_decides(
        installed: tuple[int, Path]) -> None:
    port, log = installed
    output = log.read_text()
    assert "postfix" in output.split("user: ")[1].splitlines()[0]
    assert "socket dir: danemilter:postfix 750" in output
    assert "/etc/danemilter/danemilter.yaml " in output.split("conffiles: ")[1]
    assert "/etc/danemilter/danemilter.yaml: OK" in output  # check-config, installed
    sink = SmtpSink()
    sink.start()
    postfix = PrivatePostfix(f"inet:127.0.0.1:{port}", sink.port)
    try:
        postfix.start()
        marker = f"<deb.{time.monotonic_ns()}@client.test>"
        sub = postfix.submit(["a@ee.secure.test"], f"Message-ID: {marker}\nSubject: x\n\nhi\n")
        assert [r.code for r in sub.replies] == [250]
        header = sink.wait_for_message(marker)["X-DANE-Status"]
        assert header.startswith("ee.secure.test; status=dane; usage=8")
    finally:
        postfix.stop()
        sink.stop()
