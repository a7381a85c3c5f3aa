"""The package's version and its warning class, below every layer (anything may import them)."""

__version__ = "0.1.0"


class TrustfastWarning(UserWarning):
    """Warnings raised by trustfast (fallbacks, skipped steps)."""
