"""Signed URLs kept out of texts, log records and source errors (tasks/sources/redact.py,
tasks/sources/stac.py keeps_secrets)."""

import io
import logging
from urllib.parse import quote

import pytest

from tasks.sources.failures import error_chain, keeps_secrets
from tasks.sources.redact import redact_logs, redact_urls
from tasks.sources.registry import ImagerySourceError, TransientSourceError
from tests.stac_api_server import sas_token, signature

TOKEN = sas_token()
SIG = signature(TOKEN)
URL = f"https://acct.blob.core.windows.net/c/B02.tif?{TOKEN}"


@pytest.mark.parametrize(
    "text",
    [
        f"HTTP response code on {URL}: 0",  # rasterio's warning
        f"Failed to load {URL}:1 due to rasterio error",  # odc-stac's error
        f"'/vsicurl/{URL}' not recognized as being in a supported file format",
        f"B02.tif?{TOKEN}: HTTP response code: 403",  # GDAL naming a file bare
        f'"GET /c/B02.tif?{TOKEN} HTTP/1.1" 403',  # urllib3's request line
        f"Retrying ... : /c/B02.tif?{TOKEN}",
        f"the token {TOKEN}",  # a token on its own
        f"/vsicurl?url={quote(URL, safe='')}",  # percent-encoded inside another URL
    ],
)
def test_redact_urls__a_signature_whole_or_bare_is_taken_out(text: str) -> None:
    assert SIG in text or quote(SIG, safe="") in text
    clean = redact_urls(text)
    assert SIG not in clean and quote(SIG, safe="") not in clean
    assert "<redacted>" in clean


def test_redact_urls__the_rest_of_the_text_stays() -> None:
    assert redact_urls(f"reading ({URL}): 403") == (
        "reading (https://acct.blob.core.windows.net/c/B02.tif?<redacted>): 403"
    )
    unsigned = "what? the file x.tif?tile=3&level=2 and a question?"
    assert redact_urls(unsigned) == unsigned


def test_redact_logs__every_logger_and_handler_sees_records_without_the_signature(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Records of libraries' child loggers (rasterio._base, odc.loader._rio), with arguments
    and a traceback, reach a test's capture and a handler of their own redacted."""
    redact_logs()
    stream = io.StringIO()
    own = logging.StreamHandler(stream)
    own.setFormatter(logging.Formatter("%(message)s"))
    prefect = logging.getLogger("prefect.task_runs.test-redact")
    prefect.addHandler(own)
    try:
        with caplog.at_level(logging.DEBUG):
            logging.getLogger("rasterio._base").debug(
                "Dataset <open DatasetReader name=%r mode='r'> is started.", URL
            )
            try:
                raise OSError(f"{URL}: HTTP response code: 403")
            except OSError:
                logging.getLogger("odc.loader._rio").exception("Failed to load %s:%d", URL, 1)
                prefect.error("task failed", exc_info=True)
    finally:
        prefect.removeHandler(own)
    said = caplog.text + "".join(r.getMessage() for r in caplog.records) + stream.getvalue()
    assert SIG not in said
    assert said.count("?<redacted>") >= 5  # two messages, two tracebacks, one handler's copy
    assert "HTTP response code: 403" in stream.getvalue()  # the traceback is still told


def test_keeps_secrets__a_source_error_leaves_with_no_signature_and_no_cause() -> None:
    @keeps_secrets
    def read(error: Exception) -> None:
        try:
            raise error
        except Exception as e:
            raise ImagerySourceError("reading an asset failed") from e

    with pytest.raises(ImagerySourceError) as caught:
        read(OSError(f"{URL}: HTTP response code: 404"))
    texts = [f"{e!s} {e!r}" for e in error_chain(caught.value)]
    assert len(texts) == 1 and SIG not in texts[0]
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_keeps_secrets__other_errors_are_classified_and_clean_ones_pass_as_they_are() -> None:
    @keeps_secrets
    def read(error: Exception) -> None:
        raise error

    with pytest.raises(TransientSourceError, match=r"B02\.tif\?<redacted>") as caught:
        read(TimeoutError(f"reading {URL} timed out"))
    assert SIG not in str(caught.value)
    plain = ValueError("no secret here")
    with pytest.raises(ValueError) as passed:
        read(plain)
    assert passed.value is plain
