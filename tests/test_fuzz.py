"""Property-based tests of every HTTP endpoint against a real Redis: never a 500, only the documented statuses,
nothing recorded in Redis for input that is refused, every id taken from input checked at the edge (README, the
bad-input table), and no input reaching another kind's decision record (room ``voice-x`` is not voice request ``x``).

How many inputs: a hypothesis settings profile sets the number of examples of the whole file, which ``share`` deals
out to the properties; an example is 1 to ``BATCH`` inputs (requests), each checked on its own, because drawing an
example costs hypothesis more than sending a request. ``fuzz-ci`` is 4,000 examples, over 10,000 inputs, used when
the environment variable ``CI`` is set (CI services set ``CI=true``, and so does ``.ci/run``); ``fuzz-dev`` is 1,000
(about 3,000 inputs), for a quick local run; ``OMNIBRIDGE_FUZZ_PROFILE`` names one explicitly.

Each property runs twice: in-process for the bulk (``InProcess``: httpx's ``ASGITransport`` drives the same ASGI
app, with the same Redis and scripts, without sockets), and over real HTTP to uvicorn for ``HTTP_SHARE`` of that
(what only a server does: framing, header parsing, raw paths). The closing summary line gives the inputs per
endpoint and status, the total per transport and the seconds.

Each test builds one app (and, over real HTTP, one server thread) and one long-lived client; the hypothesis body
runs inside the test (so the conftest fixtures are built once per test, not once per example) and flushes Redis
between examples.

A bug found by a property can be tolerated for a while by a narrow predicate in ``KNOWN_BUGS`` (plus a strict xfail
test that pins it), so the properties keep hunting for others. The seven found so far are fixed, and each has a
regression test below (oversized bodies, huge integers, lone surrogates, nesting near the recursion limit, voice
fields RQ cannot use or that end in a newline).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import string
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from starlette.datastructures import QueryParams

from bridge import bodies
from bridge.app import create_app
from bridge.decisions import KINDS, DecisionLog
from bridge.settings import Secret, Settings
from tests.conftest import WEBHOOK_TOKEN
from tests.support import ServerThread, fixture_names, load_fixture, recorded_keys, report

API_TOKEN = "fuzz-api-token-7e2b1c"
QUEUE_TOKEN = "fuzz-queue-token-4d9a0f"
QUEUE_KEY = "rq:queue:bridge"
VOICE_QUEUE_KEY = "rq:queue:bridge-voice"

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
# The file's budget of examples per run, dealt out by ``share``: ``fuzz-ci`` when CI is set (as CI services and
# .ci/run set it), else ``fuzz-dev``. Named apart from hypothesis's own ``ci`` profile, which this does not replace.
hsettings.register_profile("fuzz-ci", FUZZ, max_examples=4_000)
hsettings.register_profile("fuzz-dev", FUZZ, max_examples=1_000)
PROFILE = os.environ.get("OMNIBRIDGE_FUZZ_PROFILE") or ("fuzz-ci" if os.environ.get("CI") else "fuzz-dev")
BUDGET = hsettings.get_profile(PROFILE).max_examples
TRANSPORTS = ("asgi", "http")
HTTP_SHARE = 0.08  # real-HTTP examples per in-process example of a property


BATCH = 4  # inputs per example at most: drawing an example costs hypothesis more than sending a request


def share(fraction: float, transport: str) -> int:
    """Examples for a property that has ``fraction`` of the budget (the fractions add up to 1), on ``transport``."""
    return max(10, round(BUDGET * fraction * (HTTP_SHARE if transport == "http" else 1.0)))


def batches(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """1 to ``BATCH`` inputs per example, each sent and checked on its own (Redis flushed before each)."""
    return st.lists(strategy, min_size=1, max_size=BATCH)


SEEN: Counter[tuple[str, int]] = Counter()  # (endpoint, status) -> answers
KNOWN: Counter[str] = Counter()  # known bug -> inputs that hit it
BY_TRANSPORT: Counter[str] = Counter()  # transport -> inputs


@pytest.fixture(scope="module", autouse=True)
def summary() -> Iterator[None]:
    started = time.monotonic()
    yield
    seconds = time.monotonic() - started
    per_endpoint: dict[str, Counter[int]] = {}
    for (endpoint, status), count in sorted(SEEN.items()):
        per_endpoint.setdefault(endpoint, Counter())[status] += count
    parts = [f"{endpoint}: {sum(c.values())} inputs {dict(sorted(c.items()))}" for endpoint, c in per_endpoint.items()]
    report(
        f"fuzz summary: {'; '.join(parts)}; known bugs hit: {dict(KNOWN) or 'none'}; "
        f"{sum(SEEN.values())} inputs ({BY_TRANSPORT['asgi']} in-process, {BY_TRANSPORT['http']} over real HTTP) "
        f"in {seconds:.1f} s (profile {PROFILE})"
    )


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
    voice_queue_length: int = 0

    @classmethod
    def of(cls, client: redis.Redis) -> RedisState:
        # Counters of refused requests (GET /metrics) are observability, not recorded input.
        pipe = client.pipeline(transaction=False)
        pipe.keys("*").llen(QUEUE_KEY).llen(VOICE_QUEUE_KEY)
        keys, queued, voice_queued = pipe.execute()
        return cls(frozenset(k for k in keys if k != b"ob:metrics"), queued, voice_queued)

    def jobs(self) -> set[bytes]:
        return {key for key in self.keys if key.startswith(b"rq:job:")}

    def ours(self) -> set[bytes]:
        return {key for key in self.keys if key.startswith(b"ob:")}


EMPTY = RedisState(frozenset(), 0, 0)


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
        self.transport = "asgi" if isinstance(client, InProcess) else "http"
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
        BY_TRANSPORT[self.transport] += 1
        if response.status_code >= 500:
            self._request("GET", "/healthz")
        return response


def json_body(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert isinstance(body, dict), response.text
    return body


class InProcess:
    """A synchronous client of an ASGI app in this process: httpx's ``ASGITransport`` on an event loop this thread
    runs for each request (no thread hop: waking a loop in another thread cost more than the request), the app's
    lifespan run as a server runs it (its background tasks advance while requests are answered), an exception the
    app raises after answering not raised here (a server would only log it). No socket; the same app, Redis and
    scripts as over HTTP."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()

    def __enter__(self) -> InProcess:
        self._run(self._startup())
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._run(self.client.aclose())
            self._run(self._shutdown())
        finally:
            self.loop.close()

    def _run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    async def _startup(self) -> None:
        self.to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        self.lifespan = asyncio.ensure_future(self.app(scope, self.to_app.get, self.from_app.put))
        await self.to_app.put({"type": "lifespan.startup"})
        started = await self.from_app.get()
        assert started["type"] == "lifespan.startup.complete", started

    async def _shutdown(self) -> None:
        await self.to_app.put({"type": "lifespan.shutdown"})
        stopped = await self.from_app.get()
        assert stopped["type"] == "lifespan.shutdown.complete", stopped
        await self.lifespan

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self._run(self.client.request(method, url, **kwargs))

    def build_request(self, method: str, url: str, **kwargs: Any) -> httpx.Request:
        return self.client.build_request(method, url, **kwargs)


