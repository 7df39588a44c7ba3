"""Typed application state, declared in one place.

Nothing of the project is imported at run time (the classes only type the keys), so any module
can read app state without an import circle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    import aiohttp

    from .admin.auth import Account, LoginThrottle, Revocations
    from .balance import BalanceChecker
    from .config import Config
    from .crypto import Secrets
    from .hosts import HostCheck
    from .http1 import Http1Client
    from .jobs import Jobs
    from .lifecycle import KeyLifecycle
    from .metrics import Metrics
    from .models import ModelCatalog
    from .pool import KeyPool
    from .proxy import Proxy
    from .settings import Settings
    from .store import Store

CONFIG: web.AppKey[Config] = web.AppKey("config")
SECRETS: web.AppKey[Secrets] = web.AppKey("secrets")
STORE: web.AppKey[Store] = web.AppKey("store")
SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
POOL: web.AppKey[KeyPool] = web.AppKey("pool")
UPSTREAM: web.AppKey[aiohttp.ClientSession] = web.AppKey("upstream")
CLIENT: web.AppKey[Http1Client] = web.AppKey("client")  # the proxy's own, to the upstream
PROXY: web.AppKey[Proxy] = web.AppKey("proxy")
CHECKER: web.AppKey[BalanceChecker] = web.AppKey("checker")
LIFECYCLE: web.AppKey[KeyLifecycle] = web.AppKey("lifecycle")
JOBS: web.AppKey[Jobs] = web.AppKey("jobs")
CATALOG: web.AppKey[ModelCatalog] = web.AppKey("catalog")
ACCOUNT: web.AppKey[Account] = web.AppKey("account")
THROTTLE: web.AppKey[LoginThrottle] = web.AppKey("throttle")
REVOKED: web.AppKey[Revocations] = web.AppKey("revoked")
HOSTS: web.AppKey[HostCheck] = web.AppKey("hosts")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
