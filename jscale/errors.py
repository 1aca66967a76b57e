"""The errors jscale reports to its user as one line: input errors (exit status 2) and faults of the machine (1).

The bottom of the package: every other module may raise these, and this module imports nothing of jscale.
"""

from __future__ import annotations

from pathlib import Path


class JscaleError(Exception):
    """An error caused by the user's input; the CLI prints it as one line and exits with status 2."""

    exit_status = 2


class ConfigError(JscaleError):
    pass


class ResourceError(JscaleError):
    """A fault of the machine rather than of the input (a full disk, a read-only directory, a locked database):
    one line naming the path, exit status 1."""

    exit_status = 1


def resource_error(e: OSError, path: str | Path | None = None, doing: str = "") -> ResourceError:
    """An OSError as one line: the path, what was being done, and the system's reason."""
    where = path if path is not None else e.filename
    reason = (e.strerror or str(e) or type(e).__name__).lower()
    if where is None:  # the system did not say which file: say what to do instead of a placeholder
        return ResourceError(f"{doing or 'a write failed'}: {reason}; free space (or fix the permissions) and re-run")
    return ResourceError(f"{where}: {doing + ': ' if doing else ''}{reason}")
