"""Built-in datasets (no downloads): data shipped with installed packages, or generated."""

from trustfast.data.digits import digits

__all__ = ["digits"]
