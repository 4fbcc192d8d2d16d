"""Images named by URI (``s3://bucket/line-3/``, ``gs://…``, ``file:///data/…``) rather than by local path.

Read through pyarrow's file systems, which every install has (Streamlit needs pyarrow) and which reach object
stores when their credentials are configured the usual way. A folder URI lists the images directly in it, as a
local folder does; a file is recognised on a rerun by its URI, size and modification time.
"""

from __future__ import annotations

import posixpath
from typing import Any

from ..errors import ImageLoadError, ParameterError
from .images import IMAGE_EXTENSIONS


def is_uri(source: object) -> bool:
    """Whether `source` is a URI with a scheme (``scheme://…``), not a local path."""
    return isinstance(source, str) and "://" in source and source.split("://", 1)[0].isidentifier()


def _file_system(uri: str) -> tuple[Any, str]:
    from pyarrow import fs

    try:
        return fs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as error:  # pyarrow raises ArrowInvalid (a ValueError) or ArrowIOError
        raise ParameterError(f"{uri}: cannot open this URI ({error})") from error


def uri_name(uri: str) -> str:
    """The file name at the end of a URI."""
    return posixpath.basename(uri.rstrip("/"))


def list_uri_images(uri: str) -> list[str] | None:
    """The image URIs directly in the folder `uri`, sorted by name (hidden files skipped); None when `uri` is a
    file, not a folder. A URI that names nothing raises ParameterError."""
    from pyarrow import fs

    file_system, path = _file_system(uri)
    info = file_system.get_file_info(path)
    if info.type == fs.FileType.NotFound:
        raise ParameterError(f"{uri}: not found")
    if info.type != fs.FileType.Directory:
        return None
    prefix = uri.rstrip("/")
    entries = file_system.get_file_info(fs.FileSelector(path, recursive=False))
    names = sorted(entry.base_name for entry in entries
                   if entry.type == fs.FileType.File and not entry.base_name.startswith(".")
                   and posixpath.splitext(entry.base_name)[1].lower() in IMAGE_EXTENSIONS)
    return [f"{prefix}/{name}" for name in names]


def uri_key(uri: str) -> dict[str, Any] | None:
    """How a URI's file is recognised on a rerun (as `batch.file_key` does for paths); None when it is not there."""
    from pyarrow import fs

    try:
        file_system, path = _file_system(uri)
        info = file_system.get_file_info(path)
    except (ParameterError, OSError):
        return None
    if info.type != fs.FileType.File:
        return None
    return {"path": uri, "size": info.size, "mtime_ns": info.mtime_ns}


def read_uri(uri: str) -> bytes:
    """The bytes of the file at `uri`; ImageLoadError (one line naming it) when it cannot be read."""
    try:
        file_system, path = _file_system(uri)
        with file_system.open_input_stream(path) as stream:
            return stream.read()
    except (ParameterError, OSError) as error:
        raise ImageLoadError(f"{uri}: cannot read ({error})") from error
