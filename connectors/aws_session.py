"""The boto3 session ``AwsSecretsStore`` uses, built the way the AWS CLI and SDKs build theirs.

- Region: the configured one, else ``AWS_REGION``, else ``AWS_DEFAULT_REGION``, else the profile's.
- Credentials: the standard chain (environment, profile, SSO, container/instance role), or the
  session given. With ``role_arn``, those credentials assume the role (``sts:AssumeRole``, with
  ``external_id`` when given); the role's temporary credentials are refreshed before they expire,
  so a long wait never outlives them. STS is reached at its regional endpoint, or at
  ``AWS_ENDPOINT_URL_STS`` when set (botocore's standard service endpoint variable).
"""

from __future__ import annotations

import os
from typing import Any

import boto3
import botocore.credentials
import botocore.exceptions
import botocore.session

from connectors.errors import StoreAccessDeniedError

__all__ = ["aws_session", "resolve_region"]

DEFAULT_ROLE_SESSION_NAME = "langfuse-rotate"


def resolve_region(region: str | None, session: boto3.session.Session) -> str:
    """The region the AWS CLI would use; ``ValueError`` when there is none."""
    chosen = region or os.environ.get("AWS_REGION") or session.region_name
    if not chosen:
        raise ValueError(
            "no AWS region: set the store's region, AWS_REGION or AWS_DEFAULT_REGION, or a region in the AWS profile"
        )
    return chosen


def aws_session(
    *,
    region: str | None,
    profile: str | None = None,
    role_arn: str | None = None,
    external_id: str | None = None,
    role_session_name: str = DEFAULT_ROLE_SESSION_NAME,
    session: boto3.session.Session | None = None,
) -> tuple[boto3.session.Session, str]:
    """The session to create clients from, and the region resolved for it."""
    if external_id is not None and role_arn is None:
        raise ValueError("AWS external_id needs role_arn")
    try:
        base = session or boto3.session.Session(profile_name=profile)
    except botocore.exceptions.ProfileNotFound:
        raise StoreAccessDeniedError(f"AWS profile '{profile}' not found") from None
    resolved = resolve_region(region, base)
    if role_arn is None:
        return base, resolved
    return _assume_role(base, resolved, role_arn, external_id, role_session_name), resolved


def _assume_role(
    base: boto3.session.Session,
    region: str,
    role_arn: str,
    external_id: str | None,
    role_session_name: str,
) -> boto3.session.Session:
    source = base.get_credentials()
    if source is None:
        raise StoreAccessDeniedError(f"no AWS credentials to assume {role_arn} with")
    extra: dict[str, Any] = {"RoleSessionName": role_session_name}
    if external_id is not None:
        extra["ExternalId"] = external_id

    def create_client(service: str, **kwargs: Any) -> Any:
        return base.client(service, region_name=region, **kwargs)  # type: ignore[call-overload]

    fetcher = botocore.credentials.AssumeRoleCredentialFetcher(
        client_creator=create_client, source_credentials=source, role_arn=role_arn, extra_args=extra
    )
    credentials = botocore.credentials.DeferredRefreshableCredentials(
        method="assume-role", refresh_using=fetcher.fetch_credentials
    )
    core = botocore.session.Session()
    core.get_component("credential_provider").insert_before("env", _Given(credentials))
    return boto3.session.Session(botocore_session=core, region_name=region)


class _Given(botocore.credentials.CredentialProvider):
    """Hands botocore the assumed role's self-refreshing credentials before any other source."""

    METHOD = "assume-role"
    CANONICAL_NAME = "langfuse-rotate-assume-role"

    def __init__(self, credentials: botocore.credentials.Credentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> botocore.credentials.Credentials:
        return self._credentials
