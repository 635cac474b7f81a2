"""The OpenAI-compatible service, driven by the official `openai` client over loopback."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from tests._lm_fixtures import write_tiny_llama

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    from tunelab.lm.generate import Generator

    return Generator(write_tiny_llama(tmp_path_factory.mktemp("tiny-llama")), precision="fp32")


@pytest.fixture(scope="module")
def server(generator):
    """A real uvicorn server on 127.0.0.1 with an API key, stopped at the end of the module."""
    import uvicorn

    from tunelab.serve.openai import Limits, create_openai_app

    app = create_openai_app(generator, model_name="tiny", api_key="secret", limits=Limits(max_tokens=64, max_body_bytes=4096))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="secret", max_retries=0)


MESSAGES = [{"role": "user", "content": "What colour is sky?"}]


def test_models_list(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_plain_completion_matches_the_library_and_is_greedy(client, generator):
    response = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12)
    again = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12)
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == generator(MESSAGES, max_new_tokens=12)
    assert again.choices[0].message.content == choice.message.content
    assert response.usage.prompt_tokens == generator.count_tokens(MESSAGES)
    assert 1 <= response.usage.completion_tokens <= 12
    assert choice.finish_reason in ("stop", "length")


def test_streaming_chunks_join_to_the_plain_answer(client):
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12).choices[0].message.content
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_sse_wire_format(server):
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, headers={"Authorization": "Bearer secret"}, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_wrong_key_is_401(server):
    bad = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


@pytest.mark.parametrize(
    "body, status",
    [
        ({"model": "tiny", "messages": []}, 422),
        ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, 422),
        ({"model": "tiny", "messages": MESSAGES, "max_tokens": 100000}, 422),
        ({"model": "tiny", "messages": MESSAGES, "temperature": -1}, 422),
        ({"model": "tiny", "messages": MESSAGES, "n": 3}, 422),
        ({"model": "tiny"}, 422),
        ({"model": "gpt-4", "messages": MESSAGES}, 404),
        ([1, 2, 3], 422),
        ({"model": "tiny", "messages": [{"role": "user", "content": "word " * 2000}]}, 413),
    ],
)
def test_bad_requests_are_4xx_in_openai_shape(server, body, status):
    r = httpx.post(f"{server}/v1/chat/completions", json=body, headers={"Authorization": "Bearer secret"}, timeout=30)
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) >= {"message", "type"}


def test_a_20_mib_body_gets_its_413_with_urllib(server):
    # urllib sends the whole body before reading: the service drains it instead of resetting the connection.
    import json
    import urllib.error
    import urllib.request

    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * (20 * 2**20)}]}).encode()
    request = urllib.request.Request(
        f"{server}/v1/chat/completions", data=body, method="POST", headers={"Authorization": "Bearer secret", "Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=30)
    assert answer.value.code == 413
    assert json.loads(answer.value.read())["error"]["code"] == "request_too_large"


def test_prompt_longer_than_the_context_is_422(server):
    # Under the body limit, but over the tiny model's 256-token context.
    long = "sky " * 700
    r = httpx.post(
        f"{server}/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": long[:3800]}], "max_tokens": 64},
        headers={"Authorization": "Bearer secret"},
        timeout=30,
    )
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_invalid_json_and_unknown_route(server):
    r = httpx.post(f"{server}/v1/chat/completions", content=b"{not json", headers={"Authorization": "Bearer secret", "content-type": "application/json"})
    assert r.status_code == 422
    assert httpx.get(f"{server}/v1/nothing", headers={"Authorization": "Bearer secret"}).status_code == 404


def test_stop_sequence_is_cut_off(client, generator):
    full = generator(MESSAGES, max_new_tokens=12)
    assert len(full) > 2
    stop = full[1:3]
    text = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, stop=[stop]).choices[0].message.content
    assert text == full[: full.index(stop)]
