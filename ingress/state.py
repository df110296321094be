"""Typed keys for the ingress's application state."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from ingress.balancers import BalancerReplicas
from ingress.config import IngressConfig
from ingress.metrics import IngressMetrics
from ingress.store import IngressStore

CONFIG = web.AppKey("config", IngressConfig)
STORE = web.AppKey("store", IngressStore)
HTTP = web.AppKey("http", aiohttp.ClientSession)
METRICS = web.AppKey("metrics", IngressMetrics)
# The balancer replicas to use now: the configured URLs, host names expanded to their addresses.
BALANCERS = web.AppKey("balancers", BalancerReplicas)
# Where a substation that moved (recreated container, replaced machine) was found last, and when,
# by name: sessions placed there before then are asked there first, not at the old address.
MOVED_TO = web.AppKey("moved_to", dict[str, tuple[str, float]])
