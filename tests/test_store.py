"""The object store: content addressing, atomic writes, verification and crash leftovers."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

import pytest

from medai.errors import StoreCorrupt
from medai.store import ObjectStore, StoreProblem


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    return ObjectStore(tmp_path / "store")


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_put_is_content_addressed_and_idempotent(store: ObjectStore) -> None:
    data = b"de-identified bytes" * 100
    key = store.put(data)
    assert key == hashlib.sha256(data).hexdigest()
    assert store.path(key) == store.root / key[:2] / key[2:4] / key
    assert store.put(data) == key
    assert [p for p in _files(store.root) if ".tmp" not in p.parts] == [store.path(key)]
    assert store.exists(key) and store.read(key) == data
    assert stat.S_IMODE(store.path(key).stat().st_mode) == 0o444
    assert not list((store.root / ".tmp").iterdir())


def test_keys_lists_objects_sorted(store: ObjectStore) -> None:
    keys = {store.put(bytes([n]) * 10) for n in range(5)}
    assert list(store.keys()) == sorted(keys)
    assert list(ObjectStore(store.root / "absent").keys()) == []


def test_invalid_keys_cannot_escape_the_store(store: ObjectStore) -> None:
    for bad in ("../../etc/passwd", "A" * 64, "abc", "0" * 63 + "/"):
        with pytest.raises(ValueError, match="not a store key"):
            store.path(bad)


def test_verify_detects_a_flipped_byte_and_a_missing_file(store: ObjectStore) -> None:
    good = store.put(b"good object")
    flipped = store.put(b"object that will rot")
    missing = store.put(b"object that will vanish")
    path = store.path(flipped)
    path.chmod(0o644)
    content = bytearray(path.read_bytes())
    content[3] ^= 0x01
    path.write_bytes(bytes(content))
    store.path(missing).unlink()

    assert list(store.verify()) == [
        StoreProblem(flipped, "corrupt", f"content hashes to {hashlib.sha256(content).hexdigest()}")
    ]
    problems = list(store.verify([good, flipped, missing]))
    assert [(p.key, p.kind) for p in problems] == [(flipped, "corrupt"), (missing, "missing")]
    with pytest.raises(StoreCorrupt):
        store.read(flipped)
    assert store.read(flipped, verify=False) == bytes(content)
    with pytest.raises(FileNotFoundError):
        store.read(missing)


def test_verify_streams_large_objects(store: ObjectStore) -> None:
    key = store.put(os.urandom(3 * 1024 * 1024 + 17))  # spans several hash chunks
    assert list(store.verify([key])) == []


def test_a_crashed_write_is_not_a_key_and_clean_tmp_removes_it(store: ObjectStore) -> None:
    kept = store.put(b"complete")
    # What a writer killed before its rename leaves behind.
    partial_key = hashlib.sha256(b"complete object nobody finished").hexdigest()
    leftover = store.root / ".tmp" / f"{partial_key}.0123456789abcdef.tmp"
    leftover.write_bytes(b"complete obj")
    fresh = store.root / ".tmp" / "in-progress.tmp"
    fresh.write_bytes(b"another process is writing this")
    old = time.time() - 7200
    os.utime(leftover, (old, old))

    assert list(store.keys()) == [kept]
    assert not store.exists(partial_key)
    assert store.clean_tmp(older_than_seconds=3600) == 1
    assert not leftover.exists() and fresh.exists()  # a live write is left alone


def test_delete_is_idempotent(store: ObjectStore) -> None:
    key = store.put(b"to delete")
    store.delete(key)
    store.delete(key)
    assert not store.exists(key) and list(store.keys()) == []


def test_failed_write_leaves_nothing(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    earlier = store.put(b"stored before the disk filled up")

    def fail(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        store.put(b"never stored")
    monkeypatch.undo()
    assert list(store.keys()) == [earlier]
    assert not list((store.root / ".tmp").iterdir())


def test_put_many_stores_each_object_once_in_order(tmp_path: Path) -> None:
    from medai.store import ObjectStore

    store = ObjectStore(tmp_path / "store")
    blobs = [b"first", b"second", b"first"]
    keys = store.put_many(blobs)
    assert keys == [store.put(b"first"), store.put(b"second"), store.put(b"first")]
    assert [store.read(key) for key in keys] == blobs
    assert sorted(store.keys()) == sorted(set(keys))
    assert store.put_many([]) == []
