"""Errors the pack raises on bad input. Every message names the problem and the fix."""
import os


class SAEError(ValueError):
    """Base class: bad input to the SAE library (a file, a concept, a shape)."""


class SAEFileError(SAEError):
    """An SAE file that cannot be read: missing, truncated, corrupt, pickled, inconsistent."""


class UnknownConceptError(SAEError, KeyError):
    """A concept name that the SAE's concept index does not contain."""

    def __str__(self):  # KeyError would wrap the message in quotes
        return self.args[0] if self.args else ""


class IncompatibleSAEError(SAEError):
    """An SAE that does not fit the model it is applied to (hook point or width)."""


class WriteFailed(SAEError):
    """A file could not be written (full disk, no permission, read-only disk). Nothing was
    replaced: the atomic write leaves an existing file of that name as it was, and no partial file."""

    def __init__(self, path: str, reason: str, fix: str):
        self.path, self.reason, self.fix = path, reason, fix
        folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
        super().__init__(self.says(f"the folder {folder!r}"))

    def says(self, where: str) -> str:
        """The message, naming the folder as `where` (callers that know how the user calls it say so)."""
        return (f"Could not save {os.path.basename(self.path)} in {where}: {self.reason}. {self.fix} Nothing was "
                "overwritten: a file of that name already there is as it was.")


class TrainingCancelled(Exception):
    """Raised inside training when the caller's cancel check says stop."""


# The most characters of one input a message quotes: a 1 MB concept text must not become a 1 MB
# error (ComfyUI keeps every error in its history and sends it to every browser).
MESSAGE_QUOTE_CHARS = 60


def quoted(value, limit: int = MESSAGE_QUOTE_CHARS) -> str:
    """An input as every message of the pack quotes it: its repr, which shows invisible, bidi and
    control characters as escapes ('star\\u202e'), cut to `limit` characters, saying how long the
    whole was."""
    text = repr(value)
    if len(text) <= limit:
        return text
    whole = f" ({len(value):,} characters)" if isinstance(value, str) else ""
    return text[: max(limit - 3, 1)] + "..." + whole
