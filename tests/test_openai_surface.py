"""Where SiliconFlow's answers differ from OpenAI's, clients get OpenAI's: errors, images,
`models.retrieve`, event streams with their charset, and call-log rows that say what happened."""

from __future__ import annotations

import aiohttp
import openai
import orjson
import pytest
from yarl import URL

from silicon_pool.multipart import boundary, form_field
from silicon_pool.shapes import openai_error_body, openai_images
from tests.conftest import Running, StartProxy, paid_keys
from tests.fake_upstream import FakeUpstream
from tests.test_hostile_input import answer, post, raw, start_scripted

CHAT = "deepseek-ai/DeepSeek-V3"
MESSAGES = [{"role": "user", "content": "hello there"}]
ASR = "FunAudioLLM/SenseVoiceSmall"


# -- 1: errors in OpenAI's shape -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, b'{"code":20012,"message":"Model does not exist.","data":null}', ("invalid_request_error", "20012")),
        (404, b'{"code":404,"message":"Not Found","data":null}', ("invalid_request_error", "404")),
        (422, b'{"code":20015,"message":"bad","data":null}', ("invalid_request_error", "20015")),
        (401, b'"Invalid token"', ("authentication_error", None)),
        (403, b'{"code":30003,"message":"Model disabled.","data":null}', ("authentication_error", "30003")),
        (
            403,
            b'{"code":30001,"message":"Sorry, your account balance is insufficient"}',
            ("insufficient_quota", "30001"),
        ),
        (
            402,
            b'{"code":30001,"message":"Sorry, your account balance is insufficient"}',
            ("insufficient_quota", "30001"),
        ),
        (429, b"Request was rejected due to rate limiting.", ("rate_limit_error", None)),
        (503, b'{"code":50508,"message":"System is too busy now.","data":null}', ("server_error", "50508")),
        (504, b"<html>504 Gateway Time-out</html>", ("server_error", None)),
    ],
)
def test_error_bodies_are_rewrapped_with_a_type_sdks_map(
    status: int, body: bytes, expected: tuple[str, str | None]
) -> None:
    shaped = openai_error_body(status, body)
    assert shaped is not None
    error = orjson.loads(shaped)["error"]
    assert (error["type"], error["code"]) == expected
    assert error["message"] and error["message"] in body.decode().strip('"')


def test_an_error_already_in_openai_shape_and_an_empty_one() -> None:
    assert openai_error_body(400, b'{"error":{"message":"x","type":"invalid_request_error","code":null}}') is None
    assert orjson.loads(openai_error_body(500, b"") or b"")["error"]["message"] == "HTTP 500 from the upstream"


def test_a_key_the_upstream_wrote_with_json_escapes_is_masked_once_decoded() -> None:
    key = "sk-" + "k" * 48
    escaped = "".join(f"\\u{ord(c):04x}" for c in key).encode()
    shaped = openai_error_body(400, b'{"code":"' + escaped + b'","message":"bad key ' + escaped + b'"}')
    error, masked = orjson.loads(shaped or b"")["error"], f"{key[:7]}…{key[-4:]}"
    assert (error["message"], error["code"]) == (f"bad key {masked}", masked)


@pytest.mark.parametrize(
    ("behavior", "exception", "message", "type_", "code"),
    [
        ("bad_request", openai.BadRequestError, "The parameter is invalid", "invalid_request_error", "20015"),
        ("model_disabled", openai.PermissionDeniedError, "Model disabled.", "authentication_error", "30003"),
    ],
)
async def test_relayed_upstream_errors_reach_the_sdk_with_their_message(
    proxy: Running,
    fake: FakeUpstream,
    behavior: str,
    exception: type[openai.APIStatusError],
    message: str,
    type_: str,
    code: str,
) -> None:
    [secret] = paid_keys(fake, 1)
    fake.set_behavior(secret, behavior)
    await proxy.add_keys((secret, 10.0))
    with pytest.raises(exception) as caught:
        await proxy.openai().chat.completions.create(model=CHAT, messages=MESSAGES)
    assert message in caught.value.message
    assert caught.value.body == {"message": caught.value.body["message"], "type": type_, "code": code}  # type: ignore[index]
    assert len(fake.requests) == 1


