"""URLs of the admin API, and nothing else."""

from __future__ import annotations

from aiohttp import web

from . import api


def add_api_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/api/login", api.login)
    router.add_post("/api/logout", api.logout)
    router.add_get("/api/me", api.me)
    router.add_post("/api/account", api.change_account)
    router.add_post("/api/keys/import", api.import_keys)
    router.add_get("/api/jobs/{id}", api.get_job)
    router.add_get("/api/keys", api.list_keys)
    router.add_get("/api/keys/export", api.export_keys)
    router.add_post("/api/keys/bulk", api.bulk)
    router.add_post("/api/keys/refresh", api.refresh_keys)
    router.add_get(r"/api/keys/{id:\d{1,18}}/secret", api.key_secret)
    router.add_patch(r"/api/keys/{id:\d{1,18}}", api.patch_key)
    router.add_delete(r"/api/keys/{id:\d{1,18}}", api.delete_key)
    router.add_get("/api/summary", api.summary)
    router.add_delete("/api/rests", api.clear_rests)
    router.add_get("/api/settings", api.get_settings)
    router.add_patch("/api/settings", api.patch_settings)
    router.add_get("/api/settings/schema", api.settings_schema)
    router.add_get("/api/logs", api.get_logs)
    router.add_delete("/api/logs", api.clear_logs)
    router.add_get("/api/stats", api.get_stats)
    router.add_get("/api/models", api.get_models)
