"""Placeholder: the `ocsp` command is being written."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: "argparse._SubParsersAction[Any]") -> None:
    commands.add_parser("ocsp")
