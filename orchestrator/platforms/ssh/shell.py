"""Remote commands as fixed ``/bin/sh`` scripts with every variable part a quoted word.

Design choice: values are never interpolated into a script's text; the login shell only
ever sees single-quoted words, so a job name like ``$(rm -rf ~)`` is just a string.
"""

from __future__ import annotations

import shlex
from typing import Sequence


def quote(value: object) -> str:
    """One shell word, safe whatever it contains (spaces, quotes, ``$(...)``)."""
    return shlex.quote(str(value))


def join(argv: Sequence[object]) -> str:
    """A command line whose words reach the program exactly as given."""
    return " ".join(quote(a) for a in argv)


def sh(script: str, *args: object) -> str:
    """``/bin/sh -c SCRIPT orch ARGS...``: a fixed script, variable parts as ``$1..$n``.

    Design choice: values are never interpolated into the script text; the login
    shell only ever sees single-quoted words, so a job name like ``$(rm -rf ~)`` is
    just a string to the remote side.
    """
    return join(["/bin/sh", "-c", script, "orch", *args])