async def test_an_unknown_model_is_a_400_with_siliconflows_code(proxy: Running, fake: FakeUpstream) -> None:
    await proxy.add_keys(*((s, 10.0) for s in paid_keys(fake, 1)))
    with pytest.raises(openai.BadRequestError) as caught:
        await proxy.openai().chat.completions.create(model="no/such-model", messages=MESSAGES)
    assert caught.value.code == "20012" and caught.value.type == "invalid_request_error"
    assert "Model does not exist" in caught.value.message


async def test_a_relayed_error_is_rewrapped_with_no_key_in_it(start_proxy: StartProxy, fake: FakeUpstream) -> None:
    def echo(head: bytes) -> bytes:
        auth = next(line for line in head.split(b"\r\n") if line.lower().startswith(b"authorization:"))[15:].strip()
        return answer("400 Bad Request", b"Content-Type: text/plain\r\n", b"bad request for " + auth)

    proxy, server = await start_scripted(start_proxy, echo)
    try:
        [secret] = paid_keys(fake, 1)
        await proxy.add_keys((secret, 5.0))
        status, headers, body = await raw(proxy.server.port, post("/v1/chat/completions"))
    finally:
        server.close()
    assert status == 400 and headers["content-type"] == "application/json"
    masked = f"{secret[:7]}…{secret[-4:]}"
    assert orjson.loads(body) == {
        "error": {"message": f"bad request for Bearer {masked}", "type": "invalid_request_error", "code": None}
    }


