"""The judge API key stays out of everything a run leaves behind.

Judged MT-Bench and HH runs (tiny random model, the local fake endpoint of test_evaluation_judge) are made with a
sentinel key in the configured environment variable, against an endpoint that echoes the Authorization header back
in its answers and in its 4xx/5xx error bodies (as some proxies do), so every path a key could leak through is
exercised: result JSONs and their run_info, per-sample JSONL, the judge cache, log records (a FileHandler on the root
logger at DEBUG), stdout/stderr, the `gsil evaluate` error line and the formatted exception chain. Each is scanned
for the key and for its last 8 characters. The tests first check that the key really was sent and really was
echoed, so a scan can only pass because the key was kept out, not because it never came back.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from gsil.evaluation.judge import JudgeClient, parse_rating
from gsil.logutil import GsilError
from gsil.runinfo import REDACTED, redact_secret, run_info, secret_values, write_run_info
from test_evaluation_judge import HH, FakeEndpoint, LocalServer

SENTINEL = "sk-SENTINEL-0123456789abcdef"
TAIL = SENTINEL[-8:]                               # a masked echo ("sk-...89abcdef") still leaks this much
CUSTOM_ENV = "GSIL_TEST_SENTINEL_JUDGE_KEY"      # a judge.api_key_env that is not OPENAI_API_KEY


def leaks(text: str) -> list[str]:
    return [s for s in (SENTINEL, TAIL) if s in text]


def scan_tree(root: Path) -> dict[str, list[str]]:
    """{file: what of the key it holds} for every file under `root`, hidden ones (caches, temporaries) included."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            hit = leaks(path.read_bytes().decode("utf-8", "replace"))
            if hit:
                found[str(path.relative_to(root))] = hit
    return found


def exception_text(err: BaseException) -> str:
    """What a traceback of `err` shows: every message in its (displayed) chain."""
    return "".join(traceback.format_exception(type(err), err, err.__traceback__))


@pytest.fixture
def log_file(tmp_path):
    """Every log record of the process (DEBUG and up) also goes to tmp_path/logs/run.log."""
    path = tmp_path / "logs" / "run.log"
    path.parent.mkdir()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield path
    root.removeHandler(handler)
    root.setLevel(previous)
    handler.close()


@pytest.fixture
def sentinel_env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    monkeypatch.setenv(CUSTOM_ENV, SENTINEL)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from gsil.modeling import build_random_model

    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("models") / "tiny"
    build_random_model(path, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, seed=0)
    return path


def echoing(endpoint_box: list, verdict: str, fail_first: int = 0):
    """A reply function that echoes the request's Authorization header: first `fail_first` times as a 503 error
    body, then alternately as an answer without a verdict and as one with `verdict` (plus a masked tail)."""
    def reply(body):
        endpoint = endpoint_box[0]
        auth = endpoint.requests[-1]["auth"]
        count = len(endpoint.requests)
        if count <= fail_first:
            return 503, f"upstream overloaded; request headers: {{'Authorization': '{auth}'}}"
        if count % 2:
            return 200, f"I was called with Authorization: {auth}. No rating from me."
        return 200, f"Key in use ends ...{TAIL}; Authorization: {auth} Fine. {verdict}"
    return reply


# ------------------------------------------------------------------------------------------------ judged runs


