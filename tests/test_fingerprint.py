"""Identities of files and weights: whole-content hashes remembered per file, exact weight checksums."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch

from malmm_cli.reading import fingerprint
from malmm_cli.reading.fingerprint import content_hash, tensor_checksum, weights_checksum


def test_content_hash_is_remembered_and_follows_any_change(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "video.bin"
    path.write_bytes(os.urandom(200_000))
    memo = tmp_path / "memo"
    memo.mkdir()
    digest = content_hash(path, memo)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()

    def no_reading(*args, **kwargs):
        raise AssertionError("read again")

    with monkeypatch.context() as patch:
        patch.setattr(fingerprint.hashlib, "file_digest", no_reading)
        assert content_hash(path, memo) == digest  # remembered
    copy = tmp_path / "copy.bin"
    shutil.copy2(path, copy)
    assert content_hash(copy, memo) == digest  # the content, wherever it lives
    status = path.stat()
    data = bytearray(path.read_bytes())
    data[150_000] ^= 1
    path.write_bytes(data)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))  # same size and time: ctime still moves
    assert content_hash(path, memo) != digest
    assert content_hash(path) == hashlib.sha256(bytes(data)).hexdigest()  # without a memo


def test_weight_checksums_are_exact_and_see_any_change() -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(33, 17), torch.nn.LayerNorm(17))
    before = weights_checksum(module)
    assert weights_checksum(module) == before
    with torch.no_grad():
        module[0].weight[16, 32] += 1e-6
    assert weights_checksum(module) != before
    weights = torch.randn(1001)
    swapped = weights.clone()
    swapped[[0, 900]] = swapped[[900, 0]]
    assert tensor_checksum(swapped) != tensor_checksum(weights)  # values moved, not changed
    assert tensor_checksum(weights.half()) != tensor_checksum(weights.bfloat16())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int8, torch.uint8, torch.bool])
def test_checksums_take_every_dtype_and_odd_sizes(dtype: torch.dtype) -> None:
    tensor = (torch.arange(13) % 2).to(dtype)
    assert len(tensor_checksum(tensor)) == 3
