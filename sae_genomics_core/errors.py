"""The one root of the errors a user can cause and fix. Each says what went wrong (its message) and what
to do (`fix`); the Dagster layer turns any of them into a failed step with both, and a bug (any other
exception) still surfaces as one."""

from __future__ import annotations


class SaeGenomicsError(Exception):
    """An error the user can fix; `fix` says how (a class default, or given when raised)."""

    fix: str = ""

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        if fix is not None:
            self.fix = fix

    def explain(self) -> str:
        """The message, then the fix unless the message already says it."""
        message = str(self)
        return message if not self.fix or self.fix in message else f"{message}\nfix: {self.fix}"


class SettingsError(SaeGenomicsError, ValueError):
    """A setting out of range or of an unknown kind."""

    fix = "change the setting named in the message (the run config in the UI, or the settings object)"


class InputError(SaeGenomicsError, ValueError):
    """An input table or file is missing something a stage needs."""

    fix = "materialise the upstream assets the message names, then run this one again"
