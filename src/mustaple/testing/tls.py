"""A TLS server on loopback that staples whatever bytes a test chooses.

    with StaplingServer(leaf) as server:                 # 127.0.0.1, a free port
        server.set_staple(der)                           # or None (no staple), or any bytes
        ...connect to server.port with TLS 1.2 or 1.3...
        server.status_requests                           # handshakes that asked for a staple

It serves `leaf` (certificate, key and chain), staples the bytes set at the time of each
handshake to clients that send status_request, and answers any HTTP request with a short 200
so that `curl --cert-status` can judge the staple as a browser would. Each connection gets its
own thread; the server accepts until stopped. Every method is safe from any thread.

Why not pyOpenSSL: the OpenSSL its wheels bundle (3.6 and later) parses a staple before
sending it, so it drops bytes that are not DER and re-encodes the rest. To staple broken
responses byte for byte, the server drives the system's libssl (OpenSSL 3, as on Debian 12
and 13) through ctypes. On a system whose libssl is 3.6 or later, staples are re-encoded too.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import socket
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from mustaple.testing.pki import Leaf

__all__ = ["StaplingServer"]

_ACCEPT_POLL = 0.05  # seconds between checks for stop() while waiting for a connection
_MAX_REQUEST = 65536
_HTTP_OK = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
    b"Connection: close\r\n\r\nok\n"
)

# From OpenSSL's ssl.h and tls1.h: the macros wrap these control commands.
_CTRL_SET_TLSEXT_SERVERNAME_CB = 53
_CTRL_SET_TLSEXT_STATUS_REQ_CB = 63
_CTRL_SET_TLSEXT_STATUS_REQ_OCSP_RESP = 71
_CTRL_SET_MIN_PROTO_VERSION = 123
_CTRL_SET_MAX_PROTO_VERSION = 124
_TLS1_2_VERSION = 0x0303
_TLS1_3_VERSION = 0x0304
_FILETYPE_PEM = 1
_NAMETYPE_HOST_NAME = 0
_TLSEXT_ERR_OK = 0
_TLSEXT_ERR_ALERT_FATAL = 2
_TLSEXT_ERR_NOACK = 3

_P, _INT, _LONG = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
_SIGNATURES: dict[str, tuple[list[Any], Any]] = {
    "OpenSSL_version_num": ([], ctypes.c_ulong),
    "TLS_server_method": ([], _P),
    "SSL_CTX_new": ([_P], _P),
    "SSL_CTX_free": ([_P], None),
    "SSL_CTX_use_certificate_chain_file": ([_P, ctypes.c_char_p], _INT),
    "SSL_CTX_use_PrivateKey_file": ([_P, ctypes.c_char_p, _INT], _INT),
    "SSL_CTX_ctrl": ([_P, _INT, _LONG, _P], _LONG),
    "SSL_CTX_callback_ctrl": ([_P, _INT, _P], _LONG),
    "SSL_ctrl": ([_P, _INT, _LONG, _P], _LONG),
    "SSL_new": ([_P], _P),
    "SSL_free": ([_P], None),
    "SSL_set_fd": ([_P, _INT], _INT),
    "SSL_accept": ([_P], _INT),
    "SSL_read": ([_P, _P, _INT], _INT),
    "SSL_write": ([_P, ctypes.c_char_p, _INT], _INT),
    "SSL_shutdown": ([_P], _INT),
    "SSL_get_servername": ([_P, _INT], ctypes.c_char_p),
    "CRYPTO_malloc": ([ctypes.c_size_t, ctypes.c_char_p, _INT], _P),
    "ERR_clear_error": ([], None),
}
_StatusCallback = ctypes.CFUNCTYPE(_INT, _P, _P)  # int cb(SSL *, void *arg)
_NameCallback = ctypes.CFUNCTYPE(_INT, _P, _P, _P)  # int cb(SSL *, int *alert, void *arg)


@functools.cache
def _libssl() -> ctypes.CDLL:
    """The system's libssl with the signatures above; RuntimeError when there is none."""
    try:
        lib = ctypes.CDLL("libssl.so.3")  # the soname of every OpenSSL 3.x
    except OSError as exc:
        raise RuntimeError(
            "StaplingServer needs the system OpenSSL 3 library (libssl.so.3): "
            "apt-get install libssl3"
        ) from exc
    for function, (argtypes, restype) in _SIGNATURES.items():
        getattr(lib, function).argtypes = argtypes
        getattr(lib, function).restype = restype
    if lib.OpenSSL_version_num() < 0x30000000:
        raise RuntimeError("StaplingServer needs OpenSSL 3, and libssl.so.3 is older")
    return lib


def _checked(der: bytes | None) -> bytes | None:
    if der is not None and not isinstance(der, bytes):
        raise TypeError(f"a staple is bytes or None, not {type(der).__name__}")
    if der == b"":
        raise ValueError("an empty staple cannot be sent; pass None for no staple")
    return der


