"""Property-based tests of every HTTP endpoint over real HTTP against a real Redis: never a 500, only the
documented statuses, and nothing recorded in Redis for input that is refused.

Each test starts one server thread and one long-lived ``httpx.Client``; the hypothesis body runs inside the test
(so the conftest fixtures are built once per test, not once per example) and flushes Redis between examples.

A bug found by a property can be tolerated for a while by a narrow predicate in ``KNOWN_BUGS`` (plus a strict xfail
test that pins it), so the properties keep hunting for others. The seven found so far are fixed, and each has a
regression test below (oversized bodies, huge integers, lone surrogates, nesting near the recursion limit, voice
fields RQ cannot use or that end in a newline).
"""

from __future__ import annotations

import inspect
import json
import re
import string
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from bridge import bodies
from bridge.app import create_app
from bridge.settings import Secret, Settings
from tests.conftest import WEBHOOK_TOKEN
from tests.support import ServerThread, fixture_names, load_fixture, recorded_keys, report

API_TOKEN = "fuzz-api-token-7e2b1c"
QUEUE_TOKEN = "fuzz-queue-token-4d9a0f"
QUEUE_KEY = "rq:queue:bridge"

# The types Rocket.Chat sends (README, "Events and jobs"). Which of them make a job is the product's business and
# changes; the properties only check that "accepted" means one line in the event log (and a job to read it) and
# "duplicate"/"ignored" nothing. Any other non-empty string type is a newer server's event: 200 "ignored", its type
# echoed capped and escaped, nothing stored.
DOCUMENTED_TYPES = {
    "LivechatSessionStart",
    "LivechatSessionQueued",
    "LivechatSessionTaken",
    "LivechatSessionForwarded",
    "LivechatSession",
    "LivechatEdit",
    "Message",
    "LeadCapture",
    "LivechatOfflineMessage",
}
FIXTURES = {name: load_fixture(name) for name in fixture_names()}

FUZZ = hsettings(
    deadline=None,
    database=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

SEEN: Counter[tuple[str, int]] = Counter()  # (endpoint, status) -> answers
KNOWN: Counter[str] = Counter()  # known bug -> inputs that hit it


@pytest.fixture(scope="module", autouse=True)
def summary() -> Iterator[None]:
    yield
    per_endpoint: dict[str, Counter[int]] = {}
    for (endpoint, status), count in sorted(SEEN.items()):
        per_endpoint.setdefault(endpoint, Counter())[status] += count
    parts = [f"{endpoint}: {sum(c.values())} inputs {dict(sorted(c.items()))}" for endpoint, c in per_endpoint.items()]
    report(f"fuzz summary: {'; '.join(parts)}; known bugs hit: {dict(KNOWN) or 'none'}")


# -- raw JSON pieces json.dumps cannot produce (deep nesting, integers past Python's 4300-digit limit) -------------


@dataclass(frozen=True)
class Raw:
    text: str


def dumps_with_raw(value: Any) -> str:
    """``json.dumps`` (ASCII, so lone surrogates come out as ``\\udXXX`` escapes) with ``Raw`` pieces spliced in."""
    pieces: list[str] = []

    def swap(node: Any) -> Any:
        if isinstance(node, Raw):
            pieces.append(node.text)
            return f"\x00raw{len(pieces) - 1}\x00"
        if isinstance(node, dict):
            return {key: swap(item) for key, item in node.items()}
        if isinstance(node, list):
            return [swap(item) for item in node]
        return node

    text = json.dumps(swap(value))
    for index, piece in enumerate(pieces):
        text = text.replace(json.dumps(f"\x00raw{index}\x00"), piece)
    return text


def nesting_depth(body: bytes) -> int:
    """Deepest bracket nesting of a JSON text, without parsing it (no recursion limit here)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def in_fresh_thread(function: Callable[[], Any]) -> Any:
    """Run ``function`` on a new thread: a fresh stack, like the server's, so bodies nested near the recursion
    limit parse (or not) as they would there, and a RecursionError stays off pytest's thread. None on error."""
    result: list[Any] = [None]

    def target() -> None:
        try:
            result[0] = function()
        except (ValueError, RecursionError):
            result[0] = None

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    return result[0]


def parsed(body: bytes) -> object:
    """What a correct strict reader makes of ``body`` (None: not UTF-8 JSON)."""
    return in_fresh_thread(lambda: json.loads(body.decode("utf-8")))


def has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(char) <= 0xDFFF for char in text)


