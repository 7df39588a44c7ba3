"""Typed application state, declared in one place."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from .admin.auth import Account, LoginThrottle
from .balance import BalanceChecker
from .config import Config
from .crypto import Secrets
from .hosts import HostCheck
from .jobs import Jobs
from .lifecycle import KeyLifecycle
from .models import ModelCatalog
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
CHECKER = web.AppKey("checker", BalanceChecker)
LIFECYCLE = web.AppKey("lifecycle", KeyLifecycle)
JOBS = web.AppKey("jobs", Jobs)
CATALOG = web.AppKey("catalog", ModelCatalog)
ACCOUNT = web.AppKey("account", Account)
THROTTLE = web.AppKey("throttle", LoginThrottle)
HOSTS = web.AppKey("hosts", HostCheck)
