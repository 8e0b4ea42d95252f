"""AWS credentials for a shipped game: never in the build, always short-lived.

By default the producer and the subscriber take credentials from the AWS SDK's standard chain (variables, the
shared files, a container or instance role). A game in players' hands gets them from its own identity
broker instead (Amazon Cognito, the studio's backend): ``refreshing_session(fetch)`` is a boto3 session whose
credentials come from ``fetch`` and are fetched again by botocore before they expire, on whichever thread
needs them next; pass clients made from it (``kinesis=``, ``s3=``) to ``ExperienceProducer`` and
``ModelSubscriber``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import boto3
import botocore.session
from botocore.credentials import CredentialProvider, RefreshableCredentials

METHOD = "rlplatform-client-refresh"


@dataclass(frozen=True)
class TemporaryCredentials:
    """What an identity broker hands a player: keys, session token and when they expire (timezone-aware)."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None
    expiration: datetime

    def __post_init__(self) -> None:
        if self.expiration.tzinfo is None:
            raise ValueError("expiration must be timezone-aware (the broker's UTC time)")


class _HookProvider(CredentialProvider):
    METHOD = METHOD
    CANONICAL_NAME = "rlplatform-client"

    def __init__(self, fetch: Callable[[], TemporaryCredentials]) -> None:
        super().__init__()
        self._fetch = fetch

    def load(self) -> RefreshableCredentials:
        return RefreshableCredentials.create_from_metadata(self._metadata(), self._metadata, METHOD)

    def _metadata(self) -> dict[str, str | None]:
        creds = self._fetch()
        return {
            "access_key": creds.access_key_id,
            "secret_key": creds.secret_access_key,
            "token": creds.session_token,
            "expiry_time": creds.expiration.astimezone(timezone.utc).isoformat(),
        }


def refreshing_session(fetch: Callable[[], TemporaryCredentials], region_name: str | None = None) -> boto3.Session:
    """A boto3 session whose credentials come from ``fetch``, called again shortly before they expire.

    ``fetch`` runs at the first request and then whenever the credentials it returned are about to expire
    (botocore refreshes 15 minutes ahead, and must 10 minutes ahead); an exception from it reaches the call
    that needed credentials, which the producer retries and the subscriber's caller logs.
    """
    core = botocore.session.get_session()
    core.get_component("credential_provider").insert_before("env", _HookProvider(fetch))
    return boto3.Session(botocore_session=core, region_name=region_name)