# -- known bugs: narrow predicates over (endpoint, request body, status) --------------------------------------------


KNOWN_BUGS: dict[str, Callable[[str, bytes, int], bool]] = {}  # every bug found so far is fixed


def known_bug(endpoint: str, body: bytes, status: int) -> str | None:
    for name, matches in KNOWN_BUGS.items():
        if matches(endpoint, body, status):
            KNOWN[name] += 1
            return name
    return None


# -- Redis state --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisState:
    keys: frozenset[bytes]
    queue_length: int

    @classmethod
    def of(cls, client: redis.Redis) -> RedisState:
        # Counters of refused requests (GET /metrics) are observability, not recorded input.
        return cls(frozenset(k for k in client.keys("*") if k != b"ob:metrics"), client.llen(QUEUE_KEY))

    def jobs(self) -> set[bytes]:
        return {key for key in self.keys if key.startswith(b"rq:job:")}

    def ours(self) -> set[bytes]:
        return {key for key in self.keys if key.startswith(b"ob:")}


class Http:
    """One long-lived client that counts answers.

    After an unexpected error the safety net re-raises, so uvicorn closes the connection and logs the traceback
    *after* the answer was sent. ``send`` then asks ``/healthz`` before returning: the server's loop answers it
    only once that logging is done, so no server thread is still formatting a traceback (CPython 3.11's
    traceback carets use ``ast``, whose recursion counter is shared between threads) while pytest formats a
    failure of ours. The closed connection costs the next request one retry, and only then.
    """

    def __init__(self, client: httpx.Client, endpoint: str) -> None:
        self.client = client
        self.endpoint = endpoint
        self.last_status = 0

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.TransportError:
            if self.last_status < 500:
                raise
            response = self.client.request(method, path, **kwargs)
        self.last_status = response.status_code
        return response

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._request(method, path, **kwargs)
        SEEN[(self.endpoint, response.status_code)] += 1
        if response.status_code >= 500:
            self._request("GET", "/healthz")
        return response


def json_body(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert isinstance(body, dict), response.text
    return body


# -- strategies ---------------------------------------------------------------------------------------------------

surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
unicode_text = st.text(st.one_of(st.characters(), surrogates), max_size=40)
huge_strings = st.builds(
    lambda char, n: char * n,
    st.one_of(st.sampled_from("x\u00e9\u4e2d\U0001f600"), surrogates),
    st.integers(1000, 100_000),
)
deep_nesting = st.builds(
    lambda depth, brackets: Raw(brackets[0] * depth + "1" + brackets[1] * depth),
    st.one_of(st.integers(1, 60), st.integers(900, 1000), st.integers(1000, 3000)),
    st.sampled_from([("[", "]"), ('{"a":', "}")]),
)
huge_integers = st.integers(4000, 6000).map(lambda n: Raw("9" * n))
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), unicode_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(unicode_text, children, max_size=4),
    max_leaves=12,
)
replacements = st.one_of(
    json_values,
    st.integers(),
    st.lists(json_scalars, max_size=3),
    st.dictionaries(st.sampled_from(["_id", "username", "ts", "x"]), json_scalars, max_size=3),
    st.none(),
    unicode_text,
    huge_strings,
    deep_nesting,
    huge_integers,
    st.just(""),
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*prefix, index)
            yield from paths(value, (*prefix, index))


def parent_of(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        doc = doc[step]
    return doc


@st.composite
def mutated_fixtures(draw: st.DrawFn) -> Any:
    doc = json.loads(json.dumps(FIXTURES[draw(st.sampled_from(sorted(FIXTURES)))]))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from([(), *paths(doc)]))
        operation = draw(st.sampled_from(["drop", "replace", "replace", "add", "type", "_id"]))
        if operation == "type":
            doc["type"] = draw(st.one_of(st.sampled_from(sorted(DOCUMENTED_TYPES)), replacements))
            continue
        if operation == "_id" and isinstance(doc, dict):
            doc["_id"] = draw(st.one_of(unicode_text, replacements))
            continue
        if path == ():
            if operation == "replace":
                return draw(replacements)
            continue
        parent, key = parent_of(doc, path), path[-1]
        if operation == "drop":
            del parent[key]
        elif operation == "replace":
            parent[key] = draw(replacements)
        elif isinstance(parent[key], dict):
            parent[key][draw(unicode_text)] = draw(replacements)
    return doc


