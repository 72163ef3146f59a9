"""Errors the pack raises on bad input. Every message names the problem and the fix."""


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


class TrainingCancelled(Exception):
    """Raised inside training when the caller's cancel check says stop."""
