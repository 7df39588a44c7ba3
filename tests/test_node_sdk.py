"""The proxy as the OpenAI Node SDK (6.x) sees it: `.ci/run` and the README's test command install
it from npm into tests/.npm; without it (or without node) this test fails, it never skips."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import Running, paid_keys
from tests.fake_upstream import FakeUpstream

HERE = Path(__file__).resolve().parent
MODULES = HERE / ".npm" / "node_modules"
SCRIPT = HERE / "node_sdk.cjs"
TOKEN = "node-sdk-token"
CHAT = "deepseek-ai/DeepSeek-V3"


async def run_node(proxy: Running) -> dict[str, Any]:
    """Run tests/node_sdk.cjs against the proxy (in this event loop's server) and read what it printed."""
    node = shutil.which("node")
    assert node is not None, "node is not installed (Node 20 or later)"
    assert (MODULES / "openai").is_dir(), (
        f"the Node SDK is not installed: npm install --prefix {HERE / '.npm'} openai@6"
    )
    env = {**os.environ, "NODE_PATH": str(MODULES), "BASE_URL": f"{proxy.base}/v1", "API_TOKEN": TOKEN}
    process = await asyncio.create_subprocess_exec(
        node, str(SCRIPT), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(120):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode(errors="replace")
    results: dict[str, Any] = orjson.loads(out)
    return results


async def test_the_node_sdk_gets_openai_shaped_answers(proxy: Running, fake: FakeUpstream) -> None:
    await proxy.set(api_token=TOKEN)
    await proxy.add_keys(*((s, 10.0) for s in paid_keys(fake, 2)))
    results = await run_node(proxy)
    assert results["chat"]["ok"].startswith("fake reply 0.")
    assert results["stream"]["ok"] == {"chunks": 6, "text": "".join(f"fake reply {i}. " for i in range(5))}
    assert results["completions"]["ok"].startswith("fake reply 0.")
    assert fake.seen("/v1/completions")[-1].json["suffix"] == "\n"  # type: ignore[index]
    embeddings = results["embeddings"]["ok"]
    assert embeddings["dimensions"] == 8 and -1 <= embeddings["first"] <= 1 and embeddings["usage"]["prompt_tokens"] > 0
    assert CHAT in results["models"]["ok"] and "BAAI/bge-m3" in results["models"]["ok"]
    assert results["model"]["ok"] == {"id": CHAT, "object": "model", "created": 0, "owned_by": ""}
    assert results["unknownModel"]["error"]["status"] == 404
    assert results["unknownModel"]["error"]["code"] == "model_not_found"
    assert results["images"]["ok"]["url"] == "https://example.invalid/img/0.png" and results["images"]["ok"]["created"]
    upstream = results["upstreamError"]["error"]
    assert upstream["status"] == 400 and upstream["code"] == "20012" and upstream["type"] == "invalid_request_error"
    assert "Model does not exist" in upstream["message"]  # not "400 status code (no body)"
    stranger = results["badToken"]["error"]
    assert stranger["status"] == 401 and stranger["code"] == "invalid_api_key" and "api_token" in stranger["message"]
    rows = await proxy.calls()
    assert sum(r["stream"] for r in rows) == 1 and all(r["caller"] in ("main", "none") for r in rows)
