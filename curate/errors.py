"""Errors that reach the user as one clear line (the CLI prints them without a traceback)."""


class CurateError(Exception):
    """A problem the user can fix; the message says what happened and what to do."""


class WorkspaceBusy(CurateError):
    """Another curate process holds the workspace lock."""
