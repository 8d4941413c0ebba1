"""A local folder as storage where every file is whole: its old contents or its new, never a part.

Ray copies its experiment state (tuner.pkl, experiment_state-*.json, the searcher's state, each
trial's progress.csv) into the storage again every few seconds, each file truncated and then
rewritten in place. A driver killed during a copy (SIGKILL, a lost node, a power cut of the
process) left a file empty or cut short, and `--resume` then failed on it. Through this
filesystem each file is written beside its place under a hidden name and renamed over it when
done: a rename within a folder is atomic, so a kill at any moment leaves the old file or the new.
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import PurePosixPath

import pyarrow
import pyarrow.fs

PARTIAL = ".partial"  # suffix of a file being written; a kill may leave one, which nobody lists


def filesystem() -> pyarrow.fs.PyFileSystem:
    """The local filesystem, with whole-file writes (paths as for pyarrow's LocalFileSystem)."""
    return pyarrow.fs.PyFileSystem(WholeFiles())


def _partial(name: str) -> bool:
    return name.startswith(".") and name.endswith(PARTIAL)


class _Renamed(io.FileIO):
    """A new file written under a hidden name, renamed into place when closed."""

    def __init__(self, path: str):
        p = PurePosixPath(path)
        self.final = path
        self.temp = str(p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}{PARTIAL}"))
        super().__init__(self.temp, "wb")

    def close(self) -> None:
        if not self.closed:
            super().close()
            os.replace(self.temp, self.final)


class WholeFiles(pyarrow.fs.FileSystemHandler):
    """pyarrow's LocalFileSystem, but a file opened for writing appears only once closed."""

    def __init__(self) -> None:
        self.local = pyarrow.fs.LocalFileSystem()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WholeFiles)

    def __reduce__(
        self,
    ) -> tuple[
        type, tuple[()]
    ]:  # a trial's node gets its own (pyarrow's LocalFileSystem pickles so)
        return WholeFiles, ()

    def get_type_name(self) -> str:
        return "tunekit-whole-files"

    def normalize_path(self, path: str) -> str:
        return self.local.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pyarrow.fs.FileInfo]:
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector: pyarrow.fs.FileSelector) -> list:
        return [i for i in self.local.get_file_info(selector) if not _partial(i.base_name)]

    def create_dir(self, path: str, recursive: bool) -> None:
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.local.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("tunekit never empties the root of the filesystem")

    def delete_file(self, path: str) -> None:
        self.local.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.local.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with (
            self.local.open_input_stream(src) as source,
            self.open_output_stream(dest, None) as out,
        ):
            while chunk := source.read(1 << 20):
                out.write(chunk)

    def open_input_stream(self, path: str) -> pyarrow.NativeFile:
        return self.local.open_input_stream(path)

    def open_input_file(self, path: str) -> pyarrow.NativeFile:
        return self.local.open_input_file(path)

    def open_output_stream(self, path: str, metadata: object) -> pyarrow.NativeFile:
        return pyarrow.PythonFile(_Renamed(path), mode="w")

    def open_append_stream(self, path: str, metadata: object) -> pyarrow.NativeFile:
        return self.local.open_append_stream(path)
