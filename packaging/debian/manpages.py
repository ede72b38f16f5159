"""danemilter(8) from the argument parser and danemilter.yaml(5) from the commented policy
file, as roff (man(7) macros). Generated at package build time, so the pages say what
the code and the shipped file say.

usage: python manpages.py OUTDIR ETC_YAML VERSION
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from danemilter.cli import build_parser


def roff(text: str) -> str:
    """Escape text for a roff line: backslashes, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line
                     for line in text.splitlines())


def _subcommands(parser: argparse.ArgumentParser, prefix: str
                 ) -> Iterator[tuple[str, argparse.ArgumentParser, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                full = f"{prefix} {name}".strip()
                yield full, sub, helps.get(name, "")
                yield from _subcommands(sub, full)


def _options(parser: argparse.ArgumentParser) -> list[str]:
    lines = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        if action.option_strings:
            names = ", ".join(action.option_strings)
            if action.nargs != 0:
                names += f" {action.metavar or action.dest.upper()}"
        else:
            names = str(action.metavar or action.dest)
        text = (action.help or "") % {"default": action.default} if action.help else ""
        lines += [".TP", f".B {roff(names)}", roff(text) if text else ""]
    return [line for line in lines if line != ""]


def danemilter_8(version: str, date: str) -> str:
    parser = build_parser()
    out = [f'.TH DANEMILTER 8 "{date}" "danemilter {version}" "System Administration"',
           ".SH NAME", "danemilter \\- per\\-recipient DANE policy milter and verification "
           "helper", ".SH SYNOPSIS", ".B danemilter", "[\\-\\-verbose] COMMAND [ARGS]",
           ".SH DESCRIPTION",
           roff("danemilter decides, while a message is being submitted, whether each "
                "recipient's domain can be reached over DANE-authenticated TLS (RFC 7672): "
                "DNSSEC-validated MX, address and TLSA records. Per the policy in "
                "/etc/danemilter/danemilter.yaml (see danemilter.yaml(5)) it tags, defers, "
                "rejects or holds. It is a milter for Postfix and Sendmail, a socketmap "
                "TLS policy service, and a set of commands that share its verification "
                "core and cache."),
           ".SH GLOBAL OPTIONS", *_options(parser), ".SH COMMANDS"]
    for name, sub, summary in _subcommands(parser, ""):
        out += [f'.SS "{roff(name)}"']
        if summary:
            out += [roff(summary[0].upper() + summary[1:] + "."), ".PP"]
        out += [".nf", roff(sub.format_usage().removeprefix("usage: ").strip()), ".fi"]
        if sub.description:
            out += [".PP", roff(sub.description)]
        out += _options(sub)
    out += [".SH FILES", ".TP", ".I /etc/danemilter/danemilter.yaml",
            "The policy file (danemilter.yaml(5)).", ".TP",
            ".I /var/spool/postfix/danemilter/danemilter.sock",
            "The milter socket inside Postfix's chroot.", ".TP",
            ".I /var/lib/danemilter/", "The cache (SQLite).",
            ".SH SIGNALS", ".TP", ".B SIGHUP",
            "Re\\-read the policy file and re\\-check the resolver; an invalid file keeps "
            "the running policy.", ".TP", ".B SIGTERM",
            "Stop: close the sockets, end the connections.",
            ".SH SEE ALSO", "danemilter.yaml(5), postconf(5), unbound(8)"]
    return "\n".join(out) + "\n"


_KEY = re.compile(r"^([a-z_]+):")


def danemilter_yaml_5(yaml_text: str, version: str, date: str) -> str:
    """Each top-level key of the shipped file with the comments above and beside it."""
    out = [f'.TH DANEMILTER.YAML 5 "{date}" "danemilter {version}" "File Formats"',
           ".SH NAME", "danemilter.yaml \\- policy file of danemilter(8)",
           ".SH DESCRIPTION",
           roff("YAML, read once at start and again on SIGHUP. Unknown keys and wrong "
                "types are errors, reported with file and line by "
                "danemilter check-config. Without any file, built-in defaults apply. "
                "The keys below are those of the shipped file, with its comments."),
           ".SH KEYS"]
    lines = yaml_text.splitlines()
    index = 0
    while index < len(lines) and lines[index].startswith("#"):
        index += 1  # the file's own header: how to check and apply it, said above
    comments: list[str] = []
    while index < len(lines):
        line = lines[index]
        match = _KEY.match(line)
        if line.startswith("#"):
            comments.append(line[1:].strip())
        elif match:
            block = [line]
            index += 1
            while index < len(lines) and (lines[index].startswith((" ", "#  ")) or
                                          not lines[index].strip()):
                if not lines[index].strip():
                    break
                block.append(lines[index])
                index += 1
            out += [f'.SS "{match.group(1)}"']
            if comments:
                out += [roff(" ".join(c for c in comments if c)), ".PP"]
            out += [".nf", ".RS", roff("\n".join(block)), ".RE", ".fi"]
            comments = []
            continue
        index += 1
    out += [".SH FILES", ".I /etc/danemilter/danemilter.yaml",
            ".SH SEE ALSO", "danemilter(8)"]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    outdir, etc_yaml, version = Path(argv[0]), Path(argv[1]), argv[2]
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    (outdir / "danemilter.8").write_text(danemilter_8(version, date))
    (outdir / "danemilter.yaml.5").write_text(
        danemilter_yaml_5(etc_yaml.read_text(), version, date))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
