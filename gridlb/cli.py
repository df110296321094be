"""Command-line options every service shares: `--log-format` and the auth rule.

Auth fails closed: a service started without its keys (the ingress: API keys; the balancer and
the substations: the internal token) refuses to start, naming what to set, unless it is told
`--insecure-no-auth`; then it starts open, says so in a WARNING at start-up and in
`<service>_auth_disabled 1`. Keys and the flag together are refused too: one of them is a
mistake, and guessing which would either open a service or lock its callers out.
"""

from __future__ import annotations

import argparse

from gridlb.logs import LOG_FORMATS

INSECURE_FLAG = "--insecure-no-auth"


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                        help="text (default) or json: one JSON object per line")
    parser.add_argument(INSECURE_FLAG, dest="insecure_no_auth", action="store_true",
                        help="start without keys: every caller is accepted (development "
                             "only; a WARNING at start and <service>_auth_disabled 1 say so)")


def auth_refusal(service: str, has_keys: bool, insecure_no_auth: bool, keys: str
                 ) -> str | None:
    """Why `service` must not start with this auth configuration, or None if it may.
    `keys` names where its keys come from, for the message."""
    if not has_keys and not insecure_no_auth:
        return (f"{service}: refusing to start without {keys}: every caller would be "
                f"accepted. Set them, or pass {INSECURE_FLAG} to run open on purpose")
    if has_keys and insecure_no_auth:
        return (f"{service}: {INSECURE_FLAG} was given but {keys} are set too: remove the "
                "flag to check them, or unset them to run open")
    return None


def check_auth(parser: argparse.ArgumentParser, service: str, has_keys: bool,
               insecure_no_auth: bool, keys: str) -> None:
    """Exit through `parser.error` (status 2, usage on stderr) if the service must not start."""
    refusal = auth_refusal(service, has_keys, insecure_no_auth, keys)
    if refusal is not None:
        parser.error(refusal)
