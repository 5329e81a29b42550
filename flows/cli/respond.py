"""``langfuse-rotate respond``: the warm responder's command (docs/responder.md).

Long-running, like a worker: ``PREFECT_API_URL`` (and ``PREFECT_API_AUTH_STRING`` or
``PREFECT_API_KEY``) and the store and Langfuse credentials come from its environment. SIGTERM or
Ctrl-C stops it: it unsubscribes, lets a containment in flight finish, writes its final audit
line and exits 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

from pydantic import SecretStr

from flows.errors import BadInputError
from flows.trigger.automation import DEFAULT_DEPLOYMENT, EVENT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="configuration file (default: $LANGFUSE_ROTATE_CONFIG)")
    parser.add_argument(
        "--deployment",
        default=DEFAULT_DEPLOYMENT,
        help=f"the emergency deployment its runs are recorded under (default: {DEFAULT_DEPLOYMENT})",
    )
    parser.add_argument("--workers", type=int, default=4, help="entries contained at once (default: 4)")


def run(args: argparse.Namespace, config_path: str, config: object, say: Callable[[str], None]) -> int:
    from connectors.prefect_api import PrefectApi
    from connectors.prefect_events import EventStream, EventStreamError
    from connectors.tls import shared_ssl_context
    from flows.audit import AuditLog
    from flows.config.model import RotationConfig
    from flows.prefect.rest import prefect_api_url
    from flows.trigger.responder import Responder, serve

    assert isinstance(config, RotationConfig)
    if args.workers < 1:
        raise BadInputError("--workers must be at least 1")
    url = prefect_api_url()
    if not url:
        raise BadInputError(
            "respond needs a Prefect server: set PREFECT_API_URL (and PREFECT_API_AUTH_STRING or PREFECT_API_KEY) "
            "as for the worker"
        )
    auth, key = os.environ.get("PREFECT_API_AUTH_STRING"), os.environ.get("PREFECT_API_KEY")
    api = PrefectApi(url, auth_string=auth, api_key=key)
    responder = Responder(config, config_path, api, deployment=args.deployment)
    stop = threading.Event()

    def stop_on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():  # a second signal: stop now
            raise KeyboardInterrupt
        say(f"{signal.Signals(signum).name}: stopping after the containments in flight")
        stop.set()

    previous = {sig: signal.signal(sig, stop_on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    handled = [0]

    def counted(line: str) -> None:
        handled[0] += 1
        say(line)

    try:
        responder.warm_up()
        stream = EventStream(
            url,
            [EVENT],
            auth_string=SecretStr(auth) if auth else None,
            api_key=SecretStr(key) if key else None,
            ssl_context=shared_ssl_context(),
            on_connect=lambda: say(f"listening for {EVENT} events at {stream.url}"),
            on_disconnect=lambda why: say(f"events websocket unavailable ({why}): reconnecting"),
        )
        try:
            serve(responder, stream, stop, say=counted, workers=args.workers)
        except EventStreamError as exc:
            say(f"{exc}: stopping")
            AuditLog(config.audit.path).final("respond", None, "failed", error=str(exc))
            return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        api.close()
    AuditLog(config.audit.path).final("respond", None, "stopped", events=handled[0])
    say(f"stopped after {handled[0]} event(s)")
    return 0