@contextmanager
def serving(settings: Settings, transport: str) -> Iterator[Any]:
    """A client of a fresh app: in-process (``asgi``, ``InProcess``) or over real HTTP to uvicorn on 127.0.0.1
    (``http``). Both answer ``request(method, url, ...)`` and ``build_request``."""
    app = create_app(settings)
    if transport == "asgi":
        with InProcess(app) as client:
            yield client
    else:
        with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
            yield client


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

# -- identifiers: what Rocket.Chat sends, and what it never would (README, the bad-input table) -------------------

# The documented rules (written here, not imported, so the product cannot agree with itself).
ROCKETCHAT_ID = re.compile(r"[0-9A-Za-z_.-]{1,64}")
REQUEST_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
METEOR_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTWXYZabcdefghijkmnopqrstuvwxyz"  # Meteor's Random.id()
PREFIXES = ["voice-", "external-", "chat-", "voice:", "external:", "chat:", "ob:decisions:", "voice/", "../", "~"]

valid_ids = st.one_of(
    st.text(METEOR_ALPHABET, min_size=17, max_size=17),
    st.text(string.ascii_letters + string.digits + "_.-", min_size=1, max_size=64),  # ROCKETCHAT_ID, drawn fast
    st.sampled_from(["rocket.cat", "GENERAL", "fasd6f5a4sd6f8a4sdf", "a" * 64, "-", "_", "x"]),
)
# Collision attempts: another kind's name spelled into an id (valid when the rest is: room ``voice-x`` is a room).
prefixed_ids = st.builds(lambda prefix, rest: prefix + rest, st.sampled_from(PREFIXES), valid_ids)


def long_ids(longest: int) -> st.SearchStrategy[str]:
    return st.builds(lambda char, n: char * n, st.sampled_from("aZ9_-.\u00e9\u4e2d"), st.integers(65, longest))