async def test_an_unknown_path_answers_in_openai_shape(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await proxy.add_keys(*((s, 10.0) for s in paid_keys(fake, 1)))
    async with http.get(f"{proxy.base}/v1/no/such/path") as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": {"message": "Not Found", "type": "invalid_request_error", "code": "404"}}


# -- 2: images in OpenAI's shape -----------------------------------------------------------------


async def test_images_answer_with_data_and_created_beside_siliconflows_fields(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await proxy.add_keys(*((s, 10.0) for s in paid_keys(fake, 1)))
    answer = await proxy.openai().images.generate(model="Kwai-Kolors/Kolors", prompt="a cat", extra_body={"seed": 7})
    assert answer.data and answer.data[0].url == "https://example.invalid/img/0.png" and answer.created > 0
    body = {"model": "Kwai-Kolors/Kolors", "prompt": "a cat", "batch_size": 2, "seed": 7}
    async with http.post(f"{proxy.base}/v1/images/generations", json=body) as resp:
        raw = await resp.json()
    assert raw["data"] == raw["images"] == [{"url": f"https://example.invalid/img/{n}.png"} for n in range(2)]
    assert raw["seed"] == 7 and raw["timings"] == {"inference": 0.1}
    assert [r["images"] for r in await proxy.calls()] == [1, 2]


def test_an_image_answer_with_its_own_data_keeps_it() -> None:
    body = b'{"images":[{"url":"a"}],"data":[{"url":"b"}],"created":5}'
    assert orjson.loads(openai_images(body)) == {"images": [{"url": "a"}], "data": [{"url": "b"}], "created": 5}
    assert openai_images(b"not json") == b"not json" and openai_images(b'{"x":1}') == b'{"x":1}'


# -- 3: GET /v1/models/{id} ----------------------------------------------------------------------


async def test_models_retrieve_answers_from_the_cached_list(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await proxy.add_keys(*((s, 10.0) for s in paid_keys(fake, 1)))
    model = await proxy.openai().models.retrieve(CHAT)
    assert (model.id, model.object) == (CHAT, "model")
    asked = len(fake.requests)
    encoded = URL(f"{proxy.base}/v1/models/deepseek-ai%2FDeepSeek-V3", encoded=True)
    async with http.get(encoded) as resp:
        assert resp.status == 200 and (await resp.json())["id"] == CHAT
    assert len(fake.requests) == asked  # cached: the upstream is not asked again
    assert not [r for r in fake.requests if r.path.startswith("/v1/models/")]
    with pytest.raises(openai.NotFoundError) as caught:
        await proxy.openai().models.retrieve("no-org/no-such-model")
    assert caught.value.code == "model_not_found" and "no-org/no-such-model" in caught.value.message
    rows = await proxy.calls()
    assert [r["status"] for r in rows] == [200, 200, 404] and rows[0]["endpoint"] == f"models/{CHAT}"


async def test_models_retrieve_without_keys_is_a_503_in_openai_shape(proxy: Running) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        await proxy.openai().models.retrieve(CHAT)
    assert caught.value.status_code == 503 and caught.value.code == "models_unavailable"


# -- 4: event streams name their charset ---------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "relayed"),
    [
        ("text/event-stream", "text/event-stream; charset=utf-8"),
        ("text/event-stream; charset=utf-8", "text/event-stream; charset=utf-8"),
        ("text/event-stream;charset=UTF-8", "text/event-stream;charset=UTF-8"),
    ],
)
async def test_event_streams_name_their_charset(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession, sent: str, relayed: str
) -> None:
    fake.sse_content_type = sent
    await proxy.add_keys(*((s, 10.0) for s in paid_keys(fake, 1)))
    body = {"model": CHAT, "messages": MESSAGES, "stream": True}
    async with http.post(f"{proxy.base}/v1/chat/completions", json=body) as resp:
        assert resp.headers["Content-Type"] == relayed
        assert (await resp.read()).endswith(b"data: [DONE]\n\n")


# -- 6: the call log says what happened ----------------------------------------------------------


async def test_audio_is_no_stream_unless_the_client_asked(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await proxy.add_keys(*((s, 10.0) for s in paid_keys(fake, 1)))
    body = {"model": "FunAudioLLM/CosyVoice2-0.5B", "input": "你好", "voice": "alex"}
    async with http.post(f"{proxy.base}/v1/audio/speech", json=body) as resp:
        assert len(await resp.read()) == 16 * 1024
    async with http.post(f"{proxy.base}/v1/audio/speech", json=body | {"stream": True}) as resp:
        await resp.read()
    assert [(r["model"], r["stream"]) for r in await proxy.calls()] == [("FunAudioLLM/CosyVoice2-0.5B", 0)] * 1 + [
        ("FunAudioLLM/CosyVoice2-0.5B", 1)
    ]


def _form(*parts: tuple[str, bytes], cut: bytes = b"b0und4ry") -> tuple[bytes, str]:
    body = b"".join(
        b"--"
        + cut
        + b'\r\nContent-Disposition: form-data; name="'
        + name.encode()
        + b'"'
        + (b'; filename="a.wav"\r\nContent-Type: audio/wav' if name == "file" else b"")
        + b"\r\n\r\n"
        + value
        + b"\r\n"
        for name, value in parts
    )
    return body + b"--" + cut + b"--\r\n", f"multipart/form-data; boundary={cut.decode()}"


async def test_an_upload_is_logged_with_its_model_and_forwarded_unchanged(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await proxy.add_keys(*((s, 10.0) for s in paid_keys(fake, 1)))
    audio = b'RIFF\r\n--b0und4r\r\nContent-Disposition: form-data; name="model"\r\n\r\nfake/model\r\n' * 50
    body, content_type = _form(("file", audio), ("model", ASR.encode()))
    async with http.post(
        f"{proxy.base}/v1/audio/transcriptions", data=body, headers={"Content-Type": content_type}
    ) as resp:
        assert resp.status == 200 and (await resp.json())["text"] == f"fake transcript by {ASR}"
    assert fake.requests[-1].body == body
    transcript = await proxy.openai().audio.transcriptions.create(model=ASR, file=("a.wav", b"RIFF...."))
    assert transcript.text == f"fake transcript by {ASR}"
    assert [(r["endpoint"], r["model"]) for r in await proxy.calls()] == [("audio/transcriptions", ASR)] * 2


async def test_an_upload_naming_its_model_twice_names_none(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await proxy.set(free_token="free-token")
    await proxy.add_keys(*((s, 0.0) for s in paid_keys(fake, 1)))
    body, content_type = _form(("model", b"Qwen/Qwen3-8B"), ("file", b"RIFF"), ("model", ASR.encode()))
    headers = {"Content-Type": content_type, "Authorization": "Bearer free-token"}
    async with http.post(f"{proxy.base}/v1/audio/transcriptions", data=body, headers=headers) as resp:
        assert resp.status == 403  # the free token may not pass it as the free model it names first
    assert not fake.requests
    [row] = await proxy.calls()
    assert row["model"] is None


async def test_an_upload_with_a_model_id_too_long_is_refused(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await proxy.add_keys(*((s, 10.0) for s in paid_keys(fake, 1)))
    body, content_type = _form(("model", b"m" * 300), ("file", b"RIFF"))
    async with http.post(
        f"{proxy.base}/v1/audio/transcriptions", data=body, headers={"Content-Type": content_type}
    ) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["code"] == "model_too_long"
    assert not fake.requests


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("multipart/form-data; boundary=abc", b"abc"),
        ('Multipart/Form-Data; charset=utf-8; boundary="a b:c"', b"a b:c"),
        ("multipart/form-data", None),
        ("application/json; boundary=abc", None),
        (None, None),
        ("multipart/form-data; boundary=" + "x" * 70, b"x" * 70),
        ("multipart/form-data; boundary=" + "x" * 71, None),  # not cut short: the upstream reads it whole
        ('multipart/form-data; boundary="abc;def"', None),
        ("multipart/form-data; boundary=abc; boundary=def", None),
        ('multipart/form-data; x="; boundary=abc"; boundary=def', None),
        ("multipart/form-data; boundary=abc def", None),
    ],
)
def test_the_boundary_of_a_form(content_type: str | None, expected: bytes | None) -> None:
    assert boundary(content_type) == expected


def test_form_field_reads_parts_not_the_bytes_inside_them() -> None:
    body, _ = _form(("file", b'\r\nname="model"\r\n\r\nnot/this'), ("model", b"the/model"))
    assert form_field(body, b"b0und4ry", "model", 100) == b"the/model"
    assert form_field(body, b"b0und4ry", "model", 3) == b"the/"  # the caller refuses what is too long
    assert form_field(body, b"b0und4ry", "prompt", 100) is None
    assert form_field(body, b"other", "model", 100) is None
    assert form_field(body[: body.rfind(b"the/model") + 3], b"b0und4ry", "model", 100) is None  # cut short


def _part(disposition: bytes, value: bytes, cut: bytes = b"b0und4ry") -> bytes:
    return b"--" + cut + b"\r\nContent-Disposition: form-data; " + disposition + b"\r\n\r\n" + value + b"\r\n"


HIDDEN_PAID_MODEL = [  # the proxy must not read the free model where the upstream may read the paid one
    _part(b'name="model"', b"Qwen/Qwen3-8B") + _part(b'name="pad"', b"x") * 70 + _part(b'name="model"', b"paid/m"),
    _part(b'name="model"', b"Qwen/Qwen3-8B")
    + _part(b'name="pad"\r\nX: ' + b"x" * 3000, b"x")
    + _part(b'name="model"', b"paid/m"),
    _part(b'name="model"', b"Qwen/Qwen3-8B") + _part(b"name=model", b"paid/m"),
    _part(b'name="model"', b"Qwen/Qwen3-8B\r\n--b0und4ry-not-a-delimiter") + _part(b'name="file"', b"RIFF"),
]


@pytest.mark.parametrize("parts", HIDDEN_PAID_MODEL)
async def test_the_free_token_gets_no_upload_whose_model_is_unclear(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession, parts: bytes
) -> None:
    await proxy.set(free_token="free-token", free_token_keys="any")
    await proxy.add_keys(*((s, 10.0) for s in paid_keys(fake, 1)))
    headers = {"Content-Type": "multipart/form-data; boundary=b0und4ry", "Authorization": "Bearer free-token"}
    body = _part(b'name="file"; filename="a.wav"', b"RIFF") + parts + b"--b0und4ry--\r\n"
    async with http.post(f"{proxy.base}/v1/audio/transcriptions", data=body, headers=headers) as resp:
        assert resp.status == 403, await resp.text()
    assert not fake.requests
