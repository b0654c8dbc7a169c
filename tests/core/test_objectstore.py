"""The directory-backed S3 server the embedded broker keeps its log on, spoken to over HTTP the
way Tansu's object-store client speaks to it (the broker's own restarts: test_broker.py)."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollguard.broker import free_port

Reply = tuple[int, dict[str, str], bytes]


class Client:
    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # kept alive

    def __call__(self, method: str, path: str, body: bytes = b"", **headers: str) -> Reply:
        self.conn.request(
            method, path, body=body, headers={k.replace("_", "-"): v for k, v in headers.items()}
        )
        resp = self.conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


def _serve(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rollguard.objectstore",
            "--root",
            str(root),
            "--port",
            str(port),
            "--bucket",
            "b",
        ],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith(b"rollguard.objectstore: serving"), first
    return proc, port


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Client, Path]]:
    proc, port = _serve(tmp_path)
    try:
        yield Client(port), tmp_path
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_objects_round_trip_with_the_preconditions_tansu_relies_on(
    store: tuple[Client, Path],
) -> None:
    s3, _ = store
    status, headers, _ = s3("PUT", "/b/topics/t/watermark.json", b"v1", if_none_match="*")
    assert status == 200
    first = headers["etag"]
    # Created once: a second create is refused, as is an update against a stale tag.
    assert s3("PUT", "/b/topics/t/watermark.json", b"v2", if_none_match="*")[0] == 412
    assert s3("PUT", "/b/topics/t/watermark.json", b"v2", if_match='"stale"')[0] == 412
    status, headers, _ = s3("PUT", "/b/topics/t/watermark.json", b"v2", if_match=first)
    assert status == 200 and headers["etag"] != first
    assert s3("PUT", "/b/topics/t/watermark.json", b"v3", if_match=first)[0] == 412
    status, headers, body = s3("GET", "/b/topics/t/watermark.json")
    assert (status, body) == (200, b"v2") and "last-modified" in headers
    assert s3("HEAD", "/b/topics/t/watermark.json")[1]["content-length"] == "2"
    assert s3("GET", "/b/topics/t/watermark.json", if_none_match=headers["etag"])[0] == 304
    assert s3("GET", "/b/nothing/here")[0] == 404
    assert s3("HEAD", "/b/nothing/here")[0] == 404


def test_ranges_listing_and_deletes(store: tuple[Client, Path]) -> None:
    s3, _ = store
    for i in range(5):
        assert s3("PUT", f"/b/t/p0/records/{i:020d}.batch", b"0123456789")[0] == 200
    s3("PUT", "/b/t/p1/records/00000000000000000000.batch", b"x")
    status, headers, body = s3(
        "GET", "/b/t/p0/records/00000000000000000001.batch", range="bytes=2-4"
    )
    assert (status, body, headers["content-range"]) == (206, b"234", "bytes 2-4/10")
    assert s3("GET", "/b/t/p0/records/00000000000000000001.batch", range="bytes=-3")[2] == b"789"
    assert s3("GET", "/b/t/p0/records/00000000000000000001.batch", range="bytes=20-")[0] == 416

    status, _, listing = s3("GET", "/b?list-type=2&prefix=t/p0/records/&max-keys=2")
    assert status == 200 and listing.count(b"<Key>") == 2 and b"<IsTruncated>true" in listing
    token = listing.split(b"<NextContinuationToken>")[1].split(b"<")[0].decode()
    _, _, rest = s3("GET", f"/b?list-type=2&prefix=t/p0/records/&continuation-token={token}")
    assert rest.count(b"<Key>") == 3 and b"00000000000000000004.batch" in rest
    _, _, folders = s3("GET", "/b?list-type=2&prefix=t/&delimiter=/")
    assert folders.count(b"<CommonPrefixes>") == 2 and b"<Key>" not in folders

    assert s3("DELETE", "/b/t/p1/records/00000000000000000000.batch")[0] == 204
    many = (
        b"<Delete><Object><Key>t/p0/records/00000000000000000000.batch</Key></Object>"
        b"<Object><Key>t/p0/records/00000000000000000001.batch</Key></Object></Delete>"
    )
    status, _, said = s3("POST", "/b?delete", many)
    assert status == 200 and said.count(b"<Deleted>") == 2
    _, _, left = s3("GET", "/b?list-type=2&prefix=t/")
    assert left.count(b"<Key>") == 3


def test_what_it_cannot_do_is_refused_and_said(store: tuple[Client, Path]) -> None:
    s3, _ = store
    assert s3("POST", "/b/big?uploads")[0] == 501
    assert s3("PUT", "/b/../escape", b"x")[0] in (400, 404)
    assert s3("PUT", "/b/a/.hidden", b"x")[0] == 400
    assert s3("GET", "/b/t")[0] == 404  # still serving after the refusals


def test_one_server_per_directory_and_a_kill_keeps_what_was_written(tmp_path: Path) -> None:
    proc, port = _serve(tmp_path)
    try:
        s3 = Client(port)
        s3("PUT", "/b/kept", b"durable")
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "rollguard.objectstore",
                "--root",
                str(tmp_path),
                "--port",
                str(free_port()),
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert second.returncode == 3 and b"in use by another process" in second.stdout
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not list(tmp_path.rglob(".tmp~*"))
    again, port = _serve(tmp_path)
    try:
        assert Client(port)("GET", "/b/kept")[2] == b"durable"
    finally:
        again.terminate()
        again.wait(timeout=10)


def _batch(offset: int, keys: list[bytes]) -> bytes:
    """A Kafka record batch (magic 2, uncompressed) as Tansu stores one: a record per key."""

    def varint(n: int) -> bytes:
        raw, out = (n << 1) ^ (n >> 63), b""
        while True:
            byte, raw = raw & 0x7F, raw >> 7
            if raw:
                out += bytes([byte | 0x80])
            else:
                return out + bytes([byte])

    records = b""
    for i, key in enumerate(keys):
        body = b"\0" + varint(0) + varint(i) + varint(len(key)) + key + varint(1) + b"v" + varint(0)
        records += varint(len(body)) + body
    header = (
        offset.to_bytes(8, "big")
        + (49 + len(records)).to_bytes(4, "big")
        + b"\xff\xff\xff\xff\x02"
        + b"\0\0\0\0"  # crc: not checked here
        + b"\0\0"  # attributes: no compression
        + (len(keys) - 1).to_bytes(4, "big")
        + b"\0" * 16  # timestamps
        + b"\xff" * 14  # producer id, epoch, base sequence
        + len(keys).to_bytes(4, "big")
    )
    return header + records


def test_a_compacted_partition_keeps_the_latest_record_of_every_key(tmp_path: Path) -> None:
    """Tansu lists every batch of a partition to serve a fetch: a compacted topic (the live
    pointers, the decider's table) drops a batch once every key in it has a later record."""
    from rollguard.objectstore import Bucket, batch_keys

    assert batch_keys(_batch(0, [b"a", b"b"])) == {b"a", b"b"}
    assert batch_keys(b"not a batch") is None
    prefix = "clusters/c/topics/{}/partitions/0000000000/records/"
    store = Bucket(tmp_path, keep_last={"trimmed": 3, "pointers": 2}, compacted={"pointers"})
    store.create_bucket("b")

    def put(bucket: Bucket, topic: str, offset: int, keys: list[bytes]) -> None:
        bucket.put("b", prefix.format(topic) + f"{offset:020d}.batch", _batch(offset, keys), {})

    def kept(bucket: Bucket, topic: str) -> list[int]:
        listing = bucket.list_objects("b", {"list-type": "2", "prefix": prefix.format(topic)}).body
        return [int(n) for n in re.findall(rb"<Key>[^<]*/(\d+)\.batch</Key>", listing)]

    writes = [[b"a", b"b"], [b"a"], [b"c"], [b"b"], [b"a"], [b"d"]]
    for offset, keys in enumerate(writes[:2]):
        put(store, "pointers", offset, keys)
    # batch 0's a has a later record, its b not: kept, and so is every one of the newest two
    assert kept(store, "pointers") == [0, 1]
    for offset, keys in enumerate(writes[2:], start=2):
        put(store, "pointers", offset, keys)
    # 0 (a, b) went once b came again in 3, 1 (a) once a came in 4; 2 (c) is c's latest
    assert kept(store, "pointers") == [2, 3, 4, 5]
    for offset in range(6):
        put(store, "trimmed", offset, [b"k"])
    assert kept(store, "trimmed") == [3, 4, 5]
    # Started again on the same files, it learns the partition from disk before compacting.
    again = Bucket(tmp_path, keep_last={"pointers": 2}, compacted={"pointers"})
    put(again, "pointers", 6, [b"d"])
    put(again, "pointers", 7, [b"c"])
    assert kept(again, "pointers") == [3, 4, 6, 7]  # 5 (d) and 2 (c) superseded and old
