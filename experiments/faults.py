"""Local faults that waiting cannot cure (a full disk, a read-only folder), told apart from outages and put in
one line: every command reports them as ``error: ...``, never as a traceback."""

from __future__ import annotations

import errno
import os
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

EXIT_BAD_INPUT = 2  # every bad input of every command: a config, a file, a store, a local fault


def say_error(line: str) -> None:
    """The one ``error: ...`` line every command prints for what stopped it, on stderr."""
    print(f"error: {line}", file=sys.stderr, flush=True)


def exit_with_error(line: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Every command's boundary: the ``error: ...`` line, then exit status ``code``."""
    say_error(line)
    sys.exit(code)


LOCAL_FAULTS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})


def local_fault(err: BaseException | None) -> OSError | None:
    """The OSError behind ``err`` when it is one of LOCAL_FAULTS, else None."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in LOCAL_FAULTS:
            return err
        err = err.__cause__ or err.__context__
    return None


def first_line(err: BaseException) -> str:
    """The error's message as one line: its first line, or its type's name when it has no message."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def describe_fault(fault: OSError) -> str:
    """``No space left on device: /path``: the reason in the system's words, then the file."""
    return (
        f"{fault.strerror or os.strerror(fault.errno)}: {fault.filename}"
        if fault.filename
        else (fault.strerror or str(fault))
    )


def unwritable(folder: Path) -> OSError | None:
    """Why no file can be created in ``folder`` (a read-only or full file system), or None when one can."""
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        err.filename = str(folder)  # not the probe's own name
        return err if err.errno in LOCAL_FAULTS else None
    return None


def unwritable_files_line(fault: OSError) -> str:
    """The error line of a command that cannot write its own files (its store, its output folders)."""
    fault.filename = os.path.abspath(fault.filename) if fault.filename else fault.filename  # Hydra's are relative
    return (
        f"cannot write the command's files ({describe_fault(fault)}); run from a folder you can write, or set "
        "hydra.run.dir (hydra.sweep.dir for -m) to one"
    )
