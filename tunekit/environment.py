"""What a result depends on besides the spec: package versions (and whether they match the lock
CI passed with), the machine, and tunekit's git commit."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

PACKAGES = ("torch", "torchvision", "ray", "mlflow", "optuna", "scipy", "statsmodels", "pydantic")
LOCK = Path(__file__).resolve().parent.parent / "constraints.txt"  # the versions CI passed with


def lock_match(lock: Path = LOCK) -> str:
    """Whether the installed packages are the versions the lock pins, in words."""
    try:
        lines = [line.split("#")[0].strip() for line in lock.read_text().splitlines()]
    except OSError:
        return f"not compared: no {lock.name} beside tunekit (not installed from a checkout)"
    pins = dict(line.split("==", 1) for line in lines if "==" in line)
    differ, installed = [], 0
    for name, pinned in pins.items():
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not needed here (another platform's package)
        installed += 1
        if version.split("+")[0] != pinned.split("+")[0]:
            differ.append(f"{name} {version} (lock {pinned})")
    if differ:
        more = f", and {len(differ) - 6} more" if len(differ) > 6 else ""
        return (
            f"differs from {lock.name} in {len(differ)} package(s): " + ", ".join(differ[:6]) + more
        )
    return f"matches {lock.name} ({installed} of its {len(pins)} pins installed)"


def environment() -> dict[str, str]:
    """What a result depends on besides the spec: versions, machine, tunekit's commit."""
    import torch

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only",
    }
    for name in ("tunekit", *PACKAGES):
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env[name] = "not installed"
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], text=True, capture_output=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--", "."],
            text=True,
            capture_output=True,
            timeout=5,
        ).stdout.strip()
        env["tunekit commit"] = (
            commit.stdout.strip() + (" (with local changes)" if dirty else "")
            if commit.returncode == 0
            else "not a git checkout"
        )
    except (OSError, subprocess.SubprocessError):
        env["tunekit commit"] = "unknown"
    env["lock"] = lock_match()
    return env