control_ids = st.builds(
    lambda head, odd, tail: head + odd + tail,
    st.text(METEOR_ALPHABET, max_size=17),
    st.text(
        st.one_of(st.characters(max_codepoint=0x1F), st.sampled_from("\x7f\u202e\u2028\ufeff\u200b")),
        min_size=1,
        max_size=3,
    ),
    st.text(METEOR_ALPHABET, max_size=5),
)
unicode_ids = st.text(st.characters(min_codepoint=0x80, exclude_categories=["Cs"]), min_size=1, max_size=20)
odd_ids = st.sampled_from(["", " ", ":", "/", "%2F", "%", "*", "?", "#", "\\", "null", "..", ".", "a b", "a\tb"])


def identifiers(longest: int = 6000) -> st.SearchStrategy[str]:
    """Ids of every sort, valid and not. ``longest`` bounds the long ones (URLs must fit a server's line limit)."""
    return st.one_of(
        valid_ids,
        prefixed_ids,
        long_ids(longest),
        control_ids,
        unicode_ids,
        odd_ids,
        surrogates.map(lambda char: "x" + char),
    )


URL_ID_LONGEST = 1200  # 1,200 three-byte characters percent-encoded: 10.8 KB, under uvicorn's 16 KB request line
# Built once: a strategy built inside a draw is validated again each time, which costs more than the example.
ANY_IDS = identifiers()
URL_IDS = identifiers(URL_ID_LONGEST)
SHORT_IDS = identifiers(200)


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


# Strategies built once, not inside each draw (a new strategy object is validated again each time, at a cost
# larger than the example's request).
FIXTURE_NAMES = sorted(FIXTURES)
FIXTURE_PATHS = {name: [(), *paths(doc)] for name, doc in FIXTURES.items()}
MUTATIONS = st.sampled_from(["drop", "replace", "replace", "add", "type", "_id"])
TYPE_VALUES = st.one_of(st.sampled_from(sorted(DOCUMENTED_TYPES)), replacements)
ROOM_ID_VALUES = st.one_of(unicode_text, replacements, ANY_IDS)


@st.composite
def mutated_fixtures(draw: st.DrawFn) -> Any:
    """A fixture with 1-4 mutations at paths of the original document (one a mutation removed is skipped)."""
    name = FIXTURE_NAMES[draw(st.integers(0, len(FIXTURE_NAMES) - 1))]
    doc = json.loads(json.dumps(FIXTURES[name]))
    found = FIXTURE_PATHS[name]
    for _ in range(draw(st.integers(1, 4))):
        path = found[draw(st.integers(0, len(found) - 1))]
        operation = draw(MUTATIONS)
        if operation == "type":
            doc["type"] = draw(TYPE_VALUES)
            continue
        if operation == "_id" and isinstance(doc, dict):
            doc["_id"] = draw(ROOM_ID_VALUES)
            continue
        if path == ():
            if operation == "replace":
                return draw(replacements)
            continue
        try:
            parent, key = parent_of(doc, path), path[-1]
            parent[key]  # noqa: B018 (does the path still exist?)
        except (KeyError, IndexError, TypeError):
            continue
        if operation == "drop":
            del parent[key]
        elif operation == "replace":
            parent[key] = draw(replacements)
        elif isinstance(parent[key], dict):
            parent[key][draw(unicode_text)] = draw(replacements)
    return doc


ENCODINGS = st.sampled_from(["utf-8"] * 6 + ["utf-16", "utf-16-le", "latin-1", "utf-8-sig", "unescaped"])


@st.composite
def encoded(draw: st.DrawFn, documents: st.SearchStrategy[Any]) -> tuple[bytes, str]:
    text = dumps_with_raw(draw(documents))
    encoding = draw(ENCODINGS)
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


TOKENS = st.sampled_from(TOKEN_CHOICES)
CONTENT_TYPE_CHOICES = st.sampled_from(CONTENT_TYPES)


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


def get_path(doc: Any, path: str) -> Any:
    """The value at a dotted path (``messages.0._id``), None where any step is missing."""
    for step in path.split("."):
        if isinstance(doc, list) and step.isdigit() and int(step) < len(doc):
            doc = doc[int(step)]
        elif isinstance(doc, dict):
            doc = doc.get(step)
        else:
            return None
    return doc


def set_path(doc: Any, path: str, value: Any) -> None:
    *parents, last = [int(step) if step.isdigit() else step for step in path.split(".")]
    for step in parents:
        doc = doc[step]
    doc[last] = value


ROUTED_TYPES = ("LivechatSessionTaken", "LivechatSessionForwarded", "LivechatSession")