@pytest.mark.parametrize("benchmark", ["mtbench", "hh_safety"])
def test_judged_run_writes_the_key_nowhere(tmp_path, tiny_model, sentinel_env, log_file, capfd, benchmark):
    from gsil.evaluation import evaluate_model

    out = tmp_path / "results" / "eval" / "tiny"
    box: list = []
    overrides = {"max_gen_toks": 4}
    if benchmark == "mtbench":
        overrides |= {"num_questions": 2}
        judge = {"backoff_seconds": 0, "max_attempts": 3}                # the default key variable
        verdict = "[[5]]"
    else:
        prompts = tmp_path / "hh.jsonl"
        prompts.write_text(json.dumps({"chosen": HH}) + "\n")
        overrides |= {"prompts": str(prompts), "num_prompts": 1}
        judge = {"backoff_seconds": 0, "max_attempts": 3, "api_key_env": CUSTOM_ENV}
        verdict = "[[C]]"
    with FakeEndpoint(echoing(box, verdict, fail_first=1)) as endpoint:
        box.append(endpoint)
        result = evaluate_model(tiny_model, benchmark, out / f"{benchmark}.json", overrides=[
            {**overrides, "judge": {**judge, "base_url": endpoint.base_url, "model": "fake-judge"}}])

    # the key was sent, echoed back, and every echo went through the redaction
    assert endpoint.requests and all(r["auth"] == f"Bearer {SENTINEL}" for r in endpoint.requests)
    assert result["value"] is not None and result["details"]["judge_stats"]["http_retries"] == 1
    assert result["details"]["judge_stats"]["unparsable_answers"] >= 1
    samples = (out / f"{benchmark}.samples.jsonl").read_text()
    assert REDACTED in samples and "Authorization" in samples
    assert (out / f"{benchmark}.judge_cache.jsonl").is_file()
    logged = log_file.read_text()
    assert "retrying" in logged and "without a parsable verdict" in logged      # the echoing messages were logged

    assert scan_tree(tmp_path) == {}
    assert leaks(json.dumps(result)) == []
    captured = capfd.readouterr()
    assert leaks(captured.out + captured.err) == []


def test_failing_judge_keeps_the_key_out_of_errors(tmp_path, tiny_model, sentinel_env, log_file, capfd):
    """5xx (retried, logged) then 401, both bodies echoing the header: through `gsil evaluate`, and directly."""
    from gsil.cli import main as gsil_main
    from gsil.evaluation import evaluate_model

    def reply(body):
        auth = endpoint.requests[-1]["auth"]
        if len(endpoint.requests) == 1:
            return 500, f"proxy error; you sent Authorization: {auth}"
        return 401, (f'Incorrect API key provided: {auth[7:14]}...{TAIL}. {{"headers": {{"Authorization": "{auth}"}}}}')

    out = tmp_path / "results" / "eval" / "tiny"
    protocol = {"num_questions": 1, "max_gen_toks": 4, "judge": {"model": "fake-judge", "backoff_seconds": 0}}
    with FakeEndpoint(reply) as endpoint:
        protocol["judge"]["base_url"] = endpoint.base_url
        with pytest.raises(GsilError) as raised:
            evaluate_model(tiny_model, "mtbench", out / "direct.json", overrides=[protocol])
    assert endpoint.requests[0]["auth"] == f"Bearer {SENTINEL}" and len(endpoint.requests) == 2
    message = str(raised.value)
    assert "HTTP 401" in message and "Incorrect API key provided" in message and REDACTED in message
    assert leaks(exception_text(raised.value)) == []
    assert "retrying" in log_file.read_text()                   # the 500's echo went into a log line

    # the same through the CLI (last: its logging set-up replaces the root logger's handlers)
    with FakeEndpoint(reply) as endpoint:
        protocol["judge"]["base_url"] = endpoint.base_url
        code = gsil_main(["evaluate", "--model", str(tiny_model), "--benchmark", "mtbench",
                          "--output", str(out / "mtbench.json"), "--protocol-json", json.dumps(protocol)])
    assert code == 1 and len(endpoint.requests) == 2
    captured = capfd.readouterr()
    assert "HTTP 401" in captured.err and "retrying" in captured.err and REDACTED in captured.err
    assert leaks(captured.out + captured.err) == []
    assert not (out / "mtbench.json").exists() and not (out / "direct.json").exists()
    assert scan_tree(tmp_path) == {}


# ------------------------------------------------------------------------------------------------ the client alone


def _client(endpoint, **kw):
    return JudgeClient(endpoint.base_url, "fake-judge", api_key_env=CUSTOM_ENV, max_attempts=2,
                       backoff_seconds=0, sleep=lambda s: None, **kw)


