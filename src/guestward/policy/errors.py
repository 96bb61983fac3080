"""Policy errors carry a file and a line, so a person can find the mistake."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True, order=True)
class Diagnostic:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        # A file name is the user's (or an attacker's): a newline in it must not forge another line.
        file = _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", self.file)
        return f"{file}:{self.line}: {self.message}"


class PolicyError(Exception):
    """The only exception the parser raises: one or more diagnostics, each `file:line: message`."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))
