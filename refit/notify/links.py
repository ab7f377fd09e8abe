"""Links a notice carries: the Prefect UI page of a run, and a browser link for a stored report or
image (an ``s3://`` object presigned, an http(s) URL as it is).
"""

from __future__ import annotations

import logging

from refit.registry.store import S3Store, store_for

log = logging.getLogger("refit.notify")

# Presigned report and image links stay valid this long (the SigV4 maximum).
LINK_TTL_S = 7 * 24 * 3600


def ui_base(settings) -> str | None:
    """The Prefect UI's base URL: ``REFIT_UI_URL``, else Prefect's own ``PREFECT_UI_URL`` (which
    Prefect derives from ``PREFECT_API_URL``), else None (an ephemeral API has no UI)."""
    base = settings.ui_url
    if not base:
        try:
            # Prefect costs seconds to import: only a link without REFIT_UI_URL loads it here.
            from prefect.settings import get_current_settings

            base = get_current_settings().ui_url
        except Exception:  # a link is optional
            base = None
    return base.rstrip("/") if base else None


def flow_run_url(base: str | None, flow_run_id) -> str | None:
    """``<base>/runs/flow-run/<id>``, or None without a base or an id."""
    if not base or not flow_run_id:
        return None
    return f"{base}/runs/flow-run/{flow_run_id}"


def current_run_url(settings) -> str | None:
    """The UI page of the flow run this code runs in, if any."""
    try:
        # Prefect costs seconds to import; code that runs in a flow has loaded it already.
        from prefect.runtime import flow_run

        return flow_run_url(ui_base(settings), flow_run.id)
    except Exception:  # a link is optional
        return None


def browser_url(settings, uri: str | None, expires_s: int = LINK_TTL_S) -> str | None:
    """A link a browser can open for a stored object.

    Args:
        settings: refit's settings (the store's client, to presign with).
        uri: the object's URI.
        expires_s: how long a presigned link stays valid, in seconds.

    Returns:
        An http(s) URI as it is, an ``s3://`` URI presigned, else None (a ``file://`` path is not
        served to browsers).
    """
    if not uri:
        return None
    if uri.startswith(("http://", "https://")):
        return uri
    if not uri.startswith("s3://"):
        return None
    try:
        store = store_for(settings)
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not isinstance(store, S3Store) or not key:
            return None
        # boto3 costs start-up time; only an s3:// link needs it (as in refit.registry.store).
        import boto3
        from botocore.config import Config

        # SigV4 (X-Amz-Signature), which every region and S3-compatible accepts; boto3 still
        # presigns us-east-1 with the deprecated SigV2 unless told.
        meta = store.client.meta
        signer = boto3.client(
            "s3",
            endpoint_url=meta.endpoint_url,
            region_name=meta.region_name,
            config=meta.config.merge(Config(signature_version="s3v4")),
        )
        return signer.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s)
    except Exception as exc:  # a link is optional
        log.warning("no browser link for a stored object: %s", type(exc).__name__)
        return None


def report_link(settings, uri: str | None) -> str | None:
    """The link to show for a stored report: a browser URL when there is one, else the URI itself."""
    return browser_url(settings, uri) or uri
