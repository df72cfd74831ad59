from sae_genomics_core.errors import SaeGenomicsError

"""Errors of the annotation layer: each message names the source and says what to do."""


class AnnotationError(SaeGenomicsError, RuntimeError):
    """Annotations could not be refreshed; the previous table stays as it was."""

    fix = "the previous table was kept; fix what the message names and refresh again"


class SchemaError(AnnotationError):
    """A source file or payload lacks columns or fields this client needs (the format changed)."""


class PayloadError(AnnotationError):
    """A file or answer could not be read at all (truncated, malformed, wrong format)."""


class SourceSkipped(AnnotationError):
    """The refresh cannot run here for a reason that is not a failure (no key, no redistributable snapshot)."""


class MissingApiKey(SourceSkipped):
    """The source needs an API key and its environment variable is not set; the refresh is skipped."""