@pytest.mark.parametrize("status, body", [
    (401, f"bad key {SENTINEL}"),
    (400, json.dumps({"error": {"message": "invalid", "echo": {"authorization": f"Bearer {SENTINEL}"}}})),
    (403, f"key ...{TAIL} is not allowed"),
    (502, "<html>Bearer " + SENTINEL + "</html>" + "x" * 1000),
])
def test_error_bodies_are_redacted(sentinel_env, caplog, status, body):
    with FakeEndpoint(lambda b: (status, body)) as endpoint:
        with pytest.raises(GsilError) as raised:
            _client(endpoint).complete([{"role": "user", "content": "?"}])
    assert endpoint.requests[0]["auth"] == f"Bearer {SENTINEL}"
    assert f"HTTP {status}" in str(raised.value)
    assert leaks(exception_text(raised.value)) == [] and leaks(caplog.text) == []


class _RawEndpoint(LocalServer):
    """A server whose handler writes the raw response `respond(handler)`; records (method, path, Authorization)."""

    def __init__(self, respond):
        self.seen = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.seen.append((self.command, self.path, self.headers.get("Authorization")))
                respond(self)

            do_GET = do_POST = _any

            def log_message(self, *args):
                pass

        self.serve(Handler)


def _send(handler, status, payload: bytes, headers=()):
    handler.send_response(status)
    for name, value in headers:
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


def test_the_key_is_not_resent_to_where_a_redirect_points(sentinel_env):
    answer = json.dumps({"choices": [{"message": {"content": "[[6]]"}}]}).encode()
    with _RawEndpoint(lambda h: _send(h, 200, answer)) as elsewhere:
        target = elsewhere.base_url + "/chat/completions"
        with _RawEndpoint(lambda h: _send(h, 302, b"", [("Location", target)])) as judge_host:
            client = _client(judge_host)
            try:
                client.judge([{"role": "user", "content": "rate"}], parse_rating)
            except GsilError:
                pass                                   # whether the redirect works out is not the point here
    assert judge_host.seen[0][2] == f"Bearer {SENTINEL}"
    assert elsewhere.seen, "the redirect was not followed; the test proves nothing"
    assert all(auth is None for _, _, auth in elsewhere.seen)


def test_only_the_configured_key_is_sent(monkeypatch):
    """The openai client reads keys and headers from OPENAI_* variables by itself: none of them reaches the judge.
    A judge whose key variable is unset (or not configured) gets no Authorization header at all."""
    monkeypatch.setenv(CUSTOM_ENV, SENTINEL)
    monkeypatch.delenv("GSIL_TEST_UNSET_JUDGE_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-default-000000000000")
    monkeypatch.setenv("OPENAI_ADMIN_KEY", "sk-admin-000000000000000000")
    monkeypatch.setenv("OPENAI_CUSTOM_HEADERS", "Authorization: Bearer sk-custom-header-0000000000")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-not-for-this-host")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-not-for-this-host")
    messages = [{"role": "user", "content": "?"}]
    with FakeEndpoint(lambda body: (200, "[[5]]")) as endpoint:
        assert _client(endpoint).complete(messages) == "[[5]]"
        for key_env in ("GSIL_TEST_UNSET_JUDGE_KEY", None):
            JudgeClient(endpoint.base_url, "fake-judge", api_key_env=key_env, max_attempts=1).complete(messages)
    keyed, unset, unconfigured = endpoint.requests
    assert keyed["auth"] == f"Bearer {SENTINEL}"
    assert unset["auth"] is None and unconfigured["auth"] is None
    for request in endpoint.requests:
        assert not {"openai-organization", "openai-project"} & set(request["headers"])
        assert "000000" not in json.dumps(request["headers"])


@pytest.mark.parametrize("payload", [
    {"error": "no choices", "you_sent": f"Bearer {SENTINEL}"},
    {"choices": [], "debug": {"Authorization": f"Bearer {SENTINEL}"}},
])
def test_malformed_answers_are_redacted(sentinel_env, caplog, payload):
    raw = json.dumps(payload).encode()
    with _RawEndpoint(lambda h: _send(h, 200, raw, [("Content-Type", "application/json")])) as endpoint:
        with pytest.raises(GsilError, match="no choices") as raised:
            _client(endpoint).complete([{"role": "user", "content": "?"}])
    assert leaks(exception_text(raised.value)) == [] and leaks(caplog.text) == []


