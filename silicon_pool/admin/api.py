"""The admin JSON API under /api: what the pages and scripts call. Every route but login needs
a session (see `gate.py`); keys leave masked except through `secret` and `export`."""

from __future__ import annotations

import math
import secrets
import sqlite3
import time
from datetime import date, datetime
from typing import Any

import orjson
from aiohttp import web

from ..keys import INVALID, Key
from ..models import CatalogUnavailable
from ..pool import KeyPool, Rest
from ..settings import SETTINGS as SETTING_LIST
from ..settings import SettingError, Settings
from ..typedefs import ACCOUNT, CATALOG, JOBS, LIFECYCLE, POOL, REVOKED, SETTINGS, STORE, THROTTLE
from . import queries
from .auth import Account, check_login, end_session, hash_password, save_account, start_session

MAX_PASTE_BYTES = 8 * 1024 * 1024
KEY_STATES = ("all", "active", "zero", "disabled", "invalid", "cooling", "unchecked")
KEY_SORTS = {
    "added_at": lambda k: (k.added_at, k.id),
    "balance": lambda k: (-math.inf if k.balance is None else k.balance, k.id),
    "usage_count": lambda k: (k.usage_count, k.id),
    "last_used_at": lambda k: (k.last_used_at or 0.0, k.id),
    "key": lambda k: k.secret,
}
EXPORT_SORTS = {
    "balance_desc": (KEY_SORTS["balance"], True),
    "balance_asc": (KEY_SORTS["balance"], False),
    "key_asc": (KEY_SORTS["key"], False),
    "key_desc": (KEY_SORTS["key"], True),
}


class ApiError(Exception):
    """Answered as `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def dumps(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def read_json(request: web.Request, limit: int = 1024 * 1024) -> dict[str, Any]:
    too_large = ApiError(400, f"request body over {limit // 1024 // 1024} MB (请求体过大)")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks, size = [], 0
    while chunk := await request.content.readany():  # a chunked body is stopped at the limit, not after
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    body = b"".join(chunks)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "the body must be JSON (请求体不是合法的 JSON)") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object (请求体必须是 JSON 对象)")
    return data


def _str_field(data: dict[str, Any], name: str, *, required: bool = True, max_len: int = 256) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise ApiError(400, f"{name}: must be a non-empty string of at most {max_len} characters")
    return value


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"{name}: must be a whole number") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name}: must be between {low} and {high}")
    return value


def _choice_param(request: web.Request, name: str, options: tuple[str, ...] | dict[str, Any], default: str) -> str:
    value = request.query.get(name) or default
    if value not in options:
        raise ApiError(400, f"{name}: must be one of {', '.join(options)}")
    return value


def _ids(value: Any) -> list[int]:
    if (
        not isinstance(value, list)
        or len(value) > 1_000_000
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in value)
    ):
        raise ApiError(400, "ids: must be a list of key ids")
    return value


def _rest_view(rest: Rest) -> dict[str, Any]:
    return {"model": rest.model, "kind": rest.kind, "until": rest.until, "scope": rest.scope}


def _key_view(pool: KeyPool, key: Key, now: float) -> dict[str, Any]:
    """A key as the admin shows it, with the rests that hold it back (its account's included)."""
    return {**key.view(now), "rests": [_rest_view(r) for r in pool.rests_of(key)]}


def _key(request: web.Request) -> Key:
    key = request.app[POOL].keys.get(int(request.match_info["id"]))
    if key is None:
        raise ApiError(404, "no such key (Key 不存在)")
    return key


# -- login and account ------------------------------------------------------------------------


def _me(account: Account) -> dict[str, Any]:
    return {"username": account.username, "default_password": account.is_default}


async def login(request: web.Request) -> web.Response:
    data = await read_json(request)
    username, password = _str_field(data, "username"), _str_field(data, "password")
    throttle, account = request.app[THROTTLE], request.app[ACCOUNT]
    client = request.remote or "unknown"
    if wait := throttle.wait(client):
        raise ApiError(
            429, f"too many failed logins; try again in {wait}s (登录失败次数过多)", {"Retry-After": str(wait)}
        )
    throttle.failed(client)  # counted before the check, so guesses sent at once are throttled too
    if not await check_login(account, username or "", password or ""):
        raise ApiError(401, "wrong username or password (用户名或密码错误)")
    throttle.succeeded(client)
    await start_session(request, account)
    return dumps(_me(account))


async def logout(request: web.Request) -> web.Response:
    await end_session(request, request.app[ACCOUNT], request.app[REVOKED])
    return dumps({"ok": True})


async def me(request: web.Request) -> web.Response:
    return dumps(_me(request.app[ACCOUNT]))


async def change_account(request: web.Request) -> web.Response:
    data = await read_json(request)
    current = _str_field(data, "current_password") or ""
    username = _str_field(data, "username", required=False, max_len=64)
    password = _str_field(data, "password")
    account = request.app[ACCOUNT]
    if username is not None and (username.strip() != username or any(c.isspace() for c in username)):
        raise ApiError(400, "username: no spaces (用户名不能包含空格)")
    if len(password or "") < 6:
        raise ApiError(400, "password: at least 6 characters (密码至少 6 位)")
    throttle, client = request.app[THROTTLE], request.remote or "unknown"
    if wait := throttle.wait(client):
        raise ApiError(429, f"too many wrong passwords; try again in {wait}s", {"Retry-After": str(wait)})
    throttle.failed(client)
    if not await check_login(account, account.username, current):
        raise ApiError(403, "current password is wrong (当前密码错误)")
    throttle.succeeded(client)
    new_hash = hash_password(password or "")
    updated = Account(username or account.username, new_hash, False, secrets.token_hex(8))
    await save_account(request.app[STORE], updated)
    account.username, account.password_hash, account.is_default, account.epoch = (
        updated.username,
        updated.password_hash,
        updated.is_default,
        updated.epoch,
    )
    await start_session(request, account)  # this session stays; every other one is logged out
    return dumps(_me(account))


# -- keys ----------------------------------------------------------------------------------------


async def import_keys(request: web.Request) -> web.Response:
    data = await read_json(request, MAX_PASTE_BYTES)
    text = data.get("keys")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "keys: paste some keys as text (请粘贴 Key)")
    lifecycle = request.app[LIFECYCLE]
    job = request.app[JOBS].start("import", lambda job: lifecycle.import_paste(job, text))
    return dumps({"job_id": job.id}, status=202)