def read_ids(payload: dict[str, Any]) -> list[str]:
    """The id fields the README says a webhook of this type is checked for, as the parser reads them."""
    kind = payload.get("type")
    found = [] if kind == "LivechatOfflineMessage" else ["_id"]
    if kind in ("LivechatSessionStart", "LivechatSessionQueued", *ROUTED_TYPES):
        found.append("departmentId")
    if kind == "LivechatSessionQueued":
        found += ["visitor._id"] + ([] if get_path(payload, "departmentId") else ["visitor.department"])
    if kind in ROUTED_TYPES:
        found.append("servedBy._id" if payload.get("servedBy") is not None else "agent._id")
    if kind == "LivechatSessionForwarded":
        found += ["oldServedBy._id", "oldDepartmentId"]
    if kind == "Message":
        found += ["messages.0._id", "messages.0.agentId"]
    return found


def bad_ids(payload: dict[str, Any]) -> set[str]:
    """The read id fields that hold a string that is not an id (empty ones are the required checks' business)."""
    return {
        path
        for path in read_ids(payload)
        if isinstance(value := get_path(payload, path), str) and value and not ROCKETCHAT_ID.fullmatch(value)
    }


def check_webhook_answer(
    http: Http, client: redis.Redis, body: bytes, headers: dict[str, str], encoding: str
) -> tuple[int, dict[str, Any]]:
    client.flushall()
    before = EMPTY  # what FLUSHALL leaves: one round trip less per input
    response = http.send("POST", "/webhooks/livechat", content=body, headers=headers)
    after = RedisState.of(client)
    status = response.status_code
    if known_bug("webhook", body, status):
        assert after == before, "a refused event left something in Redis"
        return status, {}
    assert status in (200, 400, 403, 413), f"status {status} for {body[:300]!r}: {response.text[:300]}"
    answer = json_body(response)
    assert answer.get("ok") is (status == 200), answer
    right_token = headers.get("X-RocketChat-Livechat-Token") == WEBHOOK_TOKEN
    assert (status == 403) is (not right_token), (status, headers)
    if status != 200:
        assert isinstance(answer.get("error"), str) and answer["error"]
        assert after == before, f"a {status} left something in Redis: {sorted(after.keys - before.keys)}"
        return status, answer
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
        return status, answer
    assert answer["event"] == event_type
    assert not bad_ids(payload), f"accepted ids that are not ids: {bad_ids(payload)} in {body[:300]!r}"
    outcome = answer["outcome"]
    if outcome == "ignored":
        assert after == before
        assert "id" not in answer
        return status, answer
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
    return status, answer


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_webhook_answers_mutated_fixtures_by_policy(settings, redis_client, transport):
    with serving(settings, transport) as client:
        http = Http(client, "webhook")

        @hsettings(FUZZ, max_examples=share(0.24, transport))
        @given(batches(st.tuples(encoded(mutated_fixtures()), TOKENS, CONTENT_TYPE_CHOICES)))
        def run(inputs: list[tuple[tuple[bytes, str], str, str | None]]) -> None:
            for (body, encoding), token, content_type in inputs:
                check_webhook_answer(http, redis_client, body, webhook_headers(token, content_type), encoding)

        run()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_webhook_answers_random_json_by_policy(settings, redis_client, transport):
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
    with serving(settings, transport) as client:
        http = Http(client, "webhook")

        @hsettings(FUZZ, max_examples=share(0.11, transport))
        @given(batches(st.tuples(encoded(documents), TOKENS, CONTENT_TYPE_CHOICES)))
        def run(inputs: list[tuple[tuple[bytes, str], str, str | None]]) -> None:
            for (body, encoding), token, content_type in inputs:
                check_webhook_answer(http, redis_client, body, webhook_headers(token, content_type), encoding)

        run()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_webhook_answers_random_bytes_by_policy(settings, redis_client, transport):
    with serving(settings, transport) as client:
        http = Http(client, "webhook")

        @hsettings(FUZZ, max_examples=share(0.07, transport))
        @given(batches(st.tuples(raw_bodies, TOKENS, CONTENT_TYPE_CHOICES)))
        def run(inputs: list[tuple[bytes, str, str | None]]) -> None:
            for body, token, content_type in inputs:
                check_webhook_answer(http, redis_client, body, webhook_headers(token, content_type), "bytes")

        run()


# The id fields each event type reads (README, the bad-input table), where a fixture carries them.
ID_FIELDS = {
    name: [path for path in read_ids(doc) + ["agent._id"] if get_path(doc, path) is not None]
    for name, doc in FIXTURES.items()
}


WITH_ID_FIELDS = st.sampled_from(sorted(name for name, fields in ID_FIELDS.items() if fields))
ID_FIELD_CHOICES = {
    name: st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True)
    for name, fields in ID_FIELDS.items()
    if fields
}


