"""Errors every layer may raise and only the command line prints.

`UserError` is a problem with the user's input (a file, an argument): the CLI prints it as one line naming
the file and what is wrong, exits with code 2 and writes nothing. It lives here, not in the CLI, so that no
lower layer imports the command line.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 2, no traceback."""