async def get_job(request: web.Request) -> web.Response:
    job = request.app[JOBS].get(request.match_info["id"])
    if job is None:
        raise ApiError(404, "no such job (任务不存在)")
    return dumps(job.view())


def _select(keys: list[Key], state: str, query: str, now: float) -> list[Key]:
    if state != "all":
        keys = [k for k in keys if k.status(now) == state]
    if query:
        needle = query.lower()
        keys = [k for k in keys if needle in k.secret.lower() or needle == str(k.id)]
    return keys


async def list_keys(request: web.Request) -> web.Response:
    page = _int_param(request, "page", 1, 1, 10**9)
    size = _int_param(request, "page_size", 50, 1, 1000)
    sort = _choice_param(request, "sort", KEY_SORTS, "added_at")
    order = _choice_param(request, "order", ("asc", "desc"), "desc")
    state = _choice_param(request, "state", KEY_STATES, "all")
    query = request.query.get("q", "").strip()[:100]
    now, pool = time.monotonic(), request.app[POOL]
    keys = _select(list(pool.keys.values()), state, query, now)
    keys.sort(key=KEY_SORTS[sort], reverse=order == "desc")
    start = (page - 1) * size
    return dumps({"items": [_key_view(pool, k, now) for k in keys[start : start + size]], "total": len(keys)})


async def key_secret(request: web.Request) -> web.Response:
    key = _key(request)
    return dumps({"id": key.id, "key": key.secret})


async def patch_key(request: web.Request) -> web.Response:
    key = _key(request)
    data = await read_json(request)
    if set(data) != {"enabled"} or not isinstance(data["enabled"], bool):
        raise ApiError(400, 'enabled: send {"enabled": true|false}')
    request.app[LIFECYCLE].set_enabled([key.id], data["enabled"])
    await request.app[STORE].flush()  # answered once saved
    return dumps(_key_view(request.app[POOL], key, time.monotonic()))


async def delete_key(request: web.Request) -> web.Response:
    key = _key(request)
    await request.app[LIFECYCLE].delete([key.id])
    return dumps({"deleted": 1})


