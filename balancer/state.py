"""Typed keys for the balancer's application state."""

from __future__ import annotations

import random

import aiohttp
from aiohttp import web

from balancer.config import BalancerConfig
from balancer.forward import HttpSubstations
from balancer.health import OutlierDetector
from balancer.inflight import InFlight
from balancer.ledger import PendingLedger
from balancer.metrics import BalancerMetrics
from balancer.refresh import PolicyRefreshLoop
from balancer.serving import ServingState

CONFIG = web.AppKey("config", BalancerConfig)
# What requests are decided from (policy, snapshot, mode), and the loop that keeps it fresh.
SERVING = web.AppKey("serving", ServingState)
REFRESH_LOOP = web.AppKey("refresh_loop", PolicyRefreshLoop)
LEDGER = web.AppKey("ledger", PendingLedger)
HEALTH = web.AppKey("health", OutlierDetector)
METRICS = web.AppKey("metrics", BalancerMetrics)
HTTP = web.AppKey("http", aiohttp.ClientSession)
SUBSTATIONS = web.AppKey("substations", HttpSubstations)
RNG = web.AppKey("rng", random.Random)
INFLIGHT = web.AppKey("inflight", InFlight)
