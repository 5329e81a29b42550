"""No client that carries a secret follows a redirect (docs/rotation.md "Secrets").

Each test points a client at a real local server that answers every request with a 307 to a
second real local server, then asserts that nothing at all arrived at the second one: no token,
no key, no body. A 307 keeps the method and body, so following it would re-send the new secret.
"""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from pydantic import SecretStr

from connectors.aws_secrets import AwsSecretsStore
from connectors.consumers import Consumer, ConsumerClient
from connectors.errors import ConsumerError, LangfuseError, StoreError
from connectors.keypair import KeyPair
from connectors.langfuse import LangfuseAdminClient, LangfuseProjectClient
from connectors.notify import Notification, Notifier, NotifyTarget
from connectors.store import SecretLocation
from connectors.vault import VaultStore
from connectors.vault_auth import AppRoleAuth, TokenAuth
from tests.fixtures.stores import AWS_REGION, AWS_TEST_CREDENTIALS
from tests.hostile_http import Recorder, Redirector

TOKEN = "s.redirect-test-vault-token-0001"
SECRET_ID = "approle-secret-id-redirect-0002"


@pytest.fixture
def elsewhere() -> Iterator[Recorder]:
    with Recorder() as server:
        yield server


@pytest.fixture(params=[301, 302, 307, 308])
def redirector(request: pytest.FixtureRequest, elsewhere: Recorder) -> Iterator[Redirector]:
    with Redirector(elsewhere.url, status=request.param) as server:
        yield server


def test_vault_never_follows_a_redirect_with_its_token_or_the_new_secret(
    redirector: Redirector, elsewhere: Recorder
) -> None:
    store = VaultStore(redirector.url, auth=TokenAuth(SecretStr(TOKEN)), timeout_s=2.0)
    pair = KeyPair.generate()
    with pytest.raises(StoreError) as raised:
        store.seed(SecretLocation(path="langfuse/x"), pair, "http://langfuse.test")
    assert redirector.hits >= 1
    assert elsewhere.seen == []
    assert "redirect" in str(raised.value)
    assert TOKEN not in str(raised.value) and "Location" not in str(raised.value)


def test_vault_approle_login_never_follows_a_redirect_with_the_secret_id(
    redirector: Redirector, elsewhere: Recorder
) -> None:
    store = VaultStore(redirector.url, auth=AppRoleAuth("role", SecretStr(SECRET_ID)), timeout_s=2.0)
    with pytest.raises(StoreError):
        store.read_current(SecretLocation(path="langfuse/x"))
    assert redirector.hits >= 1
    assert elsewhere.seen == []


def test_aws_never_follows_a_redirect_with_the_signed_request(redirector: Redirector, elsewhere: Recorder) -> None:
    session = boto3.session.Session(region_name=AWS_REGION, **AWS_TEST_CREDENTIALS)
    store = AwsSecretsStore(region=AWS_REGION, endpoint_url=redirector.url, session=session, timeout_s=2.0)
    with pytest.raises(StoreError):
        store.seed(SecretLocation(path="langfuse/x"), KeyPair.generate(), "http://langfuse.test")
    assert redirector.hits >= 1
    assert elsewhere.seen == []


def test_langfuse_clients_never_follow_a_redirect_with_a_key(redirector: Redirector, elsewhere: Recorder) -> None:
    pair = KeyPair.generate()
    org_secret = SecretStr("sk-lf-org-secret-0003")
    with (
        LangfuseAdminClient(redirector.url, "pk-lf-org", org_secret, timeout_s=2.0) as admin,
        pytest.raises(LangfuseError),
    ):
        admin.create_api_key("project-1", pair, "note")
    with LangfuseProjectClient(redirector.url, pair, timeout_s=2.0) as project, pytest.raises(LangfuseError):
        project.probe()
    assert redirector.hits >= 2
    assert elsewhere.seen == []


def test_consumer_probes_and_restart_hooks_never_follow_a_redirect(redirector: Redirector, elsewhere: Recorder) -> None:
    consumer = Consumer(
        name="api",
        health_url=f"{redirector.url}/health?token=consumer-token-0004",
        restart_url=f"{redirector.url}/restart?token=consumer-token-0004",
        headers={"Authorization": SecretStr("Bearer consumer-header-token-0016")},
        timeout_s=2.0,
    )
    with ConsumerClient() as client:
        observation = client.observe(consumer)
        with pytest.raises(ConsumerError):
            client.restart(consumer)
    assert observation.public_key is None
    assert observation.error == f"health check answered HTTP {redirector.status}"
    assert redirector.hits == 2
    assert elsewhere.seen == []


def test_notifications_never_follow_a_redirect_with_their_headers_or_body(
    redirector: Redirector, elsewhere: Recorder
) -> None:
    host = redirector.url.removeprefix("http://")
    notifier = Notifier([NotifyTarget.parse(f"json://user:pass-0005@{host}/hook?+X-Token=header-token-0006")])
    result = notifier.send(Notification(title="rotated", body="done", kind="info"))
    assert result.status == "failed"
    assert redirector.hits == 1
    assert elsewhere.seen == []


def test_a_notify_url_that_turns_redirects_back_on_is_rejected() -> None:
    with pytest.raises(ValueError, match="redirect"):
        NotifyTarget.parse("json://127.0.0.1:9/hook?redirect=yes")