@st.composite
def payloads_with_hostile_ids(draw: st.DrawFn) -> tuple[dict[str, Any], set[str]]:
    """A fixture whose id fields (some of them) hold drawn identifiers; the fields changed."""
    name = draw(WITH_ID_FIELDS)
    doc = json.loads(json.dumps(FIXTURES[name]))
    chosen = draw(ID_FIELD_CHOICES[name])
    for path in chosen:
        set_path(doc, path, draw(ANY_IDS))
    return doc, set(chosen)


OPTIONAL_IDS = {"departmentId", "oldDepartmentId", "messages.0.agentId", "visitor.department"}  # may be ""


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_webhook_ids_are_checked_at_the_edge(settings, redis_client, transport):
    """Hostile ids in every id field (long, control characters, other kinds' prefixes, unicode, lone surrogates):
    400 naming a field that holds one, nothing recorded; valid ones (``voice-x`` is a valid room id) accepted."""
    with serving(settings, transport) as client:
        http = Http(client, "webhook (ids)")

        @hsettings(FUZZ, max_examples=share(0.16, transport))
        @given(batches(st.tuples(payloads_with_hostile_ids(), st.sampled_from(["utf-8", "unescaped"]))))
        def run(inputs: list[tuple[tuple[dict[str, Any], set[str]], str]]) -> None:
            for (payload, _), encoding in inputs:
                raw = json.dumps(payload, ensure_ascii=False)
                text = json.dumps(payload) if encoding == "utf-8" or has_surrogate(raw) else raw
                body = text.encode("utf-8", "surrogatepass")
                status, answer = check_webhook_answer(
                    http, redis_client, body, webhook_headers("right", "application/json"), encoding
                )
                read = {path: get_path(payload, path) for path in read_ids(payload)}
                refused = bad_ids(payload) | {p for p, v in read.items() if v == "" and p not in OPTIONAL_IDS}
                if refused:
                    assert status == 400, f"{status} {answer} for ids {read}"
                    assert answer["field"] in refused, (answer, read)
                else:
                    assert status == 200, f"{status} {answer} for ids {read}"

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
query_values = st.one_of(
    unicode_text.map(lambda text: text.encode("utf-8", "replace").decode()),
    st.just(""),
    URL_IDS.map(lambda text: text.encode("utf-8", "replace").decode()),
)
raw_queries = st.one_of(
    st.text(URL_TEXT, max_size=80),
    st.builds(
        lambda name, value, tail: f"{name}={quote(value.encode('utf-8', 'replace'), safe=':/')}{tail}",
        st.sampled_from(["departmentId", "ignoreAgentId"]),
        URL_IDS,
        st.sampled_from(["", "&departmentId=", "&ignoreAgentId=x", "&departmentId=ok&departmentId=%0A"]),
    ),
)


EXTERNAL_PARAMS = st.dictionaries(
    st.one_of(st.sampled_from(["departmentId", "ignoreAgentId"]), st.text(URL_TEXT, max_size=10)),
    query_values,
    max_size=4,
)
EXTRA_HEADERS = st.dictionaries(header_names, header_values, max_size=4)
EXTERNAL_TOKENS = st.sampled_from(["right", "right", "right", "missing", "wrong", "empty", "webhook", "padded"])
EXTERNAL_TOKEN_HEADERS = st.sampled_from(["X-RocketChat-Secret-Token", "x-rocketchat-secret-token"])


@st.composite
def external_requests(draw: st.DrawFn) -> tuple[str, dict[str, str], dict[str, str], bool]:
    params = draw(EXTERNAL_PARAMS)
    raw_query = draw(st.one_of(st.none(), raw_queries))
    headers = draw(EXTRA_HEADERS)
    headers = {k: v for k, v in headers.items() if k.lower() != "x-rocketchat-secret-token"}
    token = draw(EXTERNAL_TOKENS)
    value = {
        "right": QUEUE_TOKEN,
        "wrong": "nope",
        "empty": "",
        "webhook": WEBHOOK_TOKEN,
        "padded": QUEUE_TOKEN + "0",
    }.get(token)
    if value is not None:
        headers[draw(EXTERNAL_TOKEN_HEADERS)] = value
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


