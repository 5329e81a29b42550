"""One TLS context for every HTTP client of the process.

Building one (loading the CA bundle) costs ~0.1 s of CPU; an httpx client builds its own by
default, and a rotation makes several clients, so a fleet of a thousand entries spent most of its
CPU there. The context is the one httpx would build (``httpx.create_ssl_context()``: certifi's
bundle, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``), made once; an ``SSLContext`` is safe to share
between clients and threads.
"""

from __future__ import annotations

import ssl
import threading

import httpx

_lock = threading.Lock()
_context: list[ssl.SSLContext] = []


def shared_ssl_context() -> ssl.SSLContext:
    with _lock:
        if not _context:
            _context.append(httpx.create_ssl_context())
        return _context[0]
