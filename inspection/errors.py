"""Errors a user can cause, and the one sentence each becomes.

Everything a person can get wrong — a bad image, dataset, model file or setting, missing weights, a failed
download, a trainer already busy — raises a subclass of `InspectionError`, whose message names the file or
value and says what to do. The CLI and the app print such an error in one place, as one line
(`friendly_error`), never as a traceback. Any other exception is a bug of the program.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class InspectionError(Exception):
    """Base of every error caused by input, settings or the machine (not by a bug of the program)."""

    #: What kind of problem it is, in words, shown before the error's own message.
    what: str = "Invalid input"


class ParameterError(InspectionError, ValueError):
    """A setting has the wrong type, is out of range, or does not apply."""

    what = "Invalid setting"


class ImageLoadError(InspectionError, ValueError):
    """An image could not be read; the message names the file and says why."""

    what = "This image cannot be used"


class ImageSizeError(ImageLoadError):
    """An image was read but is too small, or too long and thin, for a model to judge; the message states the limit."""

    what = "This model cannot judge this image"


class TeachingError(InspectionError, ValueError):
    """An image cannot be taught to a model (another size, kind of picture or channel count than its training
    images), or there is no decision to undo; the message says which and why."""

    what = "This cannot be taught"


class FolderNotFoundError(InspectionError, FileNotFoundError):
    """A folder the user named (typed in the app, given on the command line) does not exist; the message is its
    path, so that the one line reads "Folder not found: /the/path"."""

    what = "Folder not found"


class DatasetError(InspectionError, ValueError):
    """A dataset folder is missing, empty or malformed; the message says which and what is expected."""

    what = "This dataset cannot be used"


class ModelFileError(InspectionError, ValueError):
    """A model file is missing, not ours, of an unsupported version, or damaged."""

    what = "This model cannot be used"


class WeightsNotFoundError(InspectionError, FileNotFoundError):
    """Pretrained weights are needed but cannot be found or downloaded; the message says what to do."""

    what = "The backbone's pretrained weights are missing"


class BackboneWeightsError(InspectionError, ValueError):
    """A weights file does not fit the backbone (wrong architecture, corrupt file)."""

    what = "The backbone's weights do not fit"


class DownloadError(InspectionError, RuntimeError):
    """A download failed (offline, server error, wrong archive); nothing was left behind."""

    what = "The download failed"


class OutputError(InspectionError, OSError):
    """An output (model file, report, folder) cannot be written where the user asked; checked before the work."""

    what = "Cannot write the output"


class NotExplainableError(InspectionError, ValueError):
    """An explanation (Grad-CAM) was asked of a model whose score it is not defined for; the message says why."""

    what = "No Grad-CAM for this model"


class BusyError(InspectionError, RuntimeError):
    """Work was refused because other work of its kind is running (e.g. a training); the message says which."""

    what = "Busy"


# Errors of the standard library a user causes too (a path, a permission, a full disk), with their words.
_OS_ERRORS: tuple[tuple[type[BaseException], str], ...] = (
    (FileNotFoundError, "File or folder not found"),
    (NotADirectoryError, "Not a folder"),
    (IsADirectoryError, "A folder where a file was expected"),
    (PermissionError, "Permission denied"),
    (OSError, "A file operation failed"),
)


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def is_user_error(error: BaseException) -> bool:
    """True for errors caused by input, settings or the machine; False for bugs of the program."""
    return isinstance(error, (InspectionError, OSError, ValueError)) or _is_out_of_memory(error)


def friendly_error(error: BaseException) -> str:
    """One readable line: what went wrong, then the error's own explanation (which names the file or value)."""
    detail = " ".join(str(error).split()) if str(error).strip() else type(error).__name__
    if _is_out_of_memory(error):
        return ("Not enough memory for this step: lower 'batch_size' or the working resolution ('crop'), "
                f"or use fewer images. ({detail})")
    if isinstance(error, BusyError):
        return detail
    if isinstance(error, InspectionError):
        return f"{error.what}: {detail}"
    for kind, what in _OS_ERRORS:
        if isinstance(error, kind):
            return f"{what}: {detail}"
    if isinstance(error, ValueError):
        return f"Invalid input: {detail}"
    return f"Unexpected error ({type(error).__name__}): {detail}"


def run_command(body: Callable[[], int], interrupted: str = "") -> int:
    """Run a command line's body: a user's error becomes one line on stderr (`error: …`) and exit code 2, Ctrl-C exit
    code 130 (saying `interrupted: {interrupted}` when given); a bug keeps its traceback."""
    try:
        return body()
    except KeyboardInterrupt:
        if interrupted:
            print(f"interrupted: {interrupted}", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the one place a user's error becomes one line
        if not is_user_error(error):
            raise
        print(f"error: {friendly_error(error)}", file=sys.stderr)
        return 2
