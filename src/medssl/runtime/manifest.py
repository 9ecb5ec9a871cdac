"""Run manifests: what ran, with which software, on which machine and data.

:func:`build_manifest` gathers the facts; :func:`fingerprint_paths` hashes the input data so two runs
can be checked to have seen identical files.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medssl.errors import MedsslInputError

__all__ = ["build_manifest", "fingerprint_paths", "git_commit", "package_versions"]

_PACKAGES = {
    "torch": "torch",
    "monai": "monai",
    "timm": "timm",
    "lightning": "lightning",
    "numpy": "numpy",
    "medssl": "medssl",
}
_CHUNK = 1 << 20


def package_versions() -> dict[str, str | None]:
    """Installed versions of python and the packages a run depends on (None when not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in _PACKAGES.items():
        try:
            versions[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            module = sys.modules.get(dist)
            versions[key] = getattr(module, "__version__", None) if module is not None else None
    return versions


def _git(args: list[str], cwd: Path) -> str | None:
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0", LC_ALL="C")
    try:
        done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit(package_dir: Path | None = None) -> dict[str, Any] | None:
    """Commit of the git checkout medssl is imported from: ``{"commit": sha, "dirty": bool | None}``.

    Returns None when git is missing, medssl is not inside a git work tree, or its files are not
    tracked there (e.g. an installed copy inside some other repository).
    """
    if package_dir is None:
        import medssl

        package_dir = Path(medssl.__file__).resolve().parent
    if not package_dir.is_dir():
        return None
    if _git(["ls-files", "--error-unmatch", "__init__.py"], package_dir) is None:
        return None
    commit = _git(["rev-parse", "HEAD"], package_dir)
    if not commit:
        return None
    status = _git(["status", "--porcelain", "--untracked-files=no"], package_dir)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def build_manifest(
    command: list[str],
    seed: int,
    device: str,
    data_fingerprint: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of a run, as JSON-compatible data.

    Args:
        command: the command line (e.g. ``sys.argv``).
        seed: the run's seed.
        device: a description of the devices (see :func:`medssl.runtime.fabric.describe_device`).
        data_fingerprint: from :func:`fingerprint_paths`, when the run reads files.
        extra: command-specific facts (dataset sizes, number of labeled cases, ...).
    """
    git = git_commit()
    return {
        "command": [str(part) for part in command],
        "seed": int(seed),
        "device": device,
        "data_fingerprint": data_fingerprint,
        "versions": package_versions(),
        "git_commit": None if git is None else git["commit"],
        "git_dirty": None if git is None else git["dirty"],
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "extra": dict(extra or {}),
    }


def _files_under(path: Path) -> list[tuple[str, Path]]:
    """``(relative name, file)`` pairs; a folder contributes its files, named below the folder's name."""
    if path.is_file():
        return [(path.name, path)]
    files = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        dirnames.sort()
        for name in filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(path).as_posix()
            files.append((f"{path.name}/{rel}", full))
    return files


def fingerprint_paths(paths: Iterable[str | Path], max_bytes_per_file: int | None = None) -> str:
    """SHA-256 over the relative names, sizes and contents of files and folders (recursively).

    Names are relative to each given path's parent, so moving a dataset elsewhere keeps its
    fingerprint, and the order in which paths are given does not matter. Returns ``"sha256:<hex>"``.

    Args:
        paths: files and folders.
        max_bytes_per_file: ``None`` hashes every byte; otherwise a file larger than this contributes
            its size, its first and its last ``max_bytes_per_file // 2`` bytes (fast on datasets of
            hundreds of GB, still sensitive to re-exported or truncated files).

    Raises:
        MedsslInputError: a path does not exist or cannot be read.
    """
    entries: list[tuple[str, Path]] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise MedsslInputError(path, "not found (needed for the data fingerprint)")
        entries.extend(_files_under(path))
    entries.sort(key=lambda item: item[0])
    digest = hashlib.sha256()
    for name, file in entries:
        try:
            size = file.stat().st_size
            digest.update(name.encode("utf-8") + b"\0" + str(size).encode("ascii") + b"\0")
            with open(file, "rb") as fh:
                if max_bytes_per_file is not None and size > max_bytes_per_file:
                    half = max_bytes_per_file // 2
                    digest.update(fh.read(half))
                    fh.seek(size - half)
                    digest.update(fh.read(half))
                else:
                    while chunk := fh.read(_CHUNK):
                        digest.update(chunk)
        except OSError as err:
            raise MedsslInputError(file, f"cannot read file for the data fingerprint ({err.strerror})") from None
    return f"sha256:{digest.hexdigest()}"
