"""The one exception type that reaches the user as a single line.

Anything the user can fix (a bad name, a bad file, missing data) raises
`PlexbenchError`; the CLI prints `plexbench: error: <message>` and exits 2.
Anything else is a bug and keeps its traceback.
"""


class PlexbenchError(Exception):
    """A problem with the user's input or environment; the message is one line."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: a multi-line message would read like a traceback.
        super().__init__(" ".join(str(message).split()))
