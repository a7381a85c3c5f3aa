"""Built-in datasets (no downloads): data shipped with installed packages, or generated."""

from trustfast.data.digits import colored_digits, digits

__all__ = ["colored_digits", "digits"]