def test_answers_and_cache_are_redacted(tmp_path, sentinel_env, caplog):
    box: list = []
    with FakeEndpoint(echoing(box, "[[7]]")) as endpoint:
        box.append(endpoint)
        client = _client(endpoint, cache=tmp_path / "cache.jsonl")
        judgment = client.judge([{"role": "user", "content": "rate"}], parse_rating)
    assert judgment.verdict == 7.0 and judgment.unparsable == 1
    assert REDACTED in judgment.raw and leaks(judgment.raw) == []
    assert leaks(caplog.text) == [] and scan_tree(tmp_path) == {}
    assert leaks(json.dumps(client.describe())) == [] and leaks(json.dumps(client.stats)) == []


# ------------------------------------------------------------------------------------------------ run_info


def test_run_info_never_records_secret_values(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_" + SENTINEL)
    monkeypatch.setenv("MY_JUDGE_CREDENTIAL_VAR", SENTINEL)      # no secret-looking word: found via api_key_env
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")         # TOKEN inside a word: not a secret
    monkeypatch.setattr(sys, "argv", ["gsil", "evaluate", f"--note=key {SENTINEL}", "--model", str(tmp_path)])
    settings = {"judge": {"api_key_env": "MY_JUDGE_CREDENTIAL_VAR", "max_tokens": 1024},
                "comment": f"pasted by mistake: {SENTINEL}", "model": str(tmp_path), "pad_token": "<|endoftext|>",
                "env_dump": dict(os.environ)}
    write_run_info(tmp_path / "model", settings, extra_note=f"hf_{SENTINEL}")
    path = tmp_path / "model" / "run_info.json"
    text = path.read_text()
    assert leaks(text) == [] and REDACTED in text
    record = json.loads(text)
    assert record["settings"]["model"] == str(tmp_path) and record["argv"][-1] == str(tmp_path)
    assert record["settings"]["judge"] == {"api_key_env": "MY_JUDGE_CREDENTIAL_VAR", "max_tokens": 1024}
    assert record["settings"]["pad_token"] == "<|endoftext|>"
    assert record["settings"]["env_dump"]["TOKENIZERS_PARALLELISM"] == "false"
    assert leaks(json.dumps(run_info({"x": 1}))) == []


def test_secret_values_picks_secret_names_and_named_variables():
    env = {"OPENAI_API_KEY": SENTINEL, "HF_TOKEN": "hf_abcdefgh12", "AWS_SECRET_ACCESS_KEY": "abcd/efgh+ijkl",
           "TOKENIZERS_PARALLELISM": "false", "KEYBOARD": "us-international", "JUDGE": "plainvalue123",
           "SOME_KEY": "1", "GH_TOKEN": "", "CACHE_KEY_DIR": "/"}
    assert set(secret_values(environ=env)) == {SENTINEL, "hf_abcdefgh12", "abcd/efgh+ijkl"}
    assert "plainvalue123" in secret_values({"judge": {"api_key_env": "JUDGE"}}, environ=env)


@pytest.mark.parametrize("text, expected", [
    (f"Bearer {SENTINEL}", f"Bearer {REDACTED}"),
    (f'{{"Authorization": "Bearer {SENTINEL}"}}', f'{{"Authorization": "Bearer {REDACTED}"}}'),
    (f"key ...{TAIL} rejected", f"key {REDACTED} rejected"),
    (f"{SENTINEL[:10]}", f"{REDACTED}"),
    ("sk-SENT***cdef", "sk-SENT***cdef"),                          # 7 + 4 characters: not enough to matter
    ("Rating: [[8]] because 0123456 is close", "Rating: [[8]] because 0123456 is close"),
    ("", ""),
])
def test_redact_secret(text, expected):
    assert redact_secret(text, SENTINEL) == expected


def test_redact_secret_short_and_missing_keys():
    assert redact_secret("a EMPTY b", "EMPTY") == f"a {REDACTED} b"
    assert redact_secret("x y z", "x") == "x y z"                # a 1-character "key" protects nothing
    assert redact_secret("anything", None) == "anything"
