"""An in-process moto server (AWS Secrets Manager, IAM, STS, ...) for tests and the demo.

``python -m devstack.moto_server`` starts one, prints ``{"url": ...}`` as one JSON line and serves
until SIGTERM or SIGINT. Use the credentials ``testing``/``testing`` and region ``us-east-1``.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import boto3
import requests
from moto.server import ThreadedMotoServer
from pydantic import SecretStr

__all__ = ["IamUser", "MotoServer"]

TEST_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@dataclass(frozen=True)
class IamUser:
    name: str
    access_key_id: str
    secret_access_key: SecretStr
    account_id: str = "123456789012"

    @property
    def arn(self) -> str:
        return f"arn:aws:iam::{self.account_id}:user/{self.name}"

    def session(self, region: str = "us-east-1") -> boto3.session.Session:
        return boto3.session.Session(
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key.get_secret_value(),
            region_name=region,
        )


class MotoServer:
    """``ThreadedMotoServer`` on 127.0.0.1 with a free port. Use as a context manager, or call
    ``start()``/``stop()``. moto keeps its state per process: ``reset()`` wipes it."""

    def __init__(self, *, port: int = 0) -> None:
        self._port = port
        self._server: ThreadedMotoServer | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("moto server is not running")
        return self._url

    def start(self) -> MotoServer:
        if self._server is not None:
            return self
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log per request
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self._port, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._server = server
        self._url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
        self._url = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def reset(self) -> None:
        """Wipe every backend's state and switch IAM enforcement off again."""
        requests.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()
        self.disable_iam_enforcement()

    # --- IAM enforcement (for denial tests; moto can only deny per action, not per resource) ----

    def enable_iam_enforcement(self) -> None:
        """From now on every request is checked against IAM (the ``testing`` keys stop working)."""
        self._reset_auth("0")

    def disable_iam_enforcement(self) -> None:
        self._reset_auth("inf")

    def _reset_auth(self, count: str) -> None:
        requests.post(f"{self.url}/moto-api/reset-auth", data=count.encode(), timeout=10).raise_for_status()

    def create_iam_user(self, name: str, allowed_actions: list[str]) -> IamUser:
        """An IAM user (with an access key) allowed exactly ``allowed_actions`` on every resource.

        Call it while enforcement is off, then ``enable_iam_enforcement()``.
        """
        iam = self.client("iam")
        iam.create_user(UserName=name)
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": allowed_actions, "Resource": "*"}],
        }
        iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return IamUser(
            name=name,
            access_key_id=key["AccessKeyId"],
            secret_access_key=SecretStr(key["SecretAccessKey"]),
        )

    def create_role(
        self, name: str, allowed_actions: list[str], *, trusted: str, external_id: str | None = None
    ) -> str:
        """An IAM role allowed ``allowed_actions`` on every resource, assumable by the principal ARN
        ``trusted`` (with ``external_id`` required by its trust policy when given; moto checks
        both under IAM enforcement). Returns the role's ARN."""
        iam = self.client("iam")
        condition = {"StringEquals": {"sts:ExternalId": external_id}} if external_id else {}
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": trusted},
                    "Action": "sts:AssumeRole",
                    **({"Condition": condition} if condition else {}),
                }
            ],
        }
        arn: str = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": allowed_actions, "Resource": "*"}],
        }
        iam.put_role_policy(RoleName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy))
        return arn

    def client(self, service: str, region: str = "us-east-1") -> Any:
        """A boto3 client for this server with the ``testing`` credentials."""
        return boto3.client(  # type: ignore[call-overload]
            service, endpoint_url=self.url, region_name=region, **TEST_CREDENTIALS
        )


def main() -> int:
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with MotoServer() as server:
        print(json.dumps({"url": server.url}), flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