async def bulk(request: web.Request) -> web.Response:
    data = await read_json(request, MAX_PASTE_BYTES)
    ids = _ids(data.get("ids"))
    action = data.get("action")
    lifecycle = request.app[LIFECYCLE]
    if action in ("enable", "disable", "funded"):
        changed = lifecycle.mark_funded(ids) if action == "funded" else lifecycle.set_enabled(ids, action == "enable")
        await request.app[STORE].flush()  # answered once saved
        return dumps({"changed": changed})
    if action == "delete":
        return dumps({"deleted": await lifecycle.delete(ids)})
    if action == "refresh":
        job = request.app[JOBS].start("refresh", lambda job: lifecycle.refresh(job, ids))
        return dumps({"job_id": job.id}, status=202)
    raise ApiError(400, "action: must be one of enable, disable, funded, delete, refresh")


async def refresh_keys(request: web.Request) -> web.Response:
    data = await read_json(request) if request.body_exists else {}
    ids = _ids(data["ids"]) if data.get("ids") is not None else None
    lifecycle, jobs = request.app[LIFECYCLE], request.app[JOBS]
    running = jobs.running("refresh") if ids is None else None
    job = running or jobs.start("refresh", lambda job: lifecycle.refresh(job, ids))  # one full refresh at a time
    return dumps({"job_id": job.id}, status=202)


def _exportable(key: Key, state: str) -> bool:
    """`active`: keys that can serve paid models; `zero`: the free-tier ones. Resting or unchecked
    keys count as what they are, not as the moment's status."""
    if state == "all":
        return True
    if not key.enabled or key.state == INVALID:
        return False
    zero = key.balance is not None and key.balance <= 0
    return zero if state == "zero" else not zero


def _amount(balance: float | None) -> str:
    """`14`, `0.88`, `13.8925`; empty when unknown."""
    return "" if balance is None else f"{balance:.4f}".rstrip("0").rstrip(".")


async def export_keys(request: web.Request) -> web.Response:
    fmt = _choice_param(request, "format", ("lines", "comma", "lines_with_balance"), "lines")
    sort = _choice_param(request, "sort", EXPORT_SORTS, "balance_desc")
    state = _choice_param(request, "state", ("all", "active", "zero"), "all")
    keys = [k for k in request.app[POOL].keys.values() if _exportable(k, state)]
    order, reverse = EXPORT_SORTS[sort]
    keys.sort(key=order, reverse=reverse)
    if fmt == "comma":
        text = ",".join(k.secret for k in keys)
    elif fmt == "lines_with_balance":
        text = "\n".join(f"{k.secret}----{_amount(k.balance)}" for k in keys)
    else:
        text = "\n".join(k.secret for k in keys)
    return web.Response(
        text=text + ("\n" if text and fmt != "comma" else ""),
        content_type="text/plain",
        headers={"Content-Disposition": 'attachment; filename="keys.txt"', "Cache-Control": "no-store"},
    )


async def summary(request: web.Request) -> web.Response:
    now = time.monotonic()
    states = dict.fromkeys(KEY_STATES[1:], 0)
    by_account: dict[str, float] = {}
    total, unknown = 0.0, 0
    for key in request.app[POOL].keys.values():
        states[key.status(now)] += 1
        if key.balance is None:
            unknown += key.state != INVALID
        elif key.balance > 0:
            if key.account_id:
                by_account[key.account_id] = max(by_account.get(key.account_id, 0.0), key.balance)
            else:
                total += key.balance
    today = await request.app[STORE].read(lambda c: queries.totals_since(c, queries.today_start()))
    rested = sorted(request.app[POOL].rested_models().items(), key=lambda item: (-item[1][0], item[0]))
    return dumps(
        {
            "keys": {"total": len(request.app[POOL]), **states},
            "total_balance": round(total + sum(by_account.values()), 4),  # of the keys whose balance is known
            "balance_unknown": unknown,
            "today": today,
            "strategy": request.app[SETTINGS].strategy,
            "rests": [{"keys": held, **_rest_view(last)} for _, (held, last) in rested],
        }
    )


