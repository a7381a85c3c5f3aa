"""Built-in datasets (no downloads): data shipped with installed packages, or generated."""

from trustfast.data.digits import colored_digits, digits
from trustfast.data.faces import face_pairs, synthetic_faces

__all__ = ["colored_digits", "digits", "face_pairs", "synthetic_faces"]
