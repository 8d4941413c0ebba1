"""A folder as storage: a writer killed half-way through a file leaves the file it replaces whole.

Real processes killed with SIGKILL while they write through the filesystem, as Ray's periodic
copy of its experiment state does (`pyarrow.fs.copy_files`, one output stream per file).
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pyarrow.fs

from tunekit import wholefiles

WRITER = """
import sys, pyarrow.fs
from tunekit import wholefiles
fs = wholefiles.filesystem() if sys.argv[1] == "whole" else pyarrow.fs.LocalFileSystem()
with fs.open_output_stream(sys.argv[2]) as out:
    for line in sys.stdin.buffer:  # write each chunk the test sends, and say so
        out.write(line)
        out.flush()
        print("wrote", flush=True)
"""


def kill_half_way(kind: str, path: Path) -> None:
    """Start a writer of `path`, let it write one chunk of two, SIGKILL it."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, kind, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert writer.stdin and writer.stdout
    writer.stdin.write(b'{"trials": [1, 2,\n')
    writer.stdin.flush()
    assert writer.stdout.readline() == b"wrote\n"
    writer.kill()
    writer.wait()


def test_a_writer_killed_half_way_leaves_the_old_file_whole_and_no_part_in_sight(
    tmp_path: Path,
) -> None:
    state = tmp_path / "experiment_state.json"
    state.write_text('{"trials": [1]}')
    kill_half_way("whole", state)
    assert state.read_text() == '{"trials": [1]}'
    fs = wholefiles.filesystem()
    listed = fs.get_file_info(pyarrow.fs.FileSelector(str(tmp_path)))
    assert [i.base_name for i in listed] == ["experiment_state.json"]
    assert len(list(tmp_path.iterdir())) == 2  # the killed writer's hidden part, unlisted

    # what a folder as storage did before (pyarrow's own local filesystem): a cut file
    kill_half_way("local", state)
    assert state.read_text() == '{"trials": [1, 2,\n'


def test_whole_files_copy_trees_like_the_local_filesystem_and_travel_to_other_nodes(
    tmp_path: Path,
) -> None:
    src = tmp_path / "staging"
    (src / "trial_0000").mkdir(parents=True)
    (src / "trial_0000" / "progress.csv").write_text("epoch\n1\n")
    (src / "tuner.pkl").write_bytes(b"\x80" * 3_000_000)  # larger than one copy chunk
    fs = wholefiles.filesystem()
    for _ in range(2):  # the second copy replaces every file
        pyarrow.fs.copy_files(str(src), str(tmp_path / "storage"), destination_filesystem=fs)
    copied = sorted(p.relative_to(tmp_path / "storage") for p in (tmp_path / "storage").rglob("*"))
    assert [str(p) for p in copied] == ["trial_0000", "trial_0000/progress.csv", "tuner.pkl"]
    assert (tmp_path / "storage" / "tuner.pkl").read_bytes() == b"\x80" * 3_000_000
    fs.copy_file(str(src / "tuner.pkl"), str(tmp_path / "copy.pkl"))
    assert (tmp_path / "copy.pkl").read_bytes() == (src / "tuner.pkl").read_bytes()
    # Ray pickles the storage filesystem into every trial, on whichever node runs it
    assert pickle.loads(pickle.dumps(fs)) == fs