async def clear_rests(request: web.Request) -> web.Response:
    """End rests now: of one key (`key_id`, its account's included), of one `model`, or all."""
    key_id = _int_param(request, "key_id", 0, 1, 2**63 - 1) or None
    model = request.query.get("model")  # "" is the model-less requests' own (the model list, uploads)
    if model is not None and len(model) > 256:
        raise ApiError(400, "model: must be a model id (at most 256 characters)")
    if key_id is not None and key_id not in request.app[POOL].keys:
        raise ApiError(404, "no such key (Key 不存在)")
    ended = request.app[POOL].clear_rests(key_id, model)
    await request.app[STORE].delete_rests(ended)
    return dumps({"cleared": len(ended)})


# -- settings -----------------------------------------------------------------------------------


async def get_settings(request: web.Request) -> web.Response:
    return dumps(request.app[SETTINGS].as_dict())


async def settings_schema(_request: web.Request) -> web.Response:
    """Each setting's declaration; `help` stays the one line it was before the declarations grew
    both languages (`label`, `help_i18n`), and `strategies` stays too, for scripts that read them."""
    settings = [
        {**s.describe(), "help": f"{s.help.en} ({s.help.zh})", "help_i18n": s.help._asdict()} for s in SETTING_LIST
    ]
    strategies = [
        {"name": option["value"], "zh": option["zh"], "en": option["en"]}
        for option in Settings.strategy.bounds()["options"]
    ]
    return dumps({"settings": settings, "strategies": strategies})


async def patch_settings(request: web.Request) -> web.Response:
    data = await read_json(request)
    try:
        await request.app[SETTINGS].update(data)
    except SettingError as exc:
        raise ApiError(400, str(exc)) from None
    return dumps(request.app[SETTINGS].as_dict())


# -- logs, stats, models ------------------------------------------------------------------------


def _log_filter(request: web.Request) -> queries.LogFilter:
    q = request.query
    try:
        since = queries.parse_when(q["since"]) if q.get("since") else None
        until = queries.parse_when(q["until"]) if q.get("until") else None
    except ValueError as exc:
        raise ApiError(400, f"since/until: {exc}") from None
    status = _choice_param(request, "status", ("", "ok", "error"), "")
    return queries.LogFilter(q.get("model") or None, q.get("endpoint") or None, status or None, since, until)


async def get_logs(request: web.Request) -> web.Response:
    page = _int_param(request, "page", 1, 1, 10**7)
    size = _int_param(request, "page_size", 50, 1, 500)
    where = _log_filter(request)
    store = request.app[STORE]
    rows, total = await store.read(lambda c: queries.log_page(c, where, (page - 1) * size, size))
    models, endpoints = await store.read(queries.log_choices)
    keys = request.app[POOL].keys
    items = []
    for row in rows:
        item = dict(zip(queries.LOG_FIELDS, row, strict=True))
        key_id = item["key_id"]
        key = keys.get(key_id) if key_id is not None else None
        item["key_masked"] = key.masked if key else ("(deleted)" if key_id is not None else None)
        item["stream"] = bool(item["stream"])
        items.append(item)
    return dumps({"items": items, "total": total, "models": models, "endpoints": endpoints})


async def clear_logs(request: web.Request) -> web.Response:
    """The call log and the hourly totals summed from it: what a client sent is gone from the stats too."""

    def clear(conn: sqlite3.Connection) -> int:
        conn.execute("DELETE FROM usage_hourly")
        return conn.execute("DELETE FROM calls").rowcount

    deleted = await request.app[STORE].write(clear)
    return dumps({"deleted": deleted})


async def get_stats(request: web.Request) -> web.Response:
    range_ = _choice_param(request, "range", ("day", "month"), "day")
    text = request.query.get("date")
    try:
        day = date.fromisoformat(text) if text else datetime.now().date()
    except ValueError:
        raise ApiError(400, "date: must be YYYY-MM-DD") from None
    if not 1971 <= day.year <= 9998:
        raise ApiError(400, "date: the year must be between 1971 and 9998")
    return dumps(await request.app[STORE].read(lambda c: queries.stats(c, range_, day)))


async def get_models(request: web.Request) -> web.Response:
    refresh = _choice_param(request, "refresh", ("0", "1"), "0") == "1"
    try:
        models, fetched_at = await request.app[CATALOG].models(refresh)
    except CatalogUnavailable as exc:
        raise ApiError(exc.status, f"could not fetch the model list: {exc}") from None
    return dumps({"models": models, "fetched_at": fetched_at, "free_models": list(request.app[SETTINGS].free_models)})
