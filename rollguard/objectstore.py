"""A directory served as an S3 bucket, so the embedded broker keeps its log on disk.

Tansu, the embedded broker, keeps everything in memory unless its storage engine is PostgreSQL
or S3. ``rollguard up`` must lose nothing when it is killed and started again on the same state
directory, and a laptop has neither, so the embedded broker runs on ``s3://`` against this
server: one process on loopback that stores each object as a file under ``root``. It speaks the
part of the S3 REST API Tansu's object-store client uses — PUT (with ``If-Match`` /
``If-None-Match`` preconditions, which Tansu uses to update watermarks and group state without
losing a concurrent write), GET (with ``Range``), HEAD, DELETE, the multi-object delete and
ListObjectsV2 — and answers anything else with 501 and a log line, never silently.

An object is written to a temporary file and renamed into place, so a reader, or a process
killed in the middle, sees the old object or the new one, never half of one. A kill of the whole
process tree loses nothing the broker acknowledged; files are not fsynced, so a power cut can
(as with a single Kafka broker's default flush policy).

Loopback only and unauthenticated, like the embedded broker itself: requests are not checked
against AWS signatures. It is the embedded default's storage, not an S3 server for anything
else. Run it as ``python -m rollguard.objectstore --root DIR --port PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import fcntl
import hashlib
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

_TMP_PREFIX = ".tmp~"
_MAX_BODY = 256 * 1024 * 1024
_MAX_KEYS = 1000
_TRACE = bool(os.environ.get("ROLLGUARD_OBJECTSTORE_TRACE"))


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


_REASONS = {
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    404: "Not Found",
    409: "Conflict",
    412: "Precondition Failed",
    416: "Range Not Satisfiable",
    500: "Internal Server Error",
    501: "Not Implemented",
}


def _error(status: int, code: str, message: str) -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
    ).encode()
    return Response(status, body, {"Content-Type": "application/xml"})


@dataclass
class _Folder:
    """What one directory holds, kept sorted: a listing is a slice, not a walk."""

    files: list[str]
    has_subdirs: bool


@dataclass
class _Compaction:
    """One compacted partition: which batch holds each key's latest record, and which keys
    each batch is still the latest for."""

    latest: dict[bytes, str] = field(default_factory=dict)
    live: dict[str, set[bytes]] = field(default_factory=dict)
    superseded: set[str] = field(default_factory=set)  # every key has a later record


def _supersede(index: _Compaction, name: str, body: bytes) -> None:
    """Batch ``name`` holds the latest record of each of its keys from now on."""
    keys = batch_keys(body)
    if keys is None:
        return  # kept whole
    for k in keys:
        previous = index.latest.get(k)
        index.latest[k] = name
        if previous is None or previous == name or previous not in index.live:
            continue
        left = index.live[previous]
        left.discard(k)
        if not left:
            del index.live[previous]
            index.superseded.add(previous)
    index.live[name] = set(keys)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint of the Kafka record format, and where the next field starts."""
    shift = raw = 0
    while True:
        byte = data[pos]
        pos += 1
        raw |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (raw >> 1) ^ -(raw & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def batch_keys(batch: bytes) -> set[bytes] | None:
    """The record keys of a Kafka record batch (magic 2), or None when they cannot be read
    here: compressed, a control batch, a record without a key, or not a batch at all."""
    try:
        if len(batch) < 61 or batch[16] != 2:
            return None
        attributes = int.from_bytes(batch[21:23], "big")
        if attributes & 0x07 or attributes & 0x20:  # compression codec / control batch
            return None
        count = int.from_bytes(batch[57:61], "big", signed=True)
        pos, keys = 61, set()
        for _ in range(count):
            length, pos = _varint(batch, pos)
            end = pos + length
            pos += 1  # record attributes
            _, pos = _varint(batch, pos)  # timestamp delta
            _, pos = _varint(batch, pos)  # offset delta
            size, pos = _varint(batch, pos)
            if size < 0 or pos + size > end:
                return None
            keys.add(batch[pos : pos + size])
            pos = end
        return keys if pos == len(batch) else None
    except (IndexError, ValueError):
        return None


#: Where Tansu keeps a partition's record batches, one object per batch named by its offset.
_BATCH_KEY = re.compile(
    r"^clusters/[^/]+/topics/(?P<topic>[^/]+)/partitions/\d+/records/\d+\.batch$"
)


class Bucket:
    """Objects as files under ``root / bucket``; keys map to relative paths.

    Tansu lists a partition's every batch to serve a fetch, so a partition that grew without
    bound would slow every read of it, until a consumer waiting 10 ms per fetch got nothing at
    all (measured: at 3,000 batches). So every partition stays bounded, as on Kafka:
    ``keep_last`` (topic → batches) keeps the newest batches of each partition of a topic and
    deletes older ones (a consumer asking for one is served from the oldest batch left, as with
    Kafka's retention); a ``compacted`` topic keeps the latest record of every key.
    """

    def __init__(
        self,
        root: Path,
        keep_last: dict[str, int] | None = None,
        compacted: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        self.root = root
        self.keep_last = keep_last or {}
        self.compacted = compacted
        self._compactions: dict[Path, _Compaction] = {}
        # The server is one thread, and only it writes under root: the caches cannot go stale.
        self._etags: dict[Path, str] = {}
        self._folders: dict[Path, _Folder] = {}
        #: Each object's <Contents> in a listing (key, size, time), made once: Tansu lists a
        #: partition's batches for every fetch, so a listing must cost a join, not a stat each.
        self._entries: dict[str, str] = {}  # by the file's path

    def _folder(self, directory: Path) -> _Folder:
        folder = self._folders.get(directory)
        if folder is None:
            files, subdirs = [], False
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                for entry in os.scandir(directory):
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir():
                        subdirs = True
                    else:
                        files.append(entry.name)
            folder = self._folders[directory] = _Folder(sorted(files), subdirs)
        return folder

    def _added(self, path: Path, *, new_dirs: bool) -> None:
        if new_dirs:  # the folders above now hold a directory they did not list
            for parent in path.parents:
                self._folders.pop(parent, None)
                if parent == self.root:
                    break
        files = self._folder(path.parent).files
        at = bisect.bisect_left(files, path.name)
        if at == len(files) or files[at] != path.name:
            files.insert(at, path.name)

    def _removed(self, path: Path) -> None:
        self._etags.pop(path, None)
        self._entries.pop(str(path), None)
        folder = self._folders.get(path.parent)
        if folder is not None:
            at = bisect.bisect_left(folder.files, path.name)
            if at < len(folder.files) and folder.files[at] == path.name:
                del folder.files[at]

    def _retain(self, key: str, path: Path, body: bytes) -> None:
        """After a batch is written: trim its partition, or compact it (see the class)."""
        found = _BATCH_KEY.match(key)
        keep = self.keep_last.get(found["topic"]) if found else None
        if found is None or keep is None:
            return
        files = self._folder(path.parent).files
        if found["topic"] in self.compacted:
            self._compact(path, body, files[: max(len(files) - keep, 0)])
            return
        for name in files[: max(len(files) - keep, 0)]:
            self._drop(path.parent / name)
        del files[: max(len(files) - keep, 0)]

    def _drop(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._etags.pop(path, None)
        self._entries.pop(str(path), None)

    def _compact(self, path: Path, body: bytes, old: list[str]) -> None:
        """Log compaction a batch at a time: a batch goes once every key in it has a later
        record and it is no longer among the newest (``old`` are the others): like Kafka's
        active segment, the newest batches are never compacted, so a consumer that is not far
        behind reads every record. The latest record of every key stays; a batch that cannot
        be read (compressed, say) stays whole."""
        folder = path.parent
        index = self._compactions.get(folder)
        if index is None:  # first write here since start: learn what is on disk
            index = self._compactions[folder] = _Compaction()
            for name in list(self._folder(folder).files):
                if name != path.name:
                    with contextlib.suppress(FileNotFoundError):
                        _supersede(index, name, (folder / name).read_bytes())
        _supersede(index, path.name, body)
        for name in old:
            if name in index.superseded:
                index.superseded.discard(name)
                self._removed(folder / name)
                self._drop(folder / name)

    def _path(self, bucket: str, key: str) -> Path | None:
        if not bucket or "/" in bucket or bucket.startswith("."):
            return None
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            return None
        return self.root / bucket / Path(*parts)

    def etag(self, path: Path) -> str | None:
        """The MD5 of the object's bytes, as S3 computes it; remembered once read."""
        tag = self._etags.get(path)
        if tag is None:
            try:
                tag = _md5_tag(path.read_bytes())
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return None
            self._etags[path] = tag
        return tag

    def create_bucket(self, bucket: str) -> Response:
        if not bucket or "/" in bucket or bucket.startswith("."):
            return _error(400, "InvalidBucketName", bucket)
        (self.root / bucket).mkdir(parents=True, exist_ok=True)
        return Response(200)

    def head_bucket(self, bucket: str) -> Response:
        if (self.root / bucket).is_dir():
            return Response(200)
        return Response(404)

    def put(self, bucket: str, key: str, body: bytes, headers: dict[str, str]) -> Response:
        path = self._path(bucket, key)
        if path is None:
            return _error(400, "InvalidArgument", f"bad key {key!r}")
        if not (self.root / bucket).is_dir():
            return _error(404, "NoSuchBucket", bucket)
        current = self.etag(path)
        if_none = headers.get("if-none-match")
        if if_none is not None and (if_none.strip() == "*" and current is not None):
            return _error(412, "PreconditionFailed", "object exists")
        if_match = headers.get("if-match")
        if if_match is not None and (current is None or if_match.strip() not in (current, "*")):
            return _error(412, "PreconditionFailed", "etag does not match")
        tag = _md5_tag(body)
        new_dirs = not path.parent.is_dir()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            os.replace(tmp, path)
        except BaseException:
            self._etags.pop(path, None)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._etags[path] = tag
        self._entries[str(path)] = _entry(key, len(body), time.time(), tag)
        self._added(path, new_dirs=new_dirs)
        self._retain(key, path, body)
        return Response(200, headers={"ETag": tag})

    def get(self, bucket: str, key: str, headers: dict[str, str], *, head: bool) -> Response:
        path = self._path(bucket, key)
        if path is None or not path.is_file():
            return _error(404, "NoSuchKey", key) if not head else Response(404)
        data = path.read_bytes()
        tag = self.etag(path) or ""
        out = {
            "ETag": tag,
            "Last-Modified": formatdate(path.stat().st_mtime, usegmt=True),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if_match = headers.get("if-match")
        if if_match is not None and if_match.strip() not in (tag, "*"):
            return Response(412, headers=out)
        if_none = headers.get("if-none-match")
        if if_none is not None and if_none.strip() in (tag, "*"):
            return Response(304, headers=out)
        status, size = 200, len(data)
        spec = headers.get("range")
        if spec is not None:
            picked = _byte_range(spec, size)
            if picked is None:
                out["Content-Range"] = f"bytes */{size}"
                return Response(416, headers=out)
            start, end = picked
            data = data[start : end + 1]
            out["Content-Range"] = f"bytes {start}-{end}/{size}"
            status = 206
        if head:
            out["Content-Length"] = str(len(data))
            return Response(status, b"", out)
        return Response(status, data, out)

    def delete(self, bucket: str, key: str) -> Response:
        path = self._path(bucket, key)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            self._removed(path)
        return Response(204)

    def delete_many(self, bucket: str, body: bytes) -> Response:
        import xml.etree.ElementTree as ET

        try:
            tree = ET.fromstring(body)
        except ET.ParseError as exc:
            return _error(400, "MalformedXML", str(exc))
        deleted = []
        for obj in tree.iter():
            if obj.tag.endswith("Key") and obj.text:
                self.delete(bucket, obj.text)
                deleted.append(f"<Deleted><Key>{escape(obj.text)}</Key></Deleted>")
        body_out = (
            '<?xml version="1.0" encoding="UTF-8"?><DeleteResult>'
            + "".join(deleted)
            + "</DeleteResult>"
        ).encode()
        return Response(200, body_out, {"Content-Type": "application/xml"})

    def list_objects(self, bucket: str, query: dict[str, str]) -> Response:
        base = self.root / bucket
        if not base.is_dir():
            return _error(404, "NoSuchBucket", bucket)
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        after = query.get("continuation-token") or query.get("start-after", "")
        max_keys = min(int(query.get("max-keys", _MAX_KEYS)), _MAX_KEYS)
        folder, _, leaf = prefix.rpartition("/")
        directory = base / folder if folder else base
        held = self._folder(directory)
        if not held.has_subdirs:
            # A partition's records: one directory of files, listed as a slice of its index.
            rel = f"{folder}/" if folder else ""
            names = held.files
            lo = bisect.bisect_left(names, leaf)
            if after.startswith(rel):
                lo = max(lo, bisect.bisect_right(names, after[len(rel) :]))
            elif after > rel:
                lo = len(names)
            picked = []
            for name in names[lo : lo + max_keys + 1]:
                if not name.startswith(leaf):
                    break
                picked.append(name)
            truncated = len(picked) > max_keys
            where = str(directory)
            contents = [self._entry_of(rel + n, f"{where}/{n}") for n in picked[:max_keys]]
            last = rel + picked[max_keys - 1] if truncated else ""
            return _listing(bucket, prefix, max_keys, [c for c in contents if c], [], last)
        return self._walk(base, bucket, prefix, delimiter, after, max_keys, directory)

    def _walk(
        self,
        base: Path,
        bucket: str,
        prefix: str,
        delimiter: str,
        after: str,
        max_keys: int,
        start: Path,
    ) -> Response:
        """A listing across directories (rare: Tansu's start-up and group lookups)."""
        keys: dict[str, Path | None] = {}
        for dirpath, dirnames, filenames in os.walk(start):
            rel = Path(dirpath).relative_to(base).as_posix()
            rel = "" if rel == "." else rel + "/"
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                key = rel + name
                if name.startswith(".") or not key.startswith(prefix):
                    continue
                cut = key.find(delimiter, len(prefix)) if delimiter else -1
                if cut >= 0:
                    keys.setdefault(key[: cut + len(delimiter)], None)
                else:
                    keys[key] = Path(dirpath) / name
        ordered = sorted(k for k in keys if k > after)
        page = ordered[:max_keys]
        contents = [self._entry_of(k, str(p)) for k in page if (p := keys[k]) is not None]
        prefixes = [k for k in page if keys[k] is None]
        last = page[-1] if len(ordered) > max_keys else ""
        return _listing(bucket, prefix, max_keys, [c for c in contents if c], prefixes, last)

    def _entry_of(self, key: str, path: str) -> str:
        """The object's <Contents>, made once (a file found on disk: from a stat; its ETag
        only when known, never by reading the file to list it); "" when it is gone."""
        entry = self._entries.get(path)
        if entry is None:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return ""
            entry = _entry(key, st.st_size, st.st_mtime, self._etags.get(Path(path)))
            self._entries[path] = entry
        return entry


def _listing(
    bucket: str, prefix: str, max_keys: int, contents: list[str], prefixes: list[str], last: str
) -> Response:
    """A ListObjectsV2 answer; ``last``: the continuation token when there is more."""
    token = f"<NextContinuationToken>{escape(last)}</NextContinuationToken>" if last else ""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix>"
        f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>"
        f"<IsTruncated>{'true' if last else 'false'}</IsTruncated>{token}"
        + "".join(contents)
        + "".join(
            f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>" for p in prefixes
        )
        + "</ListBucketResult>"
    ).encode()
    return Response(200, body, {"Content-Type": "application/xml"})


def _entry(key: str, size: int, mtime: float, tag: str | None) -> str:
    return (
        f"<Contents><Key>{escape(key)}</Key><LastModified>{_iso(mtime)}</LastModified>"
        + (f"<ETag>{escape(tag)}</ETag>" if tag else "")
        + f"<Size>{size}</Size><StorageClass>STANDARD</StorageClass></Contents>"
    )


def _md5_tag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def _iso(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _byte_range(spec: str, size: int) -> tuple[int, int] | None:
    unit, _, ranges = spec.partition("=")
    if unit.strip() != "bytes" or "," in ranges:
        return None
    first, _, last = ranges.strip().partition("-")
    try:
        if not first:  # the last N bytes
            n = int(last)
            return (max(size - n, 0), size - 1) if n > 0 and size else None
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


def handle(
    store: Bucket, method: str, target: str, headers: dict[str, str], body: bytes
) -> Response:
    url = urlsplit(target)
    query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
    bucket, _, key = unquote(url.path).lstrip("/").partition("/")
    if not key:
        if method == "PUT":
            return store.create_bucket(bucket)
        if method == "HEAD":
            return store.head_bucket(bucket)
        if method == "GET" and query.get("list-type") == "2":
            return store.list_objects(bucket, query)
        if method == "POST" and "delete" in query:
            return store.delete_many(bucket, body)
    elif not (set(query) & {"uploads", "uploadId", "partNumber", "tagging", "acl"}):
        if method == "PUT" and "x-amz-copy-source" not in headers:
            return store.put(bucket, key, body, headers)
        if method in ("GET", "HEAD"):
            return store.get(bucket, key, headers, head=method == "HEAD")
        if method == "DELETE":
            return store.delete(bucket, key)
    print(f"rollguard.objectstore: not implemented: {method} {target}", file=sys.stderr)
    return _error(501, "NotImplemented", f"{method} {url.path}?{url.query}")


async def _serve_connection(
    store: Bucket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            if headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if headers.get("transfer-encoding", "").lower() == "chunked":
                body = await _read_chunked(reader)
            else:
                length = int(headers.get("content-length", "0") or 0)
                if length > _MAX_BODY:
                    raise ValueError("body too large")
                body = await reader.readexactly(length) if length else b""
            if _TRACE:
                print(f"{method} {target} {headers}", file=sys.stderr, flush=True)
            try:
                resp = handle(store, method, target, headers, body)
            except Exception as exc:
                print(f"rollguard.objectstore: {method} {target}: {exc!r}", file=sys.stderr)
                resp = _error(500, "InternalError", repr(exc))
            out = [f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Unknown')}"]
            hdrs = {"x-amz-request-id": "rollguard", **resp.headers}
            if "Content-Length" not in hdrs:
                hdrs["Content-Length"] = str(len(resp.body))
            out += [f"{k}: {v}" for k, v in hdrs.items()]
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + resp.body)
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                break
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    except ValueError as exc:
        print(f"rollguard.objectstore: bad request: {exc}", file=sys.stderr)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _lock(root: Path) -> object:
    """One server per directory: a second one over the same files would break the
    preconditions Tansu relies on. The lock goes with the process, however it ends."""
    root.mkdir(parents=True, exist_ok=True)
    lock = open(root / ".lock", "a+b")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"rollguard.objectstore: {root} is in use by another process", flush=True)
        raise SystemExit(3) from None
    return lock


async def serve(
    root: Path,
    host: str,
    port: int,
    buckets: list[str],
    keep_last: dict[str, int],
    compacted: set[str],
) -> None:
    store = Bucket(root, keep_last, compacted)
    for name in buckets:
        store.create_bucket(name)
    server = await asyncio.start_server(
        lambda r, w: _serve_connection(store, r, w), host, port, limit=1 << 20
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"rollguard.objectstore: serving {root} on {host}:{port}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rollguard.objectstore")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bucket", action="append", default=[])
    parser.add_argument(
        "--keep-last",
        action="append",
        default=[],
        metavar="TOPIC=N",
        help="keep only the newest N record batches of each partition of TOPIC",
    )
    parser.add_argument(
        "--compact",
        action="append",
        default=[],
        metavar="TOPIC",
        help="keep the latest record of every key of TOPIC, dropping batches it supersedes",
    )
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        parser.error("the object store serves loopback only")
    keep_last = {}
    for spec in args.keep_last:
        topic, _, n = spec.rpartition("=")
        if not topic or not n.isdigit() or int(n) < 1:
            parser.error(f"--keep-last wants TOPIC=N with N >= 1, not {spec!r}")
        keep_last[topic] = int(n)
    held = _lock(args.root)
    asyncio.run(serve(args.root, args.host, args.port, args.bucket, keep_last, set(args.compact)))
    del held


if __name__ == "__main__":
    main()