def external_query(path: str, params: dict[str, str]) -> QueryParams:
    """The query the app reads, as the request will carry it (httpx's URL, starlette's parser: not ours)."""
    return QueryParams(httpx.URL(path, params=params or None).query)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_external_queue_answers_by_policy(settings, redis_client, warm_directory, transport):
    """200 with an agent or ``{}``; 400 naming an id that is not one; 403 without the token. Whatever the query, the
    only decision record it writes is the External Service's record of its department, never a chat's or a voice
    request's (a department ``voice-x`` is ``ob:decisions:external:voice-x``)."""
    configured = settings.replace(external_queue_token=Secret(QUEUE_TOKEN), directory_ttl_seconds=600.0)
    shapes: Counter[str] = Counter()
    with serving(configured, transport) as client:
        http = Http(client, "external-queue")

        @hsettings(FUZZ, max_examples=share(0.12, transport))
        @given(batches(external_requests()))
        def run(requests: list[tuple[str, dict[str, str], dict[str, str], bool]]) -> None:
            for request in requests:
                check_external(request)

        def check_external(request: tuple[str, dict[str, str], dict[str, str], bool]) -> None:
            path, params, headers, right = request
            jobs_before = RedisState.of(redis_client).jobs()
            newest_before = redis_client.lindex("ob:recent-decisions", 0)
            response = http.send("GET", path, params=params, headers=headers)
            status = response.status_code
            assert status in (200, 400, 403), f"{status} for {path} {params} {headers}"
            answer = json_body(response)
            query = external_query(path, params)
            asked = {field: query.get(field) or None for field in ("departmentId", "ignoreAgentId")}
            bad = {field for field, value in asked.items() if value is not None and not ROCKETCHAT_ID.fullmatch(value)}
            expected = 403 if not right else 400 if bad else 200
            assert status == expected, (status, answer, asked, headers)
            assert redis_client.keys("ob:decisions:chat:*") == [] and redis_client.keys("ob:decisions:voice:*") == []
            if status != 200:
                assert answer["ok"] is False
                assert status != 400 or answer["field"] in bad, (answer, asked)
                assert RedisState.of(redis_client).jobs() == jobs_before
                assert redis_client.lindex("ob:recent-decisions", 0) == newest_before, "a refusal recorded a decision"
                return
            assert answer == {} or (
                set(answer) == {"_id", "username"} and all(isinstance(v, str) and v for v in answer.values())
            ), answer
            record = DecisionLog(redis_client, 60).read("external", asked["departmentId"] or "-")
            assert record, f"no External Service record for {asked['departmentId']!r}"
            assert {(d["record_kind"], d["record_id"]) for d in record} == {("external", asked["departmentId"] or "-")}
            shapes["agent" if answer else "empty"] += 1

        run()
    assert shapes["agent"] and (shapes["empty"] or transport == "http"), (
        f"both answer shapes are exercised: {dict(shapes)}"
    )


def test_external_queue_is_404_everywhere_without_its_token(settings):
    with serving(settings, "asgi") as client:
        http = Http(client, "external-queue (off)")

        @hsettings(FUZZ, max_examples=share(0.02, "asgi"))
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
voice_strings = st.one_of(
    st.text(string.ascii_letters + string.digits + "*#+_.:-", min_size=1, max_size=70),
    st.text(string.ascii_letters + string.digits + "*#+_.:- \n\t/@", max_size=70),
    unicode_text,
    ANY_IDS,
)
valid_extensions = st.from_regex(EXTENSION, fullmatch=True)
valid_request_ids = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=64)  # REQUEST_ID
voice_documents = st.one_of(
    st.dictionaries(st.sampled_from(VOICE_KEYS), st.one_of(voice_strings, json_values), max_size=3),
    st.fixed_dictionaries(
        {"extension": st.one_of(valid_extensions, voice_strings)},
        optional={
            "departmentId": st.one_of(valid_ids, prefixed_ids, voice_strings, st.none()),
            "requestId": st.one_of(valid_request_ids, prefixed_ids, voice_strings),
        },
    ),
    json_values,
)


VOICE_BODY_KINDS = st.sampled_from(["json"] * 4 + ["bytes", "big"])
VOICE_AUTH = st.sampled_from(
    [f"Bearer {API_TOKEN}"] * 5
    + [None, "Bearer", "Bearer wrong", f"Basic {API_TOKEN}", f"bearer {API_TOKEN}", API_TOKEN]
)
VOICE_CONTENT_TYPES = st.sampled_from(["application/json", "text/plain"])
VOICE_DOCUMENTS = encoded(voice_documents)


@st.composite
def voice_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    kind = draw(VOICE_BODY_KINDS)
    if kind == "json":
        body, _ = draw(VOICE_DOCUMENTS)
    elif kind == "bytes":
        body = draw(raw_bodies)
    else:
        body = json.dumps({"extension": "2001", "pad": "x" * draw(st.integers(4000, 6000))}).encode()
    auth = draw(VOICE_AUTH)
    headers = {"Content-Type": draw(VOICE_CONTENT_TYPES)}
    if auth is not None:
        headers["Authorization"] = auth
    return body, headers


