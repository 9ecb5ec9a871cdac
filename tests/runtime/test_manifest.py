"""medssl.runtime.manifest: manifest fields and data fingerprints."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import medssl
from medssl.errors import MedsslInputError
from medssl.runtime.manifest import build_manifest, fingerprint_paths, git_commit


def test_manifest_fields() -> None:
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    manifest = build_manifest(["medssl", "semi", "train"], seed=11, device="cpu, 1 process",
                              data_fingerprint="sha256:ab", extra={"labeled": 8})
    assert manifest["command"] == ["medssl", "semi", "train"]
    assert manifest["seed"] == 11 and manifest["device"] == "cpu, 1 process"
    assert manifest["data_fingerprint"] == "sha256:ab" and manifest["extra"] == {"labeled": 8}
    versions = manifest["versions"]
    assert versions["python"] == platform.python_version()
    assert versions["torch"] == torch.__version__.split("+")[0]
    assert versions["numpy"] == np.__version__
    assert versions["medssl"] == medssl.__version__
    for key in ("monai", "timm", "lightning"):
        assert isinstance(versions[key], str) and versions[key][0].isdigit()
    assert manifest["host"] == socket.gethostname()
    stamp = dt.datetime.fromisoformat(manifest["time_utc"])
    assert stamp.utcoffset() == dt.timedelta(0) and before <= stamp <= dt.datetime.now(dt.timezone.utc)
    json.dumps(manifest)  # JSON-compatible


def test_git_commit_matches_checkout_or_is_none(tmp_path: Path) -> None:
    package_dir = Path(medssl.__file__).resolve().parent
    expected = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package_dir, capture_output=True, text=True)
    found = git_commit()
    if expected.returncode == 0:
        assert found is not None and found["commit"] == expected.stdout.strip()
        assert build_manifest([], 0, "cpu")["git_commit"] == found["commit"]
    else:
        assert found is None
    # a folder outside any repository (or with git unavailable) gives None, never an error
    assert git_commit(tmp_path) is None
    assert git_commit(tmp_path / "missing") is None


def _direct_fingerprint(entries: list[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for name, content in sorted(entries):
        digest.update(name.encode() + b"\0" + str(len(content)).encode() + b"\0" + content)
    return "sha256:" + digest.hexdigest()


def test_fingerprint_formula_and_sensitivity(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "case1").mkdir(parents=True)
    (data / "case1" / "img.h5").write_bytes(b"abc")
    (data / "b.txt").write_bytes(b"hello")
    single = tmp_path / "extra.list"
    single.write_bytes(b"case1\n")
    expected = _direct_fingerprint([("data/case1/img.h5", b"abc"), ("data/b.txt", b"hello"),
                                    ("extra.list", b"case1\n")])
    assert fingerprint_paths([data, single]) == expected
    assert fingerprint_paths([single, data]) == expected  # order of arguments does not matter

    moved = tmp_path / "elsewhere" / "data"
    moved.parent.mkdir()
    data.rename(moved)
    assert fingerprint_paths([moved, single]) == expected  # location does not matter

    (moved / "b.txt").write_bytes(b"hellp")  # same size, one byte differs
    assert fingerprint_paths([moved, single]) != expected
    (moved / "b.txt").write_bytes(b"hello")
    (moved / "case1" / "img2.h5").write_bytes(b"")  # an extra empty file
    assert fingerprint_paths([moved, single]) != expected

    with pytest.raises(MedsslInputError, match="not found"):
        fingerprint_paths([tmp_path / "missing"])


def test_fingerprint_large_file_is_chunked_correctly(tmp_path: Path) -> None:
    blob = np.random.default_rng(0).integers(0, 256, size=3 * (1 << 20) + 123, dtype=np.uint8).tobytes()
    (tmp_path / "big.bin").write_bytes(blob)
    assert fingerprint_paths([tmp_path / "big.bin"]) == _direct_fingerprint([("big.bin", blob)])


def test_capped_fingerprint_reads_head_and_tail_only(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    blob = bytearray(range(256)) * 64  # 16 KiB
    (data / "big.bin").write_bytes(bytes(blob))
    capped = fingerprint_paths([data], max_bytes_per_file=1024)
    expected = hashlib.sha256(b"d/big.bin\0" + str(len(blob)).encode() + b"\0" + bytes(blob[:512])
                              + bytes(blob[-512:])).hexdigest()
    assert capped == f"sha256:{expected}"
    blob[8000] ^= 0xFF  # a change in the middle is not seen with the cap ...
    (data / "big.bin").write_bytes(bytes(blob))
    assert fingerprint_paths([data], max_bytes_per_file=1024) == capped
    assert fingerprint_paths([data]) != fingerprint_paths([data], max_bytes_per_file=1024)  # ... but is without
    blob[10] ^= 0xFF  # a change in the head is
    (data / "big.bin").write_bytes(bytes(blob))
    assert fingerprint_paths([data], max_bytes_per_file=1024) != capped
