"""Command-line options every service shares: `--log-format` and the auth rule.

Auth fails closed: a service started without its keys (the ingress: API keys; the balancer and
the substations: the internal token) refuses to start, saying what to set, unless it is told
`--insecure-no-auth`; then it starts open and says so, in a WARNING at start-up and in
`<service>_auth_disabled 1`. Keys and the flag together are refused too: one of them is a
mistake, and guessing which would either open a service or lock its callers out.
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

from gridlb.logs import LOG_FORMATS

INSECURE_FLAG = "--insecure-no-auth"


class Keys(NamedTuple):
    """How a service's keys are named in its messages."""

    what: str       # "API keys"
    source: str     # where they are set
    how: str        # the sentence saying how to set them


API_KEYS = Keys("API keys", "GRID_API_KEYS or --api-keys-file",
                "Set GRID_API_KEYS (comma-separated) or --api-keys-file (one key a line)")
INTERNAL_TOKEN = Keys("the internal token", "GRID_INTERNAL_TOKEN",
                      "Set GRID_INTERNAL_TOKEN (the same on the ingress, the balancers and "
                      "the substations)")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                        help="text (default) or json: one JSON object per line")
    parser.add_argument(INSECURE_FLAG, dest="insecure_no_auth", action="store_true",
                        help="start without keys: every caller is accepted (development "
                             "only; a WARNING at start and <service>_auth_disabled 1 say so)")


def auth_refusal(service: str, has_keys: bool, insecure_no_auth: bool, keys: Keys
                 ) -> str | None:
    """Why `service` must not start with this auth configuration, or None if it may."""
    if not has_keys and not insecure_no_auth:
        return (f"{service}: refusing to start without {keys.what}: every caller would be "
                f"accepted. {keys.how}, or pass {INSECURE_FLAG} to run open on purpose")
    if has_keys and insecure_no_auth:
        return (f"{service}: {INSECURE_FLAG} contradicts {keys.what} set in {keys.source}: "
                f"drop the flag to check callers, or unset {keys.source} to run open")
    return None


def check_auth(parser: argparse.ArgumentParser, service: str, has_keys: bool,
               insecure_no_auth: bool, keys: Keys) -> None:
    """Exit through `parser.error` (status 2, usage on stderr) if the service must not start."""
    refusal = auth_refusal(service, has_keys, insecure_no_auth, keys)
    if refusal is not None:
        parser.error(refusal)
