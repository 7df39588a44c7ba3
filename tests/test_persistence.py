"""Keys, counters and settings survive a restart; pool.db alone reveals no key."""

from __future__ import annotations

import os
import stat

from silicon_pool.crypto import SECRET_FILE
from silicon_pool.typedefs import SETTINGS
from tests.conftest import StartProxy, db_path, paid_keys
from tests.fake_upstream import FakeUpstream

CHAT = "deepseek-ai/DeepSeek-V3"


async def test_keys_counters_and_settings_survive_a_restart(start_proxy: StartProxy, fake: FakeUpstream) -> None:
    secrets = paid_keys(fake, 3)
    first = await start_proxy()
    await first.add_keys((secrets[0], 10.5), (secrets[1], 0.0), (secrets[2], None))
    await first.set(strategy="round_robin", api_token="tok", free_models=["a/b", "c/d"], cooldown_seconds=12.5)
    client = first.openai("tok")
    for _ in range(3):
        await client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "x"}])
    first.pool.mark_invalid(first.pool.keys[3], "HTTP 401: Token is invalid.")
    before = {k.id: (k.secret, k.balance, k.usage_count, k.state, k.last_used_at) for k in first.pool.keys.values()}
    await first.stop()  # a clean shutdown flushes the writer

    second = await start_proxy(data_dir=first.data_dir)
    after = {k.id: (k.secret, k.balance, k.usage_count, k.state, k.last_used_at) for k in second.pool.keys.values()}
    assert after == before
    assert sum(k.usage_count for k in second.pool.keys.values()) == 3
    settings = second.server.app[SETTINGS]
    assert settings.strategy == "round_robin" and second.pool.strategy == "round_robin"
    assert settings.api_token == "tok" and settings.free_models == ("a/b", "c/d") and settings.cooldown_seconds == 12.5
    assert len(await second.calls()) == 3


async def test_pool_db_holds_no_key_and_files_are_private(start_proxy: StartProxy, fake: FakeUpstream) -> None:
    secrets = paid_keys(fake, 5)
    proxy = await start_proxy()
    await proxy.add_keys(*((s, 1.0) for s in secrets))
    await proxy.openai().models.list()
    await proxy.stop()
    for name in os.listdir(proxy.data_dir):
        path = proxy.data_dir / name
        if name.startswith("pool.db"):
            raw = path.read_bytes()
            assert not any(s.encode() in raw or s[3:].encode() in raw for s in secrets), name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    assert stat.S_IMODE(proxy.data_dir.stat().st_mode) == 0o700
    assert (proxy.data_dir / SECRET_FILE).stat().st_size == 32
    assert db_path(proxy).exists()


async def test_a_key_is_stored_once(start_proxy: StartProxy, fake: FakeUpstream) -> None:
    [secret] = paid_keys(fake, 1)
    proxy = await start_proxy()
    assert len(await proxy.add_keys((secret, 1.0))) == 1
    assert await proxy.add_keys((secret, 2.0)) == []
    assert len(proxy.pool) == 1
