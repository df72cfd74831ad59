"""Errors of the annotation layer: each message names the source and says what to do."""


class AnnotationError(RuntimeError):
    """Annotations could not be refreshed; the previous table stays as it was."""


class SchemaError(AnnotationError):
    """A source file or payload lacks columns or fields this client needs (the format changed)."""


class PayloadError(AnnotationError):
    """A file or answer could not be read at all (truncated, malformed, wrong format)."""


class SourceSkipped(AnnotationError):
    """The refresh cannot run here for a reason that is not a failure (no key, no redistributable snapshot)."""


class MissingApiKey(SourceSkipped):
    """The source needs an API key and its environment variable is not set; the refresh is skipped."""