def valid_voice(payload: object) -> bool:
    """The README's rule: extension 1-32 of digits, letters, *#+_.-; an optional departmentId that is a Rocket.Chat
    id; an optional requestId of 1-64 letters, digits, _ and -."""
    if not isinstance(payload, dict) or not isinstance(payload.get("extension"), str):
        return False
    if not EXTENSION.fullmatch(payload["extension"]):
        return False
    department = payload.get("departmentId")
    if department is not None and not (isinstance(department, str) and ROCKETCHAT_ID.fullmatch(department)):
        return False
    request_id = payload.get("requestId", "generated")
    return isinstance(request_id, str) and REQUEST_ID.fullmatch(request_id) is not None


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_voice_route_answers_by_policy(settings, redis_client, transport):
    configured = settings.replace(api_token=Secret(API_TOKEN))
    with serving(configured, transport) as client:
        http = Http(client, "voice")

        @hsettings(FUZZ, max_examples=share(0.12, transport))
        @given(batches(voice_requests()))
        def run(requests: list[tuple[bytes, dict[str, str]]]) -> None:
            for request in requests:
                check_voice(request)

        def check_voice(request: tuple[bytes, dict[str, str]]) -> None:
            body, headers = request
            redis_client.flushall()
            before = EMPTY
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
                assert after == before, f"a {status} left something in Redis: {sorted(after.keys - before.keys)}"
                return
            assert headers["Authorization"].lower() == f"bearer {API_TOKEN}"
            assert valid_voice(parsed(body)), f"accepted an invalid voice request {body[:300]!r}"
            assert answer["decision"] == f"/decisions/voice/{answer['id']}"
            assert after.jobs() - before.jobs() == {f"rq:job:voice-{answer['id']}".encode()}
            assert after.voice_queue_length == before.voice_queue_length + 1, "on the voice queue"
            assert after.queue_length == before.queue_length, "not on the chats' queue"
            assert not {k for k in after.keys if k.startswith(b"ob:decisions")}, "nothing decided before the job runs"

        run()


PER_TOKEN_CAP, TOTAL_CAP = 3, 5
FLOOD_IDS = st.one_of(valid_request_ids, prefixed_ids, SHORT_IDS)


@st.composite
def voice_floods(draw: st.DrawFn) -> tuple[int, list[str]]:
    """Requests already queued by another token, then a burst of request ids (repeats included) from ours."""
    pool = draw(st.lists(FLOOD_IDS, min_size=1, max_size=8))
    return draw(st.integers(0, TOTAL_CAP + 1)), draw(st.lists(st.sampled_from(pool), min_size=1, max_size=12))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_voice_floods_stop_at_the_caps(settings, redis_client, transport):
    """A model of the caps (VOICE_QUEUE_MAX_PER_TOKEN, VOICE_QUEUE_MAX): each request is 202 (queued, or already
    queued), 429 naming the cap it met with nothing recorded, or 400; the voice queue holds exactly the 202s."""
    configured = settings.replace(
        api_token=Secret(API_TOKEN), voice_queue_max_per_token=PER_TOKEN_CAP, voice_queue_max=TOTAL_CAP
    )
    with serving(configured, transport) as client:
        http = Http(client, "voice (floods)")

        @hsettings(FUZZ, max_examples=share(0.04, transport))
        @given(voice_floods())
        def run(flood: tuple[int, list[str]]) -> None:
            others, request_ids = flood
            redis_client.flushall()
            for n in range(others):  # another token's queued requests count in the total only
                redis_client.zadd("ob:voice-queued", {f"other-{n}": time.time()})
            total, mine, queued = others, 0, set()
            for request_id in request_ids:
                before = RedisState.of(redis_client)
                body = json.dumps({"extension": "2001", "requestId": request_id}).encode("utf-8", "surrogatepass")
                response = http.send(
                    "POST", "/voice/route", content=body, headers={"Authorization": f"Bearer {API_TOKEN}"}
                )
                answer = json_body(response)
                if not REQUEST_ID.fullmatch(request_id):
                    assert (response.status_code, answer.get("field")) == (400, "requestId"), answer
                elif request_id in queued:
                    assert response.status_code == 202, answer
                elif total >= TOTAL_CAP or mine >= PER_TOKEN_CAP:
                    cap = "VOICE_QUEUE_MAX" if total >= TOTAL_CAP else "VOICE_QUEUE_MAX_PER_TOKEN"
                    assert (response.status_code, answer["cap"], answer["ok"]) == (429, cap, False), answer
                    assert response.headers["Retry-After"].isdigit() and cap in answer["error"]
                    assert RedisState.of(redis_client) == before, "a 429 recorded something"
                else:
                    assert response.status_code == 202, answer
                    total, mine = total + 1, mine + 1
                    queued.add(request_id)
            assert set(redis_client.lrange(VOICE_QUEUE_KEY, 0, -1)) == {f"voice-{i}".encode() for i in queued}

        run()


