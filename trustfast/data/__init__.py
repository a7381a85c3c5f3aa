"""Built-in datasets (no downloads): small data that ships with installed packages or is generated."""

from trustfast.data.digits import digits

__all__ = ["digits"]