@st.composite
def encoded(draw: st.DrawFn, documents: st.SearchStrategy[Any]) -> tuple[bytes, str]:
    text = dumps_with_raw(draw(documents))
    encoding = draw(st.sampled_from(["utf-8"] * 6 + ["utf-16", "utf-16-le", "latin-1", "utf-8-sig", "unescaped"]))
    if encoding == "unescaped":  # raw UTF-8 instead of \\u escapes; lone surrogates as WTF-8
        raw = in_fresh_thread(lambda: json.dumps(json.loads(text), ensure_ascii=False))
        if raw is None:  # deep or huge Raw pieces: keep the escaped text
            return text.encode(), "utf-8"
        return raw.encode("utf-8", "surrogatepass"), encoding
    if encoding == "latin-1":
        return text.encode("latin-1", "replace"), encoding
    return text.encode(encoding, "surrogatepass"), encoding


def fixture_bytes() -> st.SearchStrategy[bytes]:
    return st.sampled_from(sorted(FIXTURES)).map(lambda name: json.dumps(FIXTURES[name]).encode())


@st.composite
def broken_bytes(draw: st.DrawFn) -> bytes:
    body = bytearray(draw(fixture_bytes()))
    for _ in range(draw(st.integers(1, 5))):
        where = draw(st.integers(0, len(body)))
        kind = draw(st.sampled_from(["truncate", "insert", "flip"]))
        if kind == "truncate":
            del body[where:]
        elif kind == "insert":
            body[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif body and where < len(body):
            body[where] ^= draw(st.integers(1, 255))
    return bytes(body)


raw_bodies = st.one_of(
    st.binary(max_size=2000),
    broken_bytes(),
    st.sampled_from([b"", b"null", b"{}", b"[]", b'"x"', b"\xef\xbb\xbf{}", b"NaN", b'{"type": ' + b"1" * 5000 + b"}"]),
)

TOKEN_CHOICES = ["right"] * 8 + ["missing", "empty", "wrong", "longer", "prefix", "case"]
CONTENT_TYPES = [
    None,
    "application/json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "application/json; charset=utf-16",
    "x/y; ;;",
]


def webhook_headers(token_choice: str, content_type: str | None) -> dict[str, str]:
    tokens = {
        "right": WEBHOOK_TOKEN,
        "empty": "",
        "wrong": "not-the-token",
        "longer": WEBHOOK_TOKEN + "x",
        "prefix": WEBHOOK_TOKEN[:-1],
        "case": WEBHOOK_TOKEN.upper(),
    }
    headers = {} if token_choice == "missing" else {"X-RocketChat-Livechat-Token": tokens[token_choice]}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return headers


# -- 1. the webhook endpoint --------------------------------------------------------------------------------------


@pytest.fixture
def bridge(settings: Settings) -> Iterator[ServerThread]:
    with ServerThread(create_app(settings)) as server:
        yield server


def check_webhook_answer(http: Http, client: redis.Redis, body: bytes, headers: dict[str, str], encoding: str) -> None:
    client.flushall()
    before = RedisState.of(client)
    response = http.send("POST", "/webhooks/livechat", content=body, headers=headers)
    after = RedisState.of(client)
    status = response.status_code
    if known_bug("webhook", body, status):
        assert after == before, "a refused event left something in Redis"
        return
    assert status in (200, 400, 403, 413), f"status {status} for {body[:300]!r}: {response.text[:300]}"
    answer = json_body(response)
    assert answer.get("ok") is (status == 200), answer
    right_token = headers.get("X-RocketChat-Livechat-Token") == WEBHOOK_TOKEN
    assert (status == 403) is (not right_token), (status, headers)
    if status != 200:
        assert isinstance(answer.get("error"), str) and answer["error"]
        assert after == before, f"a {status} left something in Redis: {sorted(after.keys - before.keys)}"
        return
    payload = parsed(body)
    assert encoding not in ("utf-16", "utf-16-le", "utf-8-sig"), "a body that is not UTF-8 JSON was accepted"
    assert isinstance(payload, dict) and isinstance(payload.get("type"), str), f"accepted {body[:300]!r}"
    event_type = payload["type"]
    assert event_type and not has_surrogate(event_type), f"accepted a malformed type {body[:300]!r}"
    if event_type not in DOCUMENTED_TYPES:
        shown = answer.get("event")
        assert answer == {"ok": True, "outcome": "ignored", "event": shown}, answer
        assert isinstance(shown, str) and shown.isprintable() and len(shown) <= 64 + len("..."), shown
        if len(event_type) <= 64 and event_type.isprintable():
            assert shown == event_type
        assert after == before, f"an unknown type left something in Redis: {sorted(after.keys - before.keys)}"
        return
    assert answer["event"] == event_type
    outcome = answer["outcome"]
    if outcome == "ignored":
        assert after == before
        assert "id" not in answer
        return
    assert outcome == "accepted", answer
    assert answer["id"].startswith("ev-")
    assert client.llen("ob:events") + client.llen("ob:events:other") == 1, "one line in the event log (either lane)"
    assert len(after.jobs() - before.jobs()) == 1, "one job to process the log"
    assert after.queue_length == before.queue_length + 1
    assert len({k for k in after.ours() - before.ours() if k.startswith(b"ob:seen:")}) == 1, "one dedupe mark"
    again = http.send("POST", "/webhooks/livechat", content=body, headers=headers)
    assert again.status_code == 200
    assert json_body(again) == {**answer, "outcome": "duplicate"}
    assert RedisState.of(client) == after, "a duplicate changed Redis"


def test_webhook_answers_mutated_fixtures_by_policy(bridge, redis_client):
    with httpx.Client(base_url=bridge.url, timeout=30) as client:
        http = Http(client, "webhook")

        @hsettings(FUZZ, max_examples=350)
        @given(
            encoded(mutated_fixtures()),
            st.sampled_from(TOKEN_CHOICES),
            st.sampled_from(CONTENT_TYPES),
        )
        def run(body_and_encoding: tuple[bytes, str], token: str, content_type: str | None) -> None:
            body, encoding = body_and_encoding
            check_webhook_answer(http, redis_client, body, webhook_headers(token, content_type), encoding)

        run()


def test_webhook_answers_random_json_by_policy(bridge, redis_client):
    documents = st.one_of(
        json_values,
        st.dictionaries(st.sampled_from(["type", "_id", "visitor", "servedBy", "messages"]), json_values),
        st.fixed_dictionaries(
            {"type": st.sampled_from(sorted(DOCUMENTED_TYPES)), "_id": unicode_text},
            optional={
                "visitor": json_values,
                "servedBy": json_values,
                "messages": json_values,
                "agent": json_values,
            },
        ),
    )
    with httpx.Client(base_url=bridge.url, timeout=30) as client:
        http = Http(client, "webhook")

        @hsettings(FUZZ, max_examples=200)
        @given(encoded(documents), st.sampled_from(TOKEN_CHOICES), st.sampled_from(CONTENT_TYPES))
        def run(body_and_encoding: tuple[bytes, str], token: str, content_type: str | None) -> None:
            body, encoding = body_and_encoding
            check_webhook_answer(http, redis_client, body, webhook_headers(token, content_type), encoding)

        run()


def test_webhook_answers_random_bytes_by_policy(bridge, redis_client):
    with httpx.Client(base_url=bridge.url, timeout=30) as client:
        http = Http(client, "webhook")

        @hsettings(FUZZ, max_examples=150)
        @given(raw_bodies, st.sampled_from(TOKEN_CHOICES), st.sampled_from(CONTENT_TYPES))
        def run(body: bytes, token: str, content_type: str | None) -> None:
            check_webhook_answer(http, redis_client, body, webhook_headers(token, content_type), "bytes")

        run()


# -- 2. oversized bodies ------------------------------------------------------------------------------------------

STREAM_BYTES = 50 * 1024 * 1024
CHUNK = 64 * 1024


class LazyBody:
    """50 MB generated chunk by chunk; counts what the client actually had to produce."""

    def __init__(self, total: int = STREAM_BYTES) -> None:
        self.total = total
        self.yielded = 0

    def __iter__(self) -> Iterator[bytes]:
        while self.yielded < self.total:
            self.yielded += CHUNK
            yield b" " * CHUNK


def test_a_streamed_oversized_body_is_413(bridge, redis_client):
    with httpx.Client(base_url=bridge.url, timeout=30) as client:
        http = Http(client, "webhook")
        body = LazyBody()
        response = http.send(
            "POST", "/webhooks/livechat", content=iter(body), headers={"X-RocketChat-Livechat-Token": WEBHOOK_TOKEN}
        )
        assert response.status_code == 413
        assert json_body(response)["ok"] is False
        assert recorded_keys(redis_client) == []


def test_a_streamed_oversized_body_is_not_read_whole(bridge):
    with httpx.Client(base_url=bridge.url, timeout=30) as client:
        http = Http(client, "webhook")
        body = LazyBody()
        response = http.send(
            "POST", "/webhooks/livechat", content=iter(body), headers={"X-RocketChat-Livechat-Token": WEBHOOK_TOKEN}
        )
        assert response.status_code == 413
        assert body.yielded < 8 * 1024 * 1024, f"the client had to send {body.yielded} of {body.total} bytes"


def test_a_declared_content_length_over_the_cap_is_413(bridge, settings, redis_client):
    with httpx.Client(base_url=bridge.url, timeout=30) as client:
        http = Http(client, "webhook")
        size = settings.max_body_bytes + 1
        body = LazyBody(size)

        def exact() -> Iterator[bytes]:
            sent = 0
            for chunk in body:
                chunk = chunk[: size - sent]
                sent += len(chunk)
                yield chunk

        response = http.send(
            "POST",
            "/webhooks/livechat",
            content=exact(),
            headers={"X-RocketChat-Livechat-Token": WEBHOOK_TOKEN, "Content-Length": str(size)},
        )
        assert response.status_code == 413
        assert str(settings.max_body_bytes) in json_body(response)["error"]
        assert recorded_keys(redis_client) == []


# -- 3. the External Service endpoint -----------------------------------------------------------------------------

header_names = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=20).filter(
    lambda name: (
        name.lower()
        not in {"host", "content-length", "transfer-encoding", "connection", "expect", "upgrade", "te", "trailer"}
    )
)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).map(str.strip)
URL_TEXT = string.ascii_letters + string.digits + string.punctuation + " "
query_values = st.one_of(unicode_text.map(lambda text: text.encode("utf-8", "replace").decode()), st.just(""))


