"""The admin's words in Simplified Chinese (the default) and English.

Pages render in the language of the `lang` cookie, which the switch in the top bar sets, so
the browser remembers it; the same table goes to the page's scripts for the messages they show.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

LANGS = ("zh", "en")

TEXT: dict[str, tuple[str, str]] = {
    # frame
    "app.name": ("硅基 Key 池", "Silicon Pool"),
    "nav.home": ("主页", "Home"),
    "nav.keys": ("Key 管理", "Keys"),
    "nav.models": ("模型", "Models"),
    "nav.logs": ("日志", "Logs"),
    "nav.stats": ("统计", "Stats"),
    "nav.settings": ("设置", "Settings"),
    "nav.logout": ("退出", "Log out"),
    "lang.switch": ("English", "中文"),
    "warn.default_password": (
        "管理员仍在使用默认密码 admin/admin，请尽快在设置页修改。",
        "The admin password is still the default admin/admin: change it on the Settings page.",
    ),
    "common.loading": ("加载中…", "Loading…"),
    "common.prev": ("上一页", "Previous"),
    "common.next": ("下一页", "Next"),
    "common.page": ("第 {page} / {pages} 页，共 {total} 条", "Page {page} of {pages}, {total} in all"),
    "common.copy": ("复制", "Copy"),
    "common.copied": ("已复制", "Copied"),
    "common.saved": ("已保存", "Saved"),
    "common.error": ("出错了：", "Error: "),
    "common.all": ("全部", "All"),
    "common.apply": ("应用", "Apply"),
    "common.reset": ("重置", "Reset"),
    "common.done": ("完成", "Done"),
    "common.failed": ("失败", "Failed"),
    # login
    "login.title": ("登录", "Log in"),
    "login.username": ("用户名", "Username"),
    "login.password": ("密码", "Password"),
    "login.submit": ("登录", "Log in"),
    "login.hint": ("默认用户名和密码都是 admin", "The default username and password are both admin"),
    # home
    "home.keys_total": ("Key 总数", "Keys"),
    "home.balance": ("总余额（¥）", "Total balance (¥)"),
    "home.balance_note": (
        "仅统计已知余额；{n} 个 Key 余额未知（硅基流动已不再提供国内 Key 的余额查询）",
        "Known balances only; keys whose balance is unknown: {n} (SiliconFlow no longer reports China keys' balances)",
    ),
    "home.today_calls": ("今日调用", "Calls today"),
    "home.today_tokens": ("今日 tokens", "Tokens today"),
    "home.today_errors": ("今日错误", "Errors today"),
    "home.import": ("导入 Key", "Import keys"),
    "home.import_hint": (
        "随意粘贴：每行一个，或用逗号、分号、空格分隔；可带引号和余额后缀。",
        "Paste anything: one per line or separated by commas, semicolons or spaces; quotes and balance notes are fine.",
    ),
    "home.import_submit": ("导入并校验", "Import and check"),
    "home.import_result": (
        "导入 {imported} 个（其中零余额 {zero_balance} 个、未校验 {unchecked} 个），重复 {duplicates}，"
        "格式错误 {invalid_format}，无效 {rejected}",
        "Imported {imported} ({zero_balance} zero-balance, {unchecked} unchecked); {duplicates} duplicates, "
        "{invalid_format} bad format, {rejected} rejected",
    ),
    "home.export": ("导出 Key", "Export keys"),
    "home.export_submit": ("下载 keys.txt", "Download keys.txt"),
    "home.format": ("格式", "Format"),
    "home.format.lines": ("每行一个", "One per line"),
    "home.format.comma": ("逗号分隔", "Comma-separated"),
    "home.format.lines_with_balance": ("每行一个并带余额", "One per line with balance"),
    "home.sort": ("排序", "Sort"),
    "home.sort.balance_desc": ("余额从高到低", "Balance, high to low"),
    "home.sort.balance_asc": ("余额从低到高", "Balance, low to high"),
    "home.sort.key_asc": ("字典序", "Key, A to Z"),
    "home.sort.key_desc": ("字典逆序", "Key, Z to A"),
    "home.refresh": ("刷新余额", "Refresh balances"),
    "home.refresh_hint": (
        "逐个查询余额。只有明确的 401 才会标记失效，刷新从不删除 Key。",
        "Checks every key. Only a definite 401 marks a key invalid; a refresh never deletes a key.",
    ),
    "home.refresh_submit": ("刷新全部余额", "Refresh all balances"),
    "home.refresh_result": (
        "已更新 {updated}（零余额 {zero_balance}，余额不可查询 {balance_unavailable}），失效 {invalid}，"
        "不可达 {unreachable}；已知余额 ¥{balance_before} → ¥{balance_after}",
        "Updated {updated} ({zero_balance} zero-balance, {balance_unavailable} with no balance reported), "
        "{invalid} invalid, {unreachable} unreachable; known balance ¥{balance_before} → ¥{balance_after}",
    ),
    "home.clients": ("客户端配置", "Client set-up"),
    "home.rests": ("限流中的模型", "Models resting after rate limits"),
    "home.rests_hint": (
        "限额按账号和模型计算：这些模型在下列 Key 上暂停使用，其他模型不受影响；到期自动恢复。",
        "Limits belong to an account and a model: these models rest on the keys counted, other models are"
        " unaffected; each rest ends by itself.",
    ),
    "home.rests_keys": ("限流 Key 数", "Keys resting"),
    "home.rests_kind": ("限额类型", "Limit"),
    "home.rests_until": ("最晚恢复时间", "Last one ends"),
    "home.rests_clear": ("清除", "Clear"),
    "home.rests_clear_all": ("全部清除", "Clear all"),
    "home.rests_cleared": ("已清除 {cleared} 条限流", "Cleared {cleared} rests"),
    "home.base_url": ("Base URL", "Base URL"),
    # states
    "state.all": ("全部", "All"),
    "state.active": ("可用", "Active"),
    "state.zero": ("零余额", "Zero balance"),
    "state.disabled": ("已禁用", "Disabled"),
    "state.invalid": ("已失效", "Invalid"),
    "state.cooling": ("冷却中", "Cooling"),
    "state.unchecked": ("未校验", "Unchecked"),
    # keys
    "keys.search": ("搜索 Key 片段或 ID", "Search a key fragment or id"),
    "keys.col.key": ("Key", "Key"),
    "keys.col.balance": ("余额", "Balance"),
    "keys.col.usage": ("使用次数", "Uses"),
    "keys.col.state": ("状态", "State"),
    "keys.col.added": ("添加时间", "Added"),
    "keys.col.last_used": ("最近使用", "Last used"),
    "keys.col.last_error": ("最近错误", "Last error"),
    "keys.col.actions": ("操作", "Actions"),
    "keys.enable": ("启用", "Enable"),
    "keys.disable": ("禁用", "Disable"),
    "keys.refresh": ("刷新", "Refresh"),
    "keys.funded": ("已充值", "Topped up"),
    "keys.funded_hint": (
        "账户已充值：零余额 Key 回到付费层，余额记为未知",
        "The account was topped up: zero-balance keys go back to the paid tier, balance unknown",
    ),
    "keys.balance_unknown": ("未知", "unknown"),
    "keys.balance_footnote": (
        "余额“未知”：硅基流动已不再提供国内 Key 的余额查询（/user/info 返回 410），Key 有效、余额未知；"
        "遇到余额不足（30001）时会自动记为零余额，账户充值后可点“已充值”。",
        'Balance "unknown": SiliconFlow no longer reports China keys\' balances (/user/info answers 410); '
        "the key is valid, its balance unknown. An insufficient-balance answer (30001) marks it zero by "
        'itself; after topping the account up, use "Topped up".',
    ),
    "keys.balance_unknown_why": (
        "硅基流动已不再提供国内 Key 的余额查询（/user/info 返回 410）；Key 有效，余额未知。"
        "遇到余额不足（30001）时会自动记为零余额",
        "SiliconFlow no longer reports China keys' balances (/user/info answers 410): the key is valid, its "
        "balance unknown. An insufficient-balance answer (30001) marks it zero by itself",
    ),
    "keys.delete": ("删除", "Delete"),
    "keys.selected": ("已选 {n} 个", "{n} selected"),
    "keys.confirm_delete": ("确定删除 {n} 个 Key？此操作不可恢复。", "Delete {n} key(s)? This cannot be undone."),
    "keys.deleted": ("已删除 {n} 个", "Deleted {n}"),
    "keys.changed": ("已更新 {n} 个", "Changed {n}"),
    "keys.empty": ("没有符合条件的 Key", "No keys match"),
    "keys.clear_rests": ("清除限流", "Clear rests"),
    "keys.rest_until": ("至", "until"),
    "keys.rest_account": ("同账号", "whole account"),
    # models
    "models.filter": ("筛选模型", "Filter models"),
    "models.free": ("免费", "Free"),
    "models.reload": ("从上游重新获取", "Reload from upstream"),
    "models.count": ("共 {n} 个模型", "{n} models"),
    "type.text": ("文本", "Text"),
    "type.image": ("图像", "Image"),
    "type.audio": ("音频", "Audio"),
    "type.video": ("视频", "Video"),
    "type.other": ("其他", "Other"),
    # logs
    "logs.model": ("模型", "Model"),
    "logs.endpoint": ("接口", "Endpoint"),
    "logs.status": ("状态", "Status"),
    "logs.status.ok": ("成功", "Success"),
    "logs.status.error": ("失败", "Error"),
    "logs.since": ("开始日期", "From"),
    "logs.until": ("结束日期", "Until"),
    "logs.clear": ("清空日志", "Clear logs"),
    "logs.confirm_clear": (
        "确定清空全部日志？统计中的用量也会一并清空。",
        "Clear the whole call log? The usage totals in the stats are cleared too.",
    ),
    "logs.col.time": ("时间", "Time"),
    "logs.col.key": ("Key", "Key"),
    "logs.col.tokens": ("tokens（输入/输出）", "Tokens (in/out)"),
    "logs.col.latency": ("耗时", "Latency"),
    "logs.col.error": ("错误", "Error"),
    "logs.stream": ("流式", "stream"),
    "logs.limited": ("限流", "limited"),
    "logs.empty": ("暂无日志", "No calls logged"),
    # stats
    "stats.day": ("按小时（当天）", "Per hour (day)"),
    "stats.month": ("按天（当月）", "Per day (month)"),
    "stats.date": ("日期", "Date"),
    "stats.calls": ("调用次数", "Calls"),
    "stats.errors": ("错误", "Errors"),
    "stats.prompt": ("输入 tokens", "Prompt tokens"),
    "stats.completion": ("输出 tokens", "Completion tokens"),
    "stats.per_model": ("各模型 tokens", "Tokens per model"),
    "stats.tokens": ("tokens", "Tokens"),
    "stats.time": ("时间", "Time"),
    "stats.model": ("模型", "Model"),
    "stats.no_chart": (
        "图表库未能加载，以下为表格数据。",
        "The chart library could not load; the figures are shown as tables.",
    ),
    "stats.tables": ("数据表", "Data tables"),
    # settings
    "settings.proxy": ("转发", "Proxy"),
    "settings.save": ("保存设置", "Save settings"),
    "settings.generate": ("生成", "Generate"),
    "settings.account": ("管理员账号", "Admin account"),
    "settings.current_password": ("当前密码", "Current password"),
    "settings.new_username": ("新用户名（可留空）", "New username (optional)"),
    "settings.new_password": ("新密码（至少 6 位）", "New password (6+ characters)"),
    "settings.change_account": ("修改账号", "Change account"),
}

# What the page scripts need, beside the labels they find in the page.
_SCRIPT_GROUPS = ("common", "state", "keys", "home", "logs", "models", "type", "stats")
_SCRIPT_KEYS = tuple(k for k in TEXT if k.split(".")[0] in _SCRIPT_GROUPS)


def language(request: web.Request) -> str:
    lang = request.cookies.get("lang", "zh")
    return lang if lang in LANGS else "zh"


def translator(lang: str) -> Callable[..., str]:
    """`t(key, **values)` for templates."""
    column = LANGS.index(lang)

    def t(key: str, **values: object) -> str:
        text = TEXT[key][column] if key in TEXT else key
        return text.format(**values) if values else text

    return t


def script_messages(lang: str) -> dict[str, str]:
    column = LANGS.index(lang)
    return {k: TEXT[k][column] for k in _SCRIPT_KEYS}