# -- 5. decision records: by kind and id, whatever the address -----------------------------------------------------

ADDRESS_PREFIX = {"chat": "/decisions/", "voice": "/decisions/voice/", "external": "/decisions/external/"}
SEEDED_IDS = st.one_of(valid_ids, prefixed_ids, valid_request_ids)
SAFE_CHARACTERS = st.sampled_from(["", "", "/:", "~"])
PATH_TAILS = st.sampled_from(["", "", "", "/", "/x", "%2F", "?q=1"])


def address_of(raw_path: bytes) -> tuple[str, str] | None:
    """The record a raw path names, by the README's rule (one percent-decoded segment per id); None: refused."""
    segments = raw_path.partition(b"/decisions/")[2].split(b"/")
    if len(segments) == 2 and segments[0] in (b"voice", b"external"):
        kind = segments[0].decode()
    elif len(segments) == 1:
        kind = "chat"
    else:
        return None
    try:
        record_id = unquote(segments[-1].decode("ascii"), errors="strict")
    except UnicodeDecodeError:
        return None
    rule = REQUEST_ID if kind == "voice" else ROCKETCHAT_ID
    if rule.fullmatch(record_id) or (kind == "external" and record_id == "-"):
        return kind, record_id
    return None


@st.composite
def lookups(draw: st.DrawFn) -> tuple[list[tuple[str, str]], list[str]]:
    """Records of any kind (ids that spell another kind's name among them), then paths asking for one of those ids
    as any kind, or for anything else, percent-encoded whole or with / and : left as they are."""
    ids = draw(st.lists(SEEDED_IDS, min_size=1, max_size=4))
    seeded = [(draw(st.sampled_from(KINDS)), record_id) for record_id in ids]
    paths = []
    for _ in range(draw(st.integers(1, BATCH))):
        wanted = draw(st.one_of(st.sampled_from(ids), URL_IDS))
        quoted = quote(wanted.encode("utf-8", "replace"), safe=draw(SAFE_CHARACTERS))
        if any(segment in (".", "..") for segment in quoted.split("/")) or draw(st.booleans()):
            quoted = quoted.replace(".", "%2E")  # a dot segment would leave /decisions/ before the request is sent
        tail = draw(PATH_TAILS)
        paths.append(ADDRESS_PREFIX[draw(st.sampled_from(KINDS))] + quoted + tail)
    return seeded, paths


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_decision_lookups_never_cross_kinds(settings, redis_client, transport):
    """``GET /decisions/<roomId>``, ``/decisions/voice/<requestId>``, ``/decisions/external/<departmentId>`` answer
    the record of that kind and id and nothing else: ``/decisions/voice-x`` is the room ``voice-x``, never voice
    request ``x``; an id that is not one (an encoded ``/`` included) is 400; an unknown record 404."""
    configured = settings.replace(api_token=Secret(API_TOKEN))
    log = DecisionLog(redis_client, 600)
    with serving(configured, transport) as client:
        http = Http(client, "decisions")

        @hsettings(FUZZ, max_examples=share(0.14, transport))
        @given(lookups(), st.sampled_from([f"Bearer {API_TOKEN}"] * 9 + ["Bearer nope"]))
        def run(lookup: tuple[list[tuple[str, str]], list[str]], auth: str) -> None:
            seeded, paths = lookup
            redis_client.flushall()
            for kind, record_id in seeded:
                log.record(kind, record_id, {"kind": kind, "outcome": f"{kind}|{record_id}"})
            for path in paths:
                check_lookup(seeded, path, auth)

        def check_lookup(seeded: list[tuple[str, str]], path: str, auth: str) -> None:
            response = http.send("GET", path, headers={"Authorization": auth})
            answer = json_body(response)
            if auth != f"Bearer {API_TOKEN}":
                assert response.status_code == 403
                return
            sent = http.client.build_request("GET", path).url.raw_path.partition(b"?")[0]
            address = address_of(sent)
            if address is None:
                assert response.status_code == 400 and answer["field"] in ("roomId", "requestId", "departmentId"), (
                    sent,
                    answer,
                )
                return
            if address not in seeded:
                assert response.status_code == 404, (sent, address, seeded, answer)
                return
            assert response.status_code == 200, (sent, address, answer)
            kind, record_id = address
            assert [d["outcome"] for d in answer["decisions"]] == [f"{kind}|{record_id}"] * seeded.count(address)
            assert {(d["record_kind"], d["record_id"]) for d in answer["decisions"]} == {address}

        run()


# -- 6. constant-time token comparison ----------------------------------------------------------------------------


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