@st.composite
def external_requests(draw: st.DrawFn) -> tuple[str, dict[str, str], dict[str, str], bool]:
    params = draw(
        st.dictionaries(
            st.one_of(st.sampled_from(["departmentId", "ignoreAgentId"]), st.text(URL_TEXT, max_size=10)),
            query_values,
            max_size=4,
        )
    )
    raw_query = draw(st.one_of(st.none(), st.text(URL_TEXT, max_size=80)))
    headers = draw(st.dictionaries(header_names, header_values, max_size=4))
    headers = {k: v for k, v in headers.items() if k.lower() != "x-rocketchat-secret-token"}
    token = draw(st.sampled_from(["right", "right", "right", "missing", "wrong", "empty", "webhook", "padded"]))
    value = {
        "right": QUEUE_TOKEN,
        "wrong": "nope",
        "empty": "",
        "webhook": WEBHOOK_TOKEN,
        "padded": QUEUE_TOKEN + "0",
    }.get(token)
    if value is not None:
        headers[draw(st.sampled_from(["X-RocketChat-Secret-Token", "x-rocketchat-secret-token"]))] = value
    path = "/external-queue" if raw_query is None else "/external-queue?" + raw_query
    return path, params if raw_query is None else {}, headers, token == "right"


@pytest.fixture
def warm_directory(settings, rc_settings, redis_client, rc_state) -> None:
    from bridge.directory import AgentDirectory
    from bridge.rocketchat import RocketChat
    from tests.team import seed_team

    seed_team(rc_state)
    rc = RocketChat(rc_settings)
    AgentDirectory(rc_settings, redis_client, lambda: rc).agents()
    rc.close()


