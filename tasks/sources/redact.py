"""Signed URLs kept out of what swath shows and keeps: Planetary Computer's SAS tokens (an
Azure Shared Access Signature, `st=..&se=..&sp=rl&..&sig=..`) ride in the query strings of
the COG URLs GDAL reads, and GDAL, rasterio, odc-stac and urllib3 name those URLs in their
errors and log lines, whole (`https://host/B02.tif?st=..`) or bare (`B02.tif?st=..`).

One function, `redact_urls`, takes them out of a text. It is applied where errors leave a
source (tasks/sources/stac.py `keeps_secrets`: an error is raised again with its text
redacted and its cause dropped, so neither Prefect's states, logs and result storage nor
the store's reasons see it) and, through `redact_logs`, to every log record this process
makes from then on, whichever logger makes it and whichever handler (the terminal,
Prefect's API, a test's capture) takes it.
"""

import logging
import re
import threading
import traceback
from typing import Any

# The query parameters of an Azure SAS (service, account or user delegation): a query that
# carries one is a signed one, wherever it appears.
SAS_KEYS = frozenset(
    {
        "sig", "st", "se", "sp", "sv", "sr", "spr", "sip", "ss", "srt", "sdd", "ses",
        "skoid", "sktid", "skt", "ske", "sks", "skv", "saoid", "suoid", "scid",
        "rscc", "rscd", "rsce", "rscl", "rsct",
    }
)  # fmt: skip
REDACTED = "<redacted>"

# The query string of an http(s) URL (any: a signature may go by another name), up to a
# blank or a quote; punctuation that ends a sentence or a bracket there stays.
_END = r"(?=[:;,.)\]]*(?:[\s'\"]|$))"
_URL_QUERY = re.compile(rf"(https?://[^\s?#'\"]*)\?[^\s'\"]*?{_END}")
# A query string after anything else (a bare file name, a path): redacted when it is signed.
_QUERY = re.compile(rf"\?([^\s'\"?#]+?){_END}")
# A signature on its own (a token outside a URL, or percent-encoded inside another URL).
_SIGNATURE = re.compile(r"(?<![A-Za-z])(sig(?:=|%3D))(?:(?!%26)[^\s&'\"])+", re.IGNORECASE)


def redact_urls(text: str) -> str:
    """`text` with the query string of every http(s) URL, every other query string that
    carries a SAS parameter, and every SAS signature replaced by '<redacted>'."""
    text = _URL_QUERY.sub(rf"\1?{REDACTED}", text)
    text = _QUERY.sub(_bare_query, text)
    return _SIGNATURE.sub(rf"\1{REDACTED}", text)


def _bare_query(match: re.Match[str]) -> str:
    keys = {part.split("=", 1)[0].lower() for part in match.group(1).split("&") if "=" in part}
    return f"?{REDACTED}" if keys & SAS_KEYS else match.group(0)


def holds_secret(text: str) -> bool:
    return redact_urls(text) != text


def redact_record(record: logging.LogRecord) -> None:
    """Take signed URLs out of a log record: its message (the arguments formatted in), the
    traceback it carries and its stack."""
    try:
        message = record.getMessage()
    except Exception:  # a broken format: logging reports it when the record is emitted
        return
    clean = redact_urls(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[1] is not None:
        text = "".join(traceback.format_exception(*record.exc_info))
        clean = redact_urls(text)
        if clean != text:  # handlers print exc_text in place of the exception's own
            record.exc_info, record.exc_text = None, clean.rstrip("\n")
    elif record.exc_text:
        record.exc_text = redact_urls(record.exc_text)
    if record.stack_info:
        record.stack_info = redact_urls(record.stack_info)


_installed = False
_install_lock = threading.Lock()


def redact_logs() -> None:
    """Redact every log record made in this process from now on (once per process). A
    record factory, not a filter: a logger's filter sees only the records of that very
    logger (not of its children, rasterio._env under rasterio), a handler's only its own,
    and libraries and Prefect add loggers and handlers of their own at any time."""
    global _installed
    with _install_lock:
        if _installed:
            return
        make = logging.getLogRecordFactory()

        def redacting(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make(*args, **kwargs)
            redact_record(record)
            return record

        logging.setLogRecordFactory(redacting)
        _installed = True
