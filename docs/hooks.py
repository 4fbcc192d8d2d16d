"""MkDocs hook: the pictures the docs show stay where the repository keeps them.

The README's pictures live in `assets/` and the bench's figures in `bench/<name>/`, outside `docs/`. Rather than
copying them into `docs/` (or linking, which does not travel), every PNG under those two folders is handed to the
build as a file of the site at the same path: a page writes `![…](assets/screenshots/home.png)` or
`![…](bench/sweep/sweep.png)`, and `mkdocs build --strict` finds it.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parent.parent
FOLDERS = ("assets", "bench")


def on_files(files: Files, config) -> Files:
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.png")):
            uri = path.relative_to(REPO).as_posix()
            if files.get_file_from_path(uri) is None:
                files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
