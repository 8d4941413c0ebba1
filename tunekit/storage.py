"""Where a sweep's results live: Ray's checkpoints and experiment state, and the plan it runs.

A local folder (one machine), a folder every node mounts, or cloud storage: `s3://bucket/prefix`,
`gs://...`, or an S3-compatible store through pyarrow's URI options
(`s3://bucket/prefix?endpoint_override=HOST:PORT&scheme=http`). The spec's `sweep.storage` wins
over $TUNEKIT_STORAGE (a cluster's default), which wins over ./runs. Before anything starts, the
driver checks that it can write there, and the sweep checks that every node that runs trials can
read what the driver wrote (`sweep.start`, through `cluster.failing_nodes`).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.fs

from tunekit import wholefiles
from tunekit.errors import TunekitError, first_line
from tunekit.plan import Plan, differences

if TYPE_CHECKING:
    from tunekit.spec import ExperimentSpec

STORAGE_ENV = "TUNEKIT_STORAGE"
PLAN_FILE = "tunekit_plan.json"  # the plan a sweep runs, beside Ray's experiment state
EXAMPLE = "s3://my-bucket/tunekit"


class StorageError(TunekitError):
    """The results storage cannot be used, or holds something in the way: nothing was started."""

    exit_code = 2


def source(spec: ExperimentSpec) -> str:
    """Which setting chose the storage, to name it in errors."""
    return (
        "sweep.storage"
        if spec.sweep.storage
        else STORAGE_ENV
        if os.environ.get(STORAGE_ENV)
        else "sweep.storage (default ./runs)"
    )


def is_uri(location: str) -> bool:
    """A URI (s3://, gs://, ...) rather than a folder."""
    return "://" in location


def root(spec: ExperimentSpec) -> str:
    """The storage root: a URI as given, a local path made absolute (nodes share no cwd)."""
    value = spec.sweep.storage or os.environ.get(STORAGE_ENV) or "runs"
    return value if is_uri(value) else str(Path(value).expanduser().resolve())


def sweep_path(spec: ExperimentSpec) -> str:
    """Where Ray keeps this spec's sweep: <storage>/<name> (before a URI's ?options)."""
    base, q, options = root(spec).partition("?")
    return f"{base.rstrip('/')}/{spec.name}{q}{options}"


def for_ray(spec: ExperimentSpec) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """Ray's storage_path and storage_filesystem: a URI as it is (Ray makes its filesystem from
    it, options included), a folder through `wholefiles` so that a killed driver cuts no file."""
    location = root(spec)
    return location, None if is_uri(location) else filesystem(location)[0]


def filesystem(uri: str, name: str = "storage") -> tuple[pyarrow.fs.FileSystem, str]:
    """pyarrow's filesystem and path for a storage root (`root`: a URI or an absolute path);
    StorageError if it does not parse. A folder's files are written whole (`wholefiles`)."""
    if not is_uri(uri):
        return wholefiles.filesystem(), uri
    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except (pyarrow.ArrowInvalid, ValueError, OSError) as e:
        raise StorageError(
            f"{name}: cannot use {uri!r}: {first_line(e)}. Give a local path "
            f"or a URI such as {EXAMPLE} (S3-compatible stores: add "
            "?endpoint_override=HOST:PORT&scheme=http)"
        ) from None


def location(spec: ExperimentSpec) -> tuple[pyarrow.fs.FileSystem, str]:
    """The sweep's filesystem and folder in it (URI options such as endpoint_override apply to the
    storage root, so the sweep's name is joined to the path, not to the URI)."""
    fs, path = filesystem(root(spec), source(spec))
    return fs, f"{path.rstrip('/')}/{spec.name}"


@contextmanager
def probe(spec: ExperimentSpec) -> Iterator[str]:
    """Write a small file to the storage root as the driver (StorageError if it cannot) and yield
    its path for nodes to read (`readable`); remove it, and any folder made for it, afterwards."""
    fs, base = filesystem(root(spec), source(spec))
    path = f"{base.rstrip('/')}/.tunekit-probe-{uuid.uuid4().hex[:12]}"
    made = not is_uri(root(spec)) and not Path(base).exists()
    try:
        fs.create_dir(base, recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(b"tunekit")
    except (OSError, pyarrow.ArrowException) as e:
        raise StorageError(f"{source(spec)}: cannot write to {root(spec)}: {_why(e)}") from None
    try:
        yield path
    finally:
        try:
            fs.delete_file(path)
            if made:
                fs.delete_dir(base)
        except OSError:
            pass


def readable(uri: str, path: str) -> str | None:
    """On any node: None if it reads the driver's probe at `path` of storage `uri`, else why not."""
    try:
        fs, _ = pyarrow.fs.FileSystem.from_uri(uri)
        with fs.open_input_stream(path) as f:
            return None if f.read() == b"tunekit" else "it read something else"
    except Exception as e:  # noqa: BLE001 (whatever it is, it is the node's answer)
        return _why(e)


def _why(e: BaseException) -> str:
    """An OSError from pyarrow in one line, led by what to do for the usual S3 answers."""
    text = " ".join(str(e).split())
    hints = [
        (
            ("NO_SUCH_BUCKET", "NoSuchBucket", "not found. To create buckets"),
            "the bucket does not exist: create it, or fix its name",
        ),
        (
            ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH"),
            "the credentials were refused: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or the instance profile) and the bucket's policy",
        ),
        (("NETWORK_CONNECTION", "Couldn't connect"), "the endpoint does not answer"),
    ]
    hint = next((h for keys, h in hints if any(k in text for k in keys)), None)
    return f"{hint} ({text})" if hint else text


def stored_plan(spec: ExperimentSpec) -> dict[str, Any] | None:
    """The plan identity this spec's sweep was started with, or None if there is no sweep."""
    fs, path = location(spec)
    try:
        with fs.open_input_stream(f"{path}/{PLAN_FILE}") as f:
            return json.loads(f.read())
    except (FileNotFoundError, OSError):
        return None


def check(plan: Plan, *, resume: bool = False, restart: bool = False) -> None:
    """Refuse a sweep that cannot start (or resume) here, touching nothing. Call it inside
    `probe`, which has shown the storage usable. New: the storage must hold no earlier sweep of
    this name, unless `restart`. Resume: the stored plan must be this plan.
    """
    spec, path = plan.spec, sweep_path(plan.spec)
    stored = stored_plan(spec)
    if resume:
        if stored is None:
            raise StorageError(f"nothing to resume at {path}: run the sweep without --resume first")
        changed = differences(stored, plan.identity())
        if changed:
            shown = "\n  ".join(changed[:12]) + (
                f"\n  ... {len(changed) - 12} more" if len(changed) > 12 else ""
            )
            raise StorageError(
                f"the spec no longer gives the plan the sweep at {path} was "
                f"started with; --resume only carries on the same plan. "
                f"Differences (stored -> now):\n  {shown}\nUndo the change to "
                "resume, or start over with --restart (the earlier sweep's MLflow "
                "runs are kept)."
            )
    elif not restart and _exists(spec, stored):
        raise StorageError(
            f"{path} holds an earlier sweep of {spec.name!r}: --resume carries it "
            "on, --restart starts over (the earlier sweep's MLflow runs are "
            "kept), or set another name or sweep.storage"
        )


def _exists(spec: ExperimentSpec, stored: dict[str, Any] | None) -> bool:
    fs, folder = location(spec)
    return stored is not None or fs.get_file_info(folder).type != pyarrow.fs.FileType.NotFound


def record(plan: Plan, *, resume: bool = False, restart: bool = False) -> str:
    """Record the plan of a checked sweep (`check`) and return its path. `restart` first moves an
    earlier sweep aside (local) or deletes it (remote); its MLflow runs stay."""
    spec = plan.spec
    if not resume:
        fs, folder = location(spec)
        if restart and _exists(spec, stored_plan(spec)):
            if not is_uri(root(spec)):
                fs.move(folder, f"{folder}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
            else:  # cloud storage has no cheap move
                fs.delete_dir(folder)
        fs.create_dir(folder, recursive=True)
        with fs.open_output_stream(f"{folder}/{PLAN_FILE}") as f:
            f.write(json.dumps(plan.identity(), indent=1).encode())
    return sweep_path(spec)
