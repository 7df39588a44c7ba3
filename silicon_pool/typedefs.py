"""Typed application state, declared in one place."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from .config import Config
from .crypto import Secrets
from .pool import KeyPool
from .proxy import Proxy
from .settings import Settings
from .store import Store

CONFIG = web.AppKey("config", Config)
SECRETS = web.AppKey("secrets", Secrets)
STORE = web.AppKey("store", Store)
SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", KeyPool)
UPSTREAM = web.AppKey("upstream", aiohttp.ClientSession)
PROXY = web.AppKey("proxy", Proxy)
