"""Earth Engine credentials as its users expect them: a service account's key file, what
`earthengine authenticate` stored, or application default credentials; and the project.
Nothing here logs or returns a secret in a message: errors name files and fixes only."""

from __future__ import annotations

from typing import Any

import ee

from embedders.naming import setting
from tasks.sources.registry import EarthEngineOptions, ImagerySourceError


def no_credentials() -> str:
    """What to do when no credentials are found, naming the settings as the reader does."""
    return (
        "no Earth Engine credentials found: run `earthengine authenticate` (or `gcloud auth "
        f"application-default login`), or give {setting('ee_key_file')} with a service "
        f"account's JSON key file; and give {setting('ee_project')}, a Google Cloud project "
        "registered for Earth Engine"
    )


def load_credentials(access: EarthEngineOptions) -> tuple[Any, str | None]:
    """Credentials and project as Earth Engine users expect them: the service account key of
    `ee_key_file`; else what `earthengine authenticate` stored; else application default
    credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud's ADC file, the metadata server).
    The project is `ee_project`, else the credentials' own."""
    import google.auth
    import google.auth.exceptions
    from google.oauth2 import credentials as user_credentials
    from google.oauth2 import service_account

    project: str | None = None
    if access.ee_key_file:
        try:
            sa = service_account.Credentials.from_service_account_file(
                access.ee_key_file, scopes=ee.oauth.SCOPES
            )
        except (OSError, ValueError, KeyError) as e:
            raise ImagerySourceError(
                f"cannot read the service account key {access.ee_key_file} "
                f"({type(e).__name__}); give {setting('ee_key_file')} the JSON key file Google "
                "Cloud created for the service account"
            ) from None  # the parser's message may quote the file
        return sa, access.ee_project or sa.project_id
    stored = _stored_earthengine_credentials()
    if stored is not None:
        args = {**stored}
        project = args.pop("quota_project_id", None)
        return user_credentials.Credentials(None, **args), access.ee_project or project
    try:
        credentials, project = google.auth.default(scopes=ee.oauth.SCOPES)
    except google.auth.exceptions.DefaultCredentialsError as e:
        raise ImagerySourceError(no_credentials()) from e
    project = access.ee_project or project or getattr(credentials, "quota_project_id", None)
    return credentials, project


def _stored_earthengine_credentials() -> dict[str, Any] | None:
    """What `earthengine authenticate` wrote (~/.config/earthengine/credentials), or None."""

    try:
        args = ee.oauth.get_credentials_arguments()
    except (OSError, ValueError):
        return None
    return args if args.get("refresh_token") else None
