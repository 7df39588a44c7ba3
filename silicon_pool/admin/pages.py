"""Server-rendered admin pages; each is a frame the page's script fills from the JSON API."""

from __future__ import annotations

from itertools import groupby
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from .. import __version__
from ..settings import DEFAULT_CHARTJS, DEFAULT_CHARTJS_INTEGRITY, Setting
from ..settings import SETTINGS as SETTING_LIST
from ..typedefs import ACCOUNT, SETTINGS
from .i18n import language, script_messages, translator

# An installed wheel carries templates/ and static/ inside the package (setup.cfg maps them there);
# a source checkout or an editable install has them at the top of the repo.
PACKAGE = Path(__file__).resolve().parent.parent
ROOT = PACKAGE if (PACKAGE / "templates").is_dir() else PACKAGE.parent
TEMPLATES, STATIC = ROOT / "templates", ROOT / "static"

# path -> (template, title key)
PAGES = {
    "/": ("home.html", "nav.home"),
    "/keys": ("keys.html", "nav.keys"),
    "/models": ("models.html", "nav.models"),
    "/logs": ("logs.html", "nav.logs"),
    "/stats": ("stats.html", "nav.stats"),
    "/settings": ("settings.html", "nav.settings"),
}


# The settings form, in declaration order: neighbours of one small kind (tokens, numbers) share a grid row.
SETTING_ROWS: list[tuple[bool, list[Setting[Any]]]] = [
    (grid, list(fields))
    for (grid, _), fields in groupby(SETTING_LIST, key=lambda s: (s.grid is not None, s.grid or s.name))
]


def setup_templates(app: web.Application) -> None:
    """Templates only: the frame is added by each page (no context-processor middleware on the proxy path)."""
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"]),
    )


def _frame(request: web.Request) -> dict[str, Any]:
    """What every page's frame shows: language, words, the account and the nav."""
    lang = language(request)
    account = request.app[ACCOUNT]
    return {
        "lang": lang,
        "t": translator(lang),
        "messages": script_messages(lang),
        "username": account.username,
        "default_password": account.is_default,
        "nav": [(path, title) for path, (_, title) in PAGES.items()],
        "path": request.path,
        "version": __version__,
    }


async def page(request: web.Request) -> web.Response:
    template, title = PAGES[request.path]
    chartjs = request.app[SETTINGS].chartjs_url
    integrity = DEFAULT_CHARTJS_INTEGRITY if chartjs == DEFAULT_CHARTJS else None
    context = {
        **_frame(request),
        "title": title,
        "chartjs_url": chartjs,
        "chartjs_integrity": integrity,
        "setting_rows": SETTING_ROWS,
    }
    response = aiohttp_jinja2.render_template(template, request, context)
    response.headers["Cache-Control"] = "no-store"
    return response


async def login_page(request: web.Request) -> web.Response:
    return aiohttp_jinja2.render_template("login.html", request, {**_frame(request), "title": "login.title"})


def add_page_routes(router: web.UrlDispatcher) -> None:
    for path in PAGES:
        router.add_get(path, page)
    router.add_get("/login", login_page, name="login")
    router.add_static("/static/", STATIC, append_version=True, name="static")
