"""The error raised for dataset files and names the user can fix."""
from draw.errors import DrawError


class DatasetError(DrawError):
    """An unknown dataset, a missing or corrupt file, a failed download: one line with the fix."""
