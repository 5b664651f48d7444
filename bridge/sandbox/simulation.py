"""Simulated visitors and agents in the sandbox, so the bridge has chats to route without a real Rocket.Chat.

Visitors open chats (Poisson arrivals at `rate_per_minute`, spread over the departments). Nobody assigns them
here: the sandbox routes like Manual_Selection, so a chat waits in the queue until the bridge takes it. Once an
agent serves a chat (`LivechatSessionTaken`), that agent answers it (an agent `Message` webhook, which stops the
bridge's no-answer clock) and later closes it (`close_room`, whose `LivechatSession` webhook the state's listeners
post like Rocket.Chat does). A visitor nobody served within `patience_seconds` leaves (closes the chat).

Each chat's department, answer and close delays are drawn from `seed` when the chat opens, so the same seed gives
the same chats in the same order whatever the timing of the bridge. `step(now)` does what is due at `now`;
`start()` runs it on a thread in real time.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.sandbox import payloads
from bridge.sandbox.documents import Doc
from bridge.sandbox.state import TAKEN, SandboxState

SendMessage = Callable[[dict[str, Any]], object]

ARRIVE, ANSWER, CLOSE, GIVE_UP = "arrive", "answer", "close", "give_up"
_OPENERS = (
    "Hello, I need help",
    "Hi, can you tell me more about your plans?",
    "My order has not arrived",
    "How do I reset my password?",
    "Is there a discount for teams?",
)
_ANSWERS = ("Hi, I'm looking into it now.", "Hello! Let me check that for you.", "Thanks for waiting, I'm here.")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatPlan:
    """What happens to one chat, drawn when it opens; delays count from the moment an agent takes it."""

    department: str
    opener: str  # the visitor's first message
    answer: str  # the agent's first message
    answer_after: float
    close_after: float


class Simulation:
    def __init__(
        self,
        state: SandboxState,
        departments: Sequence[str],
        *,
        rate_per_minute: float = 30.0,
        chat_seconds: tuple[float, float] = (4.0, 16.0),
        answer_seconds: tuple[float, float] = (1.0, 4.0),
        patience_seconds: float = 120.0,
        seed: int | None = None,
        send_message: SendMessage | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_minute < 0 or not departments:
            raise ValueError("the rate must not be negative, and visitors need at least one department")
        if not 0 <= answer_seconds[0] <= answer_seconds[1] <= chat_seconds[0] <= chat_seconds[1]:
            raise ValueError("agents answer before they close: answer_seconds must end before chat_seconds start")
        self.state = state
        self.departments = list(departments)
        self.rate_per_minute = rate_per_minute
        self.chat_seconds = chat_seconds
        self.answer_seconds = answer_seconds
        self.patience_seconds = patience_seconds
        self.send_message = send_message  # posts an agent's Message webhook; None: the message is only stored
        self.clock = clock
        self.counts: Counter[str] = Counter()  # opened, answered, closed, abandoned
        self.plans: dict[str, ChatPlan] = {}  # room id -> plan, for the chats this simulation opened
        self._random = random.Random(seed)
        self._lock = threading.RLock()
        self._due: list[tuple[float, int, str, str, str]] = []  # (at, order, action, room id, agent id)
        self._order = itertools.count()
        self._takes: dict[str, set[tuple[str, str]]] = {}  # room id -> (agent id, servedBy.ts) scheduled
        self._arrivals_started = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- running ------------------------------------------------------------------------------------

    def attach(self) -> Simulation:
        """Listen to the state, to learn when an agent takes one of our chats."""
        with self.state.lock:
            if self._on_event not in self.state.listeners:
                self.state.listeners.append(self._on_event)
        return self

    def detach(self) -> None:
        with self.state.lock:
            if self._on_event in self.state.listeners:
                self.state.listeners.remove(self._on_event)

    def start(self, ready: Callable[[], bool] | None = None) -> Simulation:
        """Run in real time on a thread; with `ready`, the first visitor comes once `ready()` is true."""
        if self._thread is not None:
            raise RuntimeError("the simulation is already running")
        self.attach()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="sandbox-simulation", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.detach()

    def _run(self, ready: Callable[[], bool] | None) -> None:
        while ready is not None and not ready():
            if self._stop.wait(0.2):
                return
        while not self._stop.is_set():
            self.step()
            next_at = self.next_due()
            pause = 0.25 if next_at is None else next_at - self.clock()
            self._stop.wait(min(0.25, max(0.0, pause)))  # short: a take may schedule something sooner

    def next_due(self) -> float | None:
        with self._lock:
            return self._due[0][0] if self._due else None

    def step(self, now: float | None = None) -> int:
        """Do everything due at `now` (default: the clock), oldest first; returns how many actions ran."""
        now = self.clock() if now is None else now
        with self._lock:
            if not self._arrivals_started and self.rate_per_minute > 0:
                self._arrivals_started = True
                self._schedule(now + self._gap(), ARRIVE, "", "")
        done = 0
        while True:
            with self._lock:
                if not self._due or self._due[0][0] > now:
                    return done
                at, _, action, room_id, agent_id = heapq.heappop(self._due)
            if action == ARRIVE:
                self._arrive(at)
            elif action == ANSWER:
                self._answer(room_id, agent_id)
            elif action == CLOSE:
                self._close(room_id)
            else:
                self._give_up(room_id)
            done += 1

    # -- what visitors and agents do ----------------------------------------------------------------

    def _arrive(self, at: float) -> None:
        with self._lock:
            self._schedule(at + self._gap(), ARRIVE, "", "")  # the next visitor, at Poisson times
            plan = ChatPlan(
                self._random.choice(self.departments),
                self._random.choice(_OPENERS),
                self._random.choice(_ANSWERS),
                self._random.uniform(*self.answer_seconds),
                self._random.uniform(*self.chat_seconds),
            )
        room, _ = self.state.open_chat(department=plan.department, message=plan.opener)
        with self._lock:
            self.plans[room["_id"]] = plan
            self._count("opened")
            self._schedule(at + self.patience_seconds, GIVE_UP, room["_id"], "")
        with self.state.lock:  # taken before the plan was stored: the listener skipped it
            served_by = self.state.rooms[room["_id"]].get("servedBy")
        if served_by:
            self._taken(room["_id"], served_by)

    def _on_event(self, event_type: str, room: Doc) -> None:
        """A state listener (on the sandbox server's thread): only schedules."""
        if event_type == TAKEN and room.get("servedBy"):
            self._taken(room["_id"], room["servedBy"])

    def _taken(self, room_id: str, served_by: Doc) -> None:
        with self._lock:
            plan = self.plans.get(room_id)
            take = (served_by["_id"], served_by.get("ts", ""))
            if plan is None or take in self._takes.get(room_id, ()):
                return
            first = room_id not in self._takes
            self._takes.setdefault(room_id, set()).add(take)
            now = self.clock()
            # Every agent who gets the chat (a forward too) answers it; the conversation ends once.
            self._schedule(now + plan.answer_after, ANSWER, room_id, served_by["_id"])
            if first:
                self._schedule(now + plan.close_after, CLOSE, room_id, "")

    def _answer(self, room_id: str, agent_id: str) -> None:
        state = self.state
        with state.lock:
            room, plan = state.rooms.get(room_id), self.plans.get(room_id)
            if room is None or plan is None or not room.get("open") or room.get("servedBy", {}).get("_id") != agent_id:
                return  # closed or forwarded meanwhile: this agent no longer has it
            agent = state.users[agent_id]
            now = state.now()
            message = {
                "_id": state.new_id(),
                "rid": room_id,
                "msg": plan.answer,
                "ts": now,
                "u": {"_id": agent["_id"], "username": agent["username"], "name": agent.get("name")},
                "_updatedAt": now,
            }
            state.messages.setdefault(room_id, []).append(message)
            room.update(lm=now, msgs=room.get("msgs", 0) + 1, _updatedAt=now)
            body = payloads.message_event(room, state.visitors.get(room["v"]["_id"], room["v"]), agent, message)
        self._count("answered")
        if self.send_message is not None:
            self.send_message(body)

    def _close(self, room_id: str) -> None:
        with self.state.lock:
            room = self.state.rooms.get(room_id, {})
            open_, served = bool(room.get("open")), bool(room.get("servedBy"))
        # The agent closes it; a chat forwarded back to a queue meanwhile is closed by its visitor, who leaves.
        if open_ and self._close_room(room_id, "user" if served else "visitor"):
            self._count("closed")
        self._forget(room_id)

    def _give_up(self, room_id: str) -> None:
        with self.state.lock:
            room = self.state.rooms.get(room_id, {})
            open_, served = bool(room.get("open")), bool(room.get("servedBy"))
        if served:
            return  # an agent has it: the close is scheduled
        if open_ and self._close_room(room_id, "visitor"):
            self._count("abandoned")
        self._forget(room_id)

    def _close_room(self, room_id: str, closer: str) -> bool:
        try:
            self.state.close_room(room_id, closer=closer)
        except ValueError:  # someone closed it between our check and now
            return False
        return True

    # -- helpers ------------------------------------------------------------------------------------

    def _gap(self) -> float:
        return self._random.expovariate(self.rate_per_minute / 60.0) if self.rate_per_minute > 0 else float("inf")

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def _forget(self, room_id: str) -> None:
        """The chat is over: drop what we kept about it (a long run must not grow without bound)."""
        with self._lock:
            self.plans.pop(room_id, None)
            self._takes.pop(room_id, None)

    def _schedule(self, at: float, action: str, room_id: str, agent_id: str) -> None:
        heapq.heappush(self._due, (at, next(self._order), action, room_id, agent_id))
