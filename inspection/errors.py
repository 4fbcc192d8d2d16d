"""Turning the errors a user can cause into one friendly sentence (for the app, never a traceback)."""

from __future__ import annotations

from .backbones import BackboneWeightsError, WeightsNotFoundError
from .data import DatasetError
from .images import ImageLoadError
from .modelfile import ModelFileError

# (error type, prefix) in priority order: the first matching type wins (subclasses before their bases).
_PREFIXES: tuple[tuple[type[BaseException], str], ...] = (
    (ImageLoadError, "This image cannot be used"),
    (DatasetError, "This dataset cannot be used"),
    (ModelFileError, "This model cannot be used"),
    (WeightsNotFoundError, "The backbone's pretrained weights are missing"),
    (BackboneWeightsError, "The backbone's weights do not fit"),
    (MemoryError, "Not enough memory"),
    (FileNotFoundError, "File or folder not found"),
    (NotADirectoryError, "Not a folder"),
    (PermissionError, "Permission denied"),
    (ValueError, "Invalid input"),
)


def _is_out_of_memory(error: BaseException) -> bool:
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


def is_user_error(error: BaseException) -> bool:
    """True for errors caused by input (files, settings, data, machine), False for bugs of the program."""
    if _is_out_of_memory(error):
        return True
    from .download import DownloadError
    from .jobs import TrainingBusyError

    return isinstance(error, (DownloadError, TrainingBusyError, OSError)) or any(
        isinstance(error, kind) for kind, _ in _PREFIXES)


def friendly_error(error: BaseException) -> str:
    """One readable message: what went wrong and the error's own explanation (which names the file/value)."""
    detail = str(error).strip() or type(error).__name__
    if _is_out_of_memory(error):
        return ("Not enough memory for this step: lower 'batch_size' or the working resolution ('crop'), "
                f"or use fewer images. ({detail.splitlines()[0]})")
    from .download import DownloadError
    from .jobs import TrainingBusyError

    if isinstance(error, (DownloadError, TrainingBusyError)):
        return detail
    for kind, prefix in _PREFIXES:
        if isinstance(error, kind):
            return f"{prefix}: {detail}"
    if isinstance(error, OSError):
        return f"A file operation failed: {detail}"
    return f"Unexpected error ({type(error).__name__}): {detail}"
