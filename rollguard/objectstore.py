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
import contextlib
import fcntl
import hashlib
import os
import signal
import sys
import tempfile
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


class Bucket:
    """Objects as files under ``root / bucket``; keys map to relative paths."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # The server is one thread, and only it writes under root: the cache cannot go stale.
        self._etags: dict[Path, str] = {}

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
            self._etags.pop(path, None)
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

    def list(self, bucket: str, query: dict[str, str]) -> Response:
        base = self.root / bucket
        if not base.is_dir():
            return _error(404, "NoSuchBucket", bucket)
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        after = query.get("continuation-token") or query.get("start-after", "")
        max_keys = min(int(query.get("max-keys", _MAX_KEYS)), _MAX_KEYS)
        # Walk only the directory the prefix names, not the whole bucket.
        folder = prefix.rpartition("/")[0]
        start = base / folder if folder else base
        entries: list[tuple[str, Path | None]] = []
        if start.is_dir():
            for dirpath, dirnames, filenames in os.walk(start):
                rel = Path(dirpath).relative_to(base).as_posix()
                rel = "" if rel == "." else rel + "/"
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for name in filenames:
                    if name.startswith("."):
                        continue
                    key = rel + name
                    if key.startswith(prefix):
                        entries.append((key, Path(dirpath) / name))
        keys: dict[str, Path | None] = {}
        for key, path in entries:
            if delimiter:
                cut = key.find(delimiter, len(prefix))
                if cut >= 0:
                    keys.setdefault(key[: cut + len(delimiter)], None)
                    continue
            keys[key] = path
        ordered = sorted(k for k in keys if k > after)
        page, truncated = ordered[:max_keys], len(ordered) > max_keys
        contents, prefixes = [], []
        for key in page:
            path = keys[key]
            if path is None:
                prefixes.append(f"<CommonPrefixes><Prefix>{escape(key)}</Prefix></CommonPrefixes>")
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            contents.append(
                f"<Contents><Key>{escape(key)}</Key>"
                f"<LastModified>{_iso(st.st_mtime)}</LastModified>"
                f"<ETag>{escape(self.etag(path) or '')}</ETag>"
                f"<Size>{st.st_size}</Size><StorageClass>STANDARD</StorageClass></Contents>"
            )
        token = (
            f"<NextContinuationToken>{escape(page[-1])}</NextContinuationToken>"
            if truncated
            else ""
        )
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix>"
            f"<KeyCount>{len(page)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>"
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>{token}"
            + "".join(contents)
            + "".join(prefixes)
            + "</ListBucketResult>"
        ).encode()
        return Response(200, body, {"Content-Type": "application/xml"})


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
            return store.list(bucket, query)
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


async def serve(root: Path, host: str, port: int, buckets: list[str]) -> None:
    store = Bucket(root)
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
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        parser.error("the object store serves loopback only")
    held = _lock(args.root)
    asyncio.run(serve(args.root, args.host, args.port, args.bucket))
    del held


if __name__ == "__main__":
    main()
