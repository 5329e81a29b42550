"""hvac's JSON adapter on a urllib3 connection pool: the same requests, a fifth of the overhead.

``requests.Session.request`` spends more CPU merging settings, cookies and hooks than urllib3
spends sending the request; a fleet entry makes ~20 Vault requests, so that was about a quarter of
the command's CPU (benchmarks/README.md, "Issue 24: CPU per fleet entry"). ``LeanJSONAdapter``
sends hvac's usual requests (a JSON body or query parameters) straight through one urllib3 pool
per store and answers exactly as ``hvac.adapters.JSONAdapter`` does: the decoded JSON of a 200,
hvac's exception for an error status, a ``requests.Response`` otherwise. What stays the same:

- never a redirect: any 3xx answer raises ``VaultRedirectError`` (the token and the body are never
  re-sent elsewhere);
- TLS verification as requests does it (certifi's bundle for ``verify=True``, or the given CA file
  or directory; nothing for ``verify=False``);
- the timeout (connect and read), no retries, and the same request headers and exceptions
  (urllib3's are raised as requests' own, which ``connectors.vault`` maps to store errors).

A proxy or a client certificate, and any request hvac sends with other arguments, take requests'
own path (``RawAdapter.request``) unchanged.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
from typing import Any
from urllib.parse import urlencode, urlsplit

import certifi
import hvac.adapters
import requests
import requests.exceptions
import requests.utils
import urllib3
import urllib3.exceptions
from requests.structures import CaseInsensitiveDict
from urllib3.util.ssl_ import create_urllib3_context

__all__ = ["POOL_SIZE", "LeanJSONAdapter", "VaultRedirectError"]

POOL_SIZE = 64
"""Connections a store keeps open to Vault (threads beyond that open and close their own)."""

_LEAN_ARGUMENTS = frozenset({"json", "params"})
_USER_AGENT = requests.utils.default_user_agent()


class VaultRedirectError(requests.exceptions.RequestException):
    """Vault answered with a redirect, which is never followed."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


_certifi: list[ssl.SSLContext] = []
_certifi_lock = threading.Lock()


def tls_arguments(verify: bool | str) -> dict[str, Any]:
    """The pool's TLS arguments, as requests sets them for ``verify``: ``True`` one context with
    certifi's bundle for the process (loading it costs ~20 ms of CPU; requests too preloads it
    once), a path that CA file or directory (read for each new connection, as requests does),
    ``False`` no verification."""
    if verify is False:
        return {"cert_reqs": "CERT_NONE"}
    if verify is True:
        with _certifi_lock:
            if not _certifi:
                context = create_urllib3_context()
                context.load_verify_locations(cafile=certifi.where())  # requests' bundle
                _certifi.append(context)
            return {"ssl_context": _certifi[0]}
    if os.path.isdir(verify):
        return {"cert_reqs": "CERT_REQUIRED", "ca_cert_dir": verify}
    return {"cert_reqs": "CERT_REQUIRED", "ca_certs": verify}


class LeanJSONAdapter(hvac.adapters.JSONAdapter):  # type: ignore[misc]  # hvac is untyped
    """``hvac.Client(adapter=LeanJSONAdapter, ...)``; the session hvac is given still serves what
    the lean path does not (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        verify = self._kwargs.get("verify")
        timeout = self._kwargs.get("timeout")
        parts = urlsplit(self.base_uri)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        lean = (
            parts.scheme in ("http", "https")
            and not self._kwargs.get("proxies")
            and not self._kwargs.get("cert")
            and not self.allow_redirects
        )
        self._pool: urllib3.HTTPConnectionPool | None = None
        if lean:
            pool_kwargs: dict[str, Any] = {}
            if parts.scheme == "https":
                pool_kwargs = tls_arguments(verify if isinstance(verify, bool | str) else True)
            self._pool = urllib3.connection_from_url(
                self._origin,
                maxsize=POOL_SIZE,
                block=False,
                timeout=urllib3.Timeout(connect=timeout, read=timeout),
                retries=False,
                **pool_kwargs,
            )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        super().close()

    def request(self, method: str, url: str, headers: Any = None, raise_exception: bool = True, **kwargs: Any) -> Any:
        if self._pool is None or not _LEAN_ARGUMENTS.issuperset(kwargs.keys() - {"wrap_ttl"}):
            return super().request(method, url, headers=headers, raise_exception=raise_exception, **kwargs)
        while "//" in url:  # as hvac does: Vault reads a double slash as one
            url = url.replace("//", "/")
        full = self.urljoin(self.base_uri, url)
        sent = {
            "User-Agent": _USER_AGENT,
            "Accept-Encoding": "gzip, deflate",
            "Accept": "*/*",
            "Connection": "keep-alive",
            **(headers or {}),
        }
        if self.request_header:
            sent["X-Vault-Request"] = "true"
        if self.token:
            sent["X-Vault-Token"] = self.token
        if self.namespace:
            sent["X-Vault-Namespace"] = self.namespace
        wrap_ttl = kwargs.get("wrap_ttl")
        if wrap_ttl:
            sent["X-Vault-Wrap-TTL"] = str(wrap_ttl)
        target = full[len(self._origin) :] or "/"
        params = kwargs.get("params")
        if params:
            target += ("&" if "?" in target else "?") + urlencode(params, doseq=True)
        body: bytes | None = None
        if kwargs.get("json") is not None:
            body = json.dumps(kwargs["json"], allow_nan=False).encode()
            sent["Content-Type"] = "application/json"
        elif method.upper() not in ("GET", "HEAD"):
            sent["Content-Length"] = "0"  # as requests sends it
        response = self._send(method.upper(), target, body, sent)
        if 300 <= response.status < 400:
            raise VaultRedirectError(response.status)
        if response.status == 200:
            try:
                return json.loads(response.data)
            except ValueError:
                pass
        wrapped = _as_requests_response(response, full)
        if not wrapped.ok and (raise_exception and not self.ignore_exceptions):
            self._raise_for_error(method, full, wrapped)
        return wrapped

    def _send(self, method: str, target: str, body: bytes | None, headers: dict[str, str]) -> Any:
        assert self._pool is not None
        try:
            return self._pool.urlopen(
                method, target, body=body, headers=headers, redirect=False, retries=False, preload_content=True
            )
        except urllib3.exceptions.SSLError as exc:
            raise requests.exceptions.SSLError(exc) from None
        except urllib3.exceptions.NewConnectionError as exc:  # a ConnectTimeoutError subclass
            raise requests.exceptions.ConnectionError(exc) from None
        except urllib3.exceptions.ConnectTimeoutError as exc:
            raise requests.exceptions.ConnectTimeout(exc) from None
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise requests.exceptions.ReadTimeout(exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise requests.exceptions.ConnectionError(exc) from None


def _as_requests_response(raw: Any, url: str) -> requests.Response:
    """What hvac returns for an answer other than a JSON 200 (a 204, an error it raises from)."""
    response = requests.Response()
    response.status_code = raw.status
    response.headers = CaseInsensitiveDict(raw.headers)
    response._content = raw.data
    response.url = url
    response.reason = raw.reason
    response.encoding = requests.utils.get_encoding_from_headers(response.headers)
    return response
