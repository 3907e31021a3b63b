"""GDAL's own retries of HTTP requests, counted and kept off the terminal.

GDAL retries a range request that got a 429 or 5xx (or a dropped connection) by itself
(GDAL_HTTP_MAX_RETRY, tasks/sources/stac.py), and says so as a CPL warning, "HTTP error code: 503 -
<url>. Retrying again in 0.2 secs", which rasterio hands to Python's logging (loggers
`rasterio._env` and `rasterio._err`, the same retry once through each where both are in
place). Those lines reached the terminal while the run's summary counted no retry. Here
each process that reads imagery through GDAL drops them and counts them; the export adds
the counts of its processes (and its Dask workers) to its summary.

A request that failed for good GDAL also tells as a warning, "HTTP response code on <url>:
403" (0 when no reply came: a host that does not resolve, a refused connection), before it
raises the error the source classifies and reports: that warning is dropped too.
"""

import logging
import threading

RETRY_TEXT = "Retrying again"
FAILED_TEXT = "HTTP response code on "
LOGGERS = ("rasterio._env", "rasterio._err")


class _Retries(logging.Filter):
    """Drops GDAL's retry warnings from one logger, counting them, and its warnings of a
    failed request (the error raised after it says so)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if FAILED_TEXT in message:
            return False
        if RETRY_TEXT not in message:
            return True
        with self._lock:
            self.count += 1
        return False


_filters: dict[str, _Retries] = {}
_install_lock = threading.Lock()


def count_gdal_retries() -> None:
    """Count and drop GDAL's retry warnings in this process from now on, and drop its
    warnings of failed requests (once per process)."""
    with _install_lock:
        for name in LOGGERS:
            if name not in _filters:
                _filters[name] = _Retries()
                logging.getLogger(name).addFilter(_filters[name])


def gdal_retries() -> int:
    """Requests GDAL retried in this process since counting began: the retry warnings of the
    logger that saw the most (each retry is said once per logger in place)."""
    return max((f.count for f in _filters.values()), default=0)
