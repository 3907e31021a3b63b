"""How an imagery source's failures are told apart and kept free of secrets: transient
(a retry may help: a timeout, a 429 or 5xx, a body cut short on its way) or not (a wrong
URL, a refused sign-in), a host that cannot be reached at all, and errors whose text would
carry a signed URL, redacted with their cause dropped.
"""

from __future__ import annotations

import functools
import http.client
import json
import re
import zlib
from collections.abc import Callable
from typing import NoReturn
from urllib.error import HTTPError

import urllib3.exceptions

from embedders.naming import given
from tasks.sources.redact import holds_secret, redact_urls
from tasks.sources.registry import ImagerySourceError, TransientSourceError

# What GDAL and curl say when a retry may help (GDAL puts the HTTP status in the message).
_GDAL_HTTP_STATUS = re.compile(r"HTTP (?:response )?code:? (\d{3})", re.IGNORECASE)
_REMOTE = re.compile(r"/vsicurl/|https?://")
_TRANSIENT_TEXT = re.compile(
    r"timed out|timeout was reached|connection reset|connection refused|empty reply"
    r"|recv failure|send failure|couldn't connect|failed to connect|connection was reset",
    re.IGNORECASE,
)


# What a body cut short or changed on its way says when it is decoded: JSON that ends early,
# a compressed block that does not decode (GDAL's TIFF codecs, zlib), a read that got fewer
# bytes than asked. From a remote source a retry may get it whole; from a local file not.
_DECODE_TYPES = (json.JSONDecodeError, EOFError, zlib.error, http.client.IncompleteRead)
_DECODE_TEXT = re.compile(
    r"decoding error|decode error|unexpected end of data|incompleteread|premature end"
    r"|truncated|short read|read error|tiffread|ireadblock failed|transfer closed"
    r"|partial file",
    re.IGNORECASE,
)


def error_chain(error: BaseException) -> list[BaseException]:
    """The error and what it was raised from or during, outermost first, each once."""
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    return chain


def unreachable(error: BaseException) -> str | None:
    """Why a host cannot be reached at all (its name does not resolve, nothing answers), in
    a few words, or None. A check before the run takes that as permanent (a wrong URL, no
    network); during a run the same failure is retried."""
    chain = error_chain(error)
    text = " | ".join(str(e) for e in chain)
    host = re.search(r"Failed to resolve '([^']+)'", text) or _CURL_UNRESOLVED.search(text)
    if host:
        return f"the host {host.group(1)} does not resolve: no network here, or a wrong host"
    if "Connection refused" in text:
        return "the connection was refused: nothing answers at that address"
    connect = _CURL_CONNECT.search(text)
    if connect and not _TIMED_OUT.search(text):
        return (
            f"no connection to {connect.group(1)} port {connect.group(2)}: it was refused "
            "or has no route, nothing answers at that address"
        )
    return None


# What curl (GDAL's HTTP client) says of a host it cannot reach: "Could not resolve host:
# x.invalid" (older: "Couldn't resolve host 'x'"), and "Failed to connect to h port p after
# 0 ms: Could not connect to server" (refused, no route), which a connect timeout shares,
# adding that it timed out: that one is transient.
_CURL_UNRESOLVED = re.compile(r"(?:Could not|Couldn't) resolve host:? '?([^'\s:]+)")
_CURL_CONNECT = re.compile(r"Failed to connect to (\S+) port (\d+)")
_TIMED_OUT = re.compile(r"timed out|timeout", re.IGNORECASE)


def classify_error(error: BaseException, what: str) -> ImagerySourceError | TransientSourceError:
    """A source failure as TransientSourceError (retry may help) or ImagerySourceError."""
    chain = error_chain(error)
    from rasterio.errors import RasterioIOError  # imported here: rasterio is a heavy import

    text = " | ".join(f"{type(e).__name__}: {e}" for e in chain)
    status = None
    for e in chain:
        if isinstance(e, HTTPError):
            status = e.code
    match = _GDAL_HTTP_STATUS.search(text)
    if status is None and match:
        status = int(match.group(1))
    transient_types = (
        TimeoutError,
        ConnectionError,
        urllib3.exceptions.MaxRetryError,
        urllib3.exceptions.ProtocolError,
        urllib3.exceptions.TimeoutError,
    )
    if status is not None:
        transient = status == 429 or status >= 500
    else:
        remote = _REMOTE.search(f"{what} {text}") is not None
        transient = (
            any(isinstance(e, transient_types) for e in chain)
            or bool(_TRANSIENT_TEXT.search(text))
            # GDAL over HTTP reports a request that failed after its own retries as a failed
            # read or open, with no status; a 4xx would have shown its status above.
            or (remote and any(isinstance(e, RasterioIOError) for e in chain))
            # A body cut short or changed in transit: decoding it fails (short reads too).
            or (
                remote
                and (
                    any(isinstance(e, _DECODE_TYPES) for e in chain)
                    or bool(_DECODE_TEXT.search(text))
                )
            )
        )
    if transient:
        return TransientSourceError(f"{what}: {text}; a retry may succeed")
    if status in (401, 403):
        return ImagerySourceError(
            f"{what}: {text}; the server refused access: the asset URLs need signing or "
            f"credentials (Planetary Computer's: {given(stac_signing='planetary-computer')})"
        )
    return ImagerySourceError(
        f"{what}: {text}; check that the catalog and its asset hrefs exist and are readable"
    )


def raise_classified(error: BaseException, what: str) -> NoReturn:
    """Raise `error` classified (transient or not), with URL query strings redacted. When the
    redaction changed the message the cause is dropped, since its text holds the secret."""
    classified = classify_error(error, what)
    message = redact_urls(str(classified))
    if message == str(classified):
        raise classified from error
    raise type(classified)(f"{message} ({CAUSE_NOT_SHOWN})") from None


CAUSE_NOT_SHOWN = "cause not shown: it holds a signed URL"


def without_secrets(error: Exception) -> Exception | None:
    """None when neither `error` nor what it was raised from or during names a signed URL;
    else the error again, its text redacted and with no cause: a source's own error keeps
    its type, any other is classified (transient or not) first."""
    if not any(holds_secret(f"{e!s} {e!r}") for e in error_chain(error)):
        return None
    if isinstance(error, ImagerySourceError | TransientSourceError):
        kind: type[Exception] = type(error)
        message = str(error)
    else:
        classified = classify_error(error, "reading imagery")
        kind, message = type(classified), str(classified)
    note = "" if CAUSE_NOT_SHOWN in message else f" ({CAUSE_NOT_SHOWN})"
    return kind(f"{redact_urls(message)}{note}")


def keeps_secrets[**P, R](method: Callable[P, R]) -> Callable[P, R]:
    """A source's method whose errors leave it without signed URLs (`without_secrets`): the
    new error is raised outside the handler, so it carries neither cause nor context."""

    @functools.wraps(method)
    def redacting(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except Exception as e:
            clean = without_secrets(e)
            if clean is None:
                raise
        raise clean

    return redacting