class StaplingServer:
    """A TLS 1.2/1.3 server for `leaf` on `host` that staples `staple` (None: no staple)."""

    def __init__(
        self, leaf: Leaf, *, staple: bytes | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        if not isinstance(leaf, Leaf):
            raise TypeError(f"leaf must be a mustaple.testing.Leaf, not {type(leaf).__name__}")
        self.leaf = leaf
        self.host = host
        self._requested_port = port
        self._lib = _libssl()
        self._lock = threading.Lock()
        self._staple = _checked(staple)
        self._status_requests = 0
        self._server_names: list[str | None] = []
        self._callbacks = (_StatusCallback(self._on_status), _NameCallback(self._on_name))
        self._context: int | None = None
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._live: dict[threading.Thread, socket.socket] = {}

    @property
    def port(self) -> int:
        """The port listened on (once started)."""
        if self._listener is None:
            raise RuntimeError("the stapling server is not started")
        port: int = self._listener.getsockname()[1]
        return port

    @property
    def status_requests(self) -> int:
        """How many handshakes so far asked for a staple (sent status_request)."""
        with self._lock:
            return self._status_requests

    @property
    def server_names(self) -> list[str | None]:
        """The SNI name of every handshake so far, in order (None when none was sent)."""
        with self._lock:
            return list(self._server_names)

    def set_staple(self, der: bytes | None) -> None:
        """Staple `der` from the next handshake on: any non-empty bytes, or None for none."""
        der = _checked(der)
        with self._lock:
            self._staple = der

    def start(self) -> None:
        """Listen and accept in a background thread; returns once the port is open."""
        if self._listener is not None:
            raise RuntimeError("the stapling server is already started")
        context = self._make_context()
        try:
            listener = socket.create_server((self.host, self._requested_port))
        except OSError:
            self._lib.SSL_CTX_free(context)
            raise
        self._context = context
        self._stopping.clear()
        listener.settimeout(_ACCEPT_POLL)
        self._listener = listener
        self._acceptor = threading.Thread(
            target=self._accept, args=(listener,), name="stapling-server", daemon=True
        )
        self._acceptor.start()

    def stop(self) -> None:
        """Stop accepting, cut the connections still open and wait for their threads."""
        listener, acceptor = self._listener, self._acceptor
        if listener is None or acceptor is None:
            return
        self._stopping.set()
        acceptor.join()
        listener.close()
        with self._lock:
            live = dict(self._live)
            for sock in live.values():
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for worker in live:
            worker.join(timeout=10)
        self._lib.SSL_CTX_free(self._context)  # connections still alive hold their own reference
        self._listener = self._acceptor = self._context = None

    def __enter__(self) -> StaplingServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # --- OpenSSL ---------------------------------------------------------------------------------

    def _make_context(self) -> int:
        lib = self._lib
        context: int = lib.SSL_CTX_new(lib.TLS_server_method())
        with tempfile.TemporaryDirectory(prefix="mustaple-tls-") as directory:
            files = self.leaf.write(Path(directory))
            loaded = (
                lib.SSL_CTX_use_certificate_chain_file(context, bytes(files.fullchain)) == 1
                and lib.SSL_CTX_use_PrivateKey_file(context, bytes(files.key), _FILETYPE_PEM) == 1
            )
        if not loaded:
            lib.SSL_CTX_free(context)
            raise RuntimeError("the system OpenSSL could not load the leaf's certificate or key")
        lib.SSL_CTX_ctrl(context, _CTRL_SET_MIN_PROTO_VERSION, _TLS1_2_VERSION, None)
        lib.SSL_CTX_ctrl(context, _CTRL_SET_MAX_PROTO_VERSION, _TLS1_3_VERSION, None)
        status, name = (ctypes.cast(callback, _P) for callback in self._callbacks)
        lib.SSL_CTX_callback_ctrl(context, _CTRL_SET_TLSEXT_STATUS_REQ_CB, status)
        lib.SSL_CTX_callback_ctrl(context, _CTRL_SET_TLSEXT_SERVERNAME_CB, name)
        return context

    def _on_name(self, ssl: int, alert: int, arg: int) -> int:
        name = self._lib.SSL_get_servername(ssl, _NAMETYPE_HOST_NAME)
        with self._lock:
            self._server_names.append(name.decode("ascii", "replace") if name else None)
        return _TLSEXT_ERR_OK

    def _on_status(self, ssl: int, arg: int) -> int:
        """Called only for handshakes that sent status_request."""
        with self._lock:
            self._status_requests += 1
            der = self._staple
        if der is None:
            return _TLSEXT_ERR_NOACK
        buffer = self._lib.CRYPTO_malloc(len(der), b"mustaple", 0)  # OpenSSL frees it
        if not buffer:
            return _TLSEXT_ERR_ALERT_FATAL
        ctypes.memmove(buffer, der, len(der))
        self._lib.SSL_ctrl(ssl, _CTRL_SET_TLSEXT_STATUS_REQ_OCSP_RESP, len(der), buffer)
        return _TLSEXT_ERR_OK

    # --- Connections -----------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = listener.accept()
            except OSError:
                continue  # no connection within the poll, or a client gone before accept
            sock.setblocking(True)
            worker = threading.Thread(
                target=self._serve, args=(sock,), name="stapling-connection", daemon=True
            )
            with self._lock:
                self._live[worker] = sock
            worker.start()

    def _serve(self, sock: socket.socket) -> None:
        lib = self._lib
        ssl = lib.SSL_new(self._context)
        try:
            if ssl and lib.SSL_set_fd(ssl, sock.fileno()) == 1 and lib.SSL_accept(ssl) == 1:
                self._answer_http(ssl)
                lib.SSL_shutdown(ssl)
        finally:
            lib.SSL_free(ssl)  # accepts NULL
            lib.ERR_clear_error()  # a client that left early leaves errors in this thread
            with self._lock:
                del self._live[threading.current_thread()]
                sock.close()

    def _answer_http(self, ssl: int) -> None:
        """Read one request head, if the client sends one, and answer 200 "ok"."""
        buffer = ctypes.create_string_buffer(4096)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < _MAX_REQUEST:
            size: int = self._lib.SSL_read(ssl, buffer, len(buffer))
            if size <= 0:
                return  # the client closed (a probe hangs up after the handshake)
            head += buffer.raw[:size]
        self._lib.SSL_write(ssl, _HTTP_OK, len(_HTTP_OK))
