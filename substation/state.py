"""Typed keys for the substation's application state."""

from __future__ import annotations

from aiohttp import web

from substation.charging import SessionTable
from substation.config import SubstationConfig
from substation.metrics import SubstationMetrics
from substation.saving import Saves
from substation.store import SessionStore

CONFIG = web.AppKey("config", SubstationConfig)
TABLE = web.AppKey("table", SessionTable)
METRICS = web.AppKey("metrics", SubstationMetrics)
STORE = web.AppKey("store", SessionStore)
SAVES = web.AppKey("saves", Saves)