def test_external_queue_answers_only_200_or_403(settings, redis_client, warm_directory):
    configured = settings.replace(external_queue_token=Secret(QUEUE_TOKEN), directory_ttl_seconds=600.0)
    shapes: Counter[str] = Counter()
    with ServerThread(create_app(configured)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        http = Http(client, "external-queue")

        @hsettings(FUZZ, max_examples=200)
        @given(external_requests())
        def run(request: tuple[str, dict[str, str], dict[str, str], bool]) -> None:
            path, params, headers, right = request
            jobs_before = RedisState.of(redis_client).jobs()
            response = http.send("GET", path, params=params, headers=headers)
            assert response.status_code in (200, 403), f"{response.status_code} for {path} {params} {headers}"
            answer = json_body(response)
            assert (response.status_code == 200) is right, (response.status_code, headers)
            if not right:
                assert answer["ok"] is False
                assert RedisState.of(redis_client).jobs() == jobs_before
                return
            assert answer == {} or (
                set(answer) == {"_id", "username"} and all(isinstance(v, str) and v for v in answer.values())
            ), answer
            shapes["agent" if answer else "empty"] += 1

        run()
    assert shapes["agent"] and shapes["empty"], f"both answer shapes are exercised: {dict(shapes)}"


def test_external_queue_is_404_everywhere_without_its_token(settings):
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        http = Http(client, "external-queue (off)")

        @hsettings(FUZZ, max_examples=40)
        @given(external_requests())
        def run(request: tuple[str, dict[str, str], dict[str, str], bool]) -> None:
            path, params, headers, _ = request
            response = http.send("GET", path, params=params, headers=headers)
            assert response.status_code == 404
            assert json_body(response)["ok"] is False

        run()


# -- 4. voice routing ---------------------------------------------------------------------------------------------

VOICE_KEYS = ("extension", "departmentId", "requestId")
EXTENSION = re.compile(r"[0-9A-Za-z*#+_.-]{1,32}")
IDENTIFIER = re.compile(r"[0-9A-Za-z_.:-]{1,64}")
voice_strings = st.one_of(
    st.text(string.ascii_letters + string.digits + "*#+_.:-", min_size=1, max_size=70),
    st.text(string.ascii_letters + string.digits + "*#+_.:- \n\t/@", max_size=70),
    unicode_text,
)
valid_extensions = st.from_regex(EXTENSION, fullmatch=True)
valid_identifiers = st.from_regex(IDENTIFIER, fullmatch=True)
voice_documents = st.one_of(
    st.dictionaries(st.sampled_from(VOICE_KEYS), st.one_of(voice_strings, json_values), max_size=3),
    st.fixed_dictionaries(
        {"extension": st.one_of(valid_extensions, voice_strings)},
        optional={
            "departmentId": st.one_of(valid_identifiers, voice_strings, st.none()),
            "requestId": st.one_of(valid_identifiers, voice_strings),
        },
    ),
    json_values,
)


@st.composite
def voice_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    kind = draw(st.sampled_from(["json"] * 4 + ["bytes", "big"]))
    if kind == "json":
        body, _ = draw(encoded(voice_documents))
    elif kind == "bytes":
        body = draw(raw_bodies)
    else:
        body = json.dumps({"extension": "2001", "pad": "x" * draw(st.integers(4000, 6000))}).encode()
    auth = draw(
        st.sampled_from(
            [f"Bearer {API_TOKEN}"] * 5
            + [None, "Bearer", "Bearer wrong", f"Basic {API_TOKEN}", f"bearer {API_TOKEN}", API_TOKEN]
        )
    )
    headers = {"Content-Type": draw(st.sampled_from(["application/json", "text/plain"]))}
    if auth is not None:
        headers["Authorization"] = auth
    return body, headers


def valid_voice(payload: object) -> bool:
    """The README's rule: extension 1-32 of digits, letters, *#+_.-; optional departmentId/requestId ids."""
    if not isinstance(payload, dict) or not isinstance(payload.get("extension"), str):
        return False
    if not EXTENSION.fullmatch(payload["extension"]):
        return False
    department = payload.get("departmentId")
    if department is not None and not (isinstance(department, str) and IDENTIFIER.fullmatch(department)):
        return False
    request_id = payload.get("requestId", "generated")
    return isinstance(request_id, str) and IDENTIFIER.fullmatch(request_id) is not None


def test_voice_route_answers_by_policy(settings, redis_client):
    configured = settings.replace(api_token=Secret(API_TOKEN))
    with ServerThread(create_app(configured)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        http = Http(client, "voice")

        @hsettings(FUZZ, max_examples=250)
        @given(voice_requests())
        def run(request: tuple[bytes, dict[str, str]]) -> None:
            body, headers = request
            redis_client.flushall()
            before = RedisState.of(redis_client)
            response = http.send("POST", "/voice/route", content=body, headers=headers)
            after = RedisState.of(redis_client)
            status = response.status_code
            if known_bug("voice", body, status):
                assert status == 202 or after == before
                return
            assert status in (202, 400, 401, 403, 413), f"{status} for {body[:300]!r} {headers}: {response.text[:300]}"
            answer = json_body(response)
            assert answer["ok"] is (status == 202)
            if status != 202:
                assert after.jobs() == before.jobs() and after.queue_length == before.queue_length, (
                    "a job from a refusal"
                )
                return
            assert headers["Authorization"].lower() == f"bearer {API_TOKEN}"
            assert valid_voice(parsed(body)), f"accepted an invalid voice request {body[:300]!r}"
            assert after.jobs() - before.jobs() == {f"rq:job:voice-{answer['id']}".encode()}
            assert after.queue_length == before.queue_length + 1

        run()


# -- 5. constant-time token comparison ----------------------------------------------------------------------------


def test_the_webhook_token_is_compared_with_hmac_compare_digest():
    source = inspect.getsource(bodies.token_matches)
    assert "hmac.compare_digest(" in source
    assert "==" not in source and "!=" not in source
    webhook = inspect.getsource(create_app)
    assert "token_matches(" in webhook and "webhook_token" in webhook


# -- the bugs the properties found, pinned with one input each ----------------------------------------------------


def post_webhook(bridge: ServerThread, *bodies: bytes) -> list[int]:
    with httpx.Client(base_url=bridge.url, timeout=30) as client:
        http = Http(client, "webhook (regressions)")
        headers = {"X-RocketChat-Livechat-Token": WEBHOOK_TOKEN}
        return [http.send("POST", "/webhooks/livechat", content=body, headers=headers).status_code for body in bodies]


def post_voice(settings: Settings, body: dict[str, Any]) -> int:
    configured = settings.replace(api_token=Secret(API_TOKEN))
    with ServerThread(create_app(configured)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        return Http(client, "voice (regressions)").send("POST", "/voice/route", json=body, headers=headers).status_code


def test_an_integer_over_4300_digits_is_400(bridge, redis_client):
    assert post_webhook(bridge, b'{"type": ' + b"1" * 4301 + b"}") == [400]
    assert recorded_keys(redis_client) == []


def test_a_lone_surrogate_in_the_room_id_is_400(bridge, redis_client):
    payload = load_fixture("LivechatSessionQueued__basic")
    payload["_id"] = "\ud800room"
    assert post_webhook(bridge, json.dumps(payload).encode()) == [400]
    assert recorded_keys(redis_client) == []


def test_a_lone_surrogate_in_the_department_makes_no_job(bridge, redis_client):
    payload = load_fixture("LivechatSessionQueued__basic")
    payload["departmentId"] = "\udfff"
    assert post_webhook(bridge, json.dumps(payload).encode()) == [400]
    assert redis_client.keys("rq:job:*") == []


def test_nesting_just_under_the_limit_is_never_503(bridge):
    payload = json.dumps(load_fixture("LivechatSessionQueued__basic"))[:-1]
    bodies_ = [f'{payload}, "crmData": {"[" * depth}{"]" * depth}}}'.encode() for depth in range(940, 1000)]
    assert set(post_webhook(bridge, *bodies_)) <= {200, 400}


def test_a_request_id_rq_cannot_use_is_400_not_503(settings, redis_client):
    assert post_voice(settings, {"extension": "2001", "requestId": "call.1"}) == 400


def test_an_extension_with_a_trailing_newline_is_400(settings, redis_client):
    assert post_voice(settings, {"extension": "2001\n"}) == 400
    assert redis_client.keys("rq:job:*") == []
