"""Routing queued chats: from the waiting queue to ``inquiries.take`` for the chosen agent, explained.

A chat enters the waiting queue when Rocket.Chat queues it; ``drain()`` then walks each department's queue in
order. For each chat: claim it (one router per room at a time), choose (``routing.choose``), reserve atomically
(``LoadBook.reserve``), and take the inquiry for that agent. Rocket.Chat's answers decide what happens next:

| Rocket.Chat says | the bridge |
|---|---|
| success | served: the chat leaves the queue; the decision names the agent and every candidate |
| ``error-agent-status-service-offline``, ``error-user-is-offline``, unknown user | releases the reservation, treats the agent as offline until the directory catches up, tries the next |
| ``error-inquiry-taken`` | someone else took it: served, not an error (the ``taken`` webhook counts it) |
| ``error-not-found`` / no inquiry | the chat was closed or abandoned: it leaves the queue |
| no call left in the route's rate limit (``RateLimited``) | nothing was sent: releases, the chat keeps its place, routing wakes when the limit allows |
| 5xx, timeouts (after the client's retries) | keeps the reservation (a timed-out take may have been applied), the chat keeps its place, routing wakes in a moment and resumes it |
| 401, 403 | releases, keeps the chat waiting, records the failure (it says what to fix) and fails the job |

Nobody free is not a failure: the chat keeps its place and is routed when capacity appears.

Nothing here waits for a shared resource. A room is claimed with a lease (``bridge.lease``: renewed while the take is
on its way, however slow Rocket.Chat is; freed within seconds if the worker dies); a room claimed elsewhere is
skipped. Just before ``inquiries.take`` the router records, under its lease (a fenced write that fails if the lease
is no longer its own), that a take is in flight; a later holder that finds that record leaves the room alone until
the call must be over. When a rate limit, a lease or Rocket.Chat is not available now, the chat keeps its place in
the routing queue, a wake-up is written to Redis (``ob:wake``) and the job moves on; every worker's ticker starts
routing again at that time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import redis

from bridge import endpoints, keys
from bridge.bounds import Refusals
from bridge.decisions import DecisionLog
from bridge.directory import AgentDirectory, Listing
from bridge.errors import (
    FetchInProgress,
    PermissionDenied,
    RateLimited,
    RequestRejected,
    RocketChatError,
    RocketChatUnavailable,
)
from bridge.events import ChatQueued
from bridge.lease import Lease, Leases
from bridge.load import LoadBook
from bridge.metrics import Metrics
from bridge.noanswer import AnswerWatch
from bridge.rocketchat import RocketChat
from bridge.routing import Choice, Policy, Request, choose
from bridge.settings import Settings
from bridge.timeline import record_routed
from bridge.waiting import FULL, NO_PRIORITY, WaitingChat, WaitingQueue

log = logging.getLogger("bridge.router")

OFFLINE_ERRORS = frozenset({"error-agent-status-service-offline", "error-user-is-offline", "error-invalid-agent"})
RECHECK_SECONDS = 30
MAX_TAKE_ATTEMPTS = 5
LIST_DENIED_SECONDS = 600  # after a 403 on inquiries.list, use queuedForUser for this long before asking again
DEFERRED = "deferred"
IN_FLIGHT_MARGIN_SECONDS = 5  # the chat keeps its place; routing wakes when the resource is free again


@dataclass(frozen=True, slots=True)
class Reserved:
    """A chat with a slot reserved on an agent, ready to be taken."""

    chat: WaitingChat
    choice: Choice
    agent_id: str
    resumed: bool  # the reservation was ours already: an earlier attempt may have taken it
    attempts: list[dict[str, Any]]
    claim: Lease


class Router:
    def __init__(
        self,
        settings: Settings,
        connection: redis.Redis,
        rocketchat: Callable[[], RocketChat],
        directory: AgentDirectory,
        load: LoadBook,
        clock: Callable[[], float] = time.time,
        answers: AnswerWatch | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.connection = connection
        self.rocketchat = rocketchat
        self.directory = directory
        self.load = load
        self.clock = clock
        self.answers = answers
        self.metrics = metrics
        self.waiting = WaitingQueue(connection, settings.waiting_max_chats)
        self.refusals = Refusals(log)
        self.decisions = DecisionLog.from_settings(connection, settings)
        self.leases = Leases(connection)
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

    # -- entry points ---------------------------------------------------------------------------------

    def served_elsewhere(self, room_id: str, agent_id: str) -> None:
        """A taken/forwarded webhook says who serves the room: it leaves the queue, with a decision saying so
        unless a router holds the room's claim (that router is mid-take and records its own outcome)."""
        chat = self.waiting.remove(room_id)
        if chat is None or self.leases.holder(keys.room_lease(room_id)) is not None:
            return
        ours = chat.reserved_for == agent_id
        detail = f"served by {agent_id} (taken webhook{': our take was applied after it timed out' if ours else ''})"
        self._record(chat, "served", detail, None, None, [], agent_id)

    def enqueue(self, chat: ChatQueued) -> str:
        """Put a queued chat in the routing queue (``bridge.waiting``: added, already waiting, or full); routing it
        is ``drain``'s."""
        return self.admit(
            WaitingChat(
                room_id=chat.room_id,
                department_id=chat.department_id,
                queued_at=epoch(chat.created_at) or self.clock(),
                visitor_id=chat.visitor_id,
            )
        )

    def admit(self, chat: WaitingChat) -> str:
        """``waiting.offer``, saying loudly when ``WAITING_MAX_CHATS`` refuses a chat (logged, counted in
        ``omnibridge_waiting_refused_total``). A real chat refused is added later by the reconciler
        (``recover_queued`` lists Rocket.Chat's queued inquiries every ``INQUIRY_RECONCILE_SECONDS``)."""
        outcome = self.waiting.offer(chat)
        if outcome == FULL:
            if self.metrics is not None:
                self.metrics.inc("omnibridge_waiting_refused")
            self.refusals.note(
                "waiting",
                f"the routing queue is full (WAITING_MAX_CHATS={self.settings.waiting_max_chats}): queued chats not "
                "added; the inquiry reconciler adds the ones Rocket.Chat really has queued once there is room",
                room_id=chat.room_id,
            )
        return outcome

    def drain(self, departments: Iterable[str | None] | None = None) -> str:
        """Route every waiting chat that can be routed now, department by department, in queue order.

        Never waits: when the load book is being rebuilt elsewhere, the directory is being fetched elsewhere, a
        route's rate limit has no call left or Rocket.Chat does not answer, the chats keep their places, a wake-up
        is set for when that may have changed, and this returns."""
        if not self.settings.rocketchat_url:
            return f"Rocket.Chat is not configured (ROCKETCHAT_URL): {self.waiting.count()} waiting"
        routed = 0
        try:
            self.ensure_load_known()
            self.rocketchat()  # made here, once, not by the first of several take threads
            listing: list[Listing] = []  # fetched once per drain, on first need
            for department in list(departments) if departments is not None else self.waiting.departments():
                routed += self._drain_department(department, listing).count("routed")
        except RocketChatUnavailable as error:
            self.defer(error.retry_after)
            return f"routed {routed}, {self.waiting.count()} waiting; paused {error.retry_after:.1f} s: {error}"
        return f"routed {routed}, {self.waiting.count()} waiting"

    def defer(self, seconds: float) -> None:
        """Ask every worker's ticker to route again in ``seconds`` (the earliest of all such asks wins)."""
        self.connection.zadd(keys.wake(), {"routing": self.clock() + max(0.05, seconds)}, lt=True)

    def _drain_department(self, department: str | None, listing: list[Listing]) -> list[str]:
        """Choose and reserve in queue order, here; take in up to ``routing_concurrency`` threads.

        Reserving in order keeps the queue's order where capacity is short (the first chat gets the last free
        slot); the takes, each a Rocket.Chat round trip, overlap. The inquiries of the chats that lack one are
        looked up first, with one ``inquiries.list`` call for all of them. A take deferred by the route's rate limit
        stops the walk: the chats behind it would meet the same limit. The first permanent failure is raised once
        every take started has finished, so a retried job finds no take of ours still in flight.
        """
        outcomes: list[str] = []
        running: list[Future[str]] = []
        in_flight: list[Future[str]] = []
        room_ids = self.waiting.room_ids(department)
        self._look_up_inquiries(department, room_ids)
        probe_due: bool | None = True  # None once the take route is known unlimited: not asked again this drain
        try:
            for room_id in room_ids:
                if any(f.done() and not f.exception() and f.result() == DEFERRED for f in running):
                    break
                claim = self._claim(room_id)
                if claim is None:
                    continue
                try:
                    step = self._reserve_step(room_id, listing, None, [], claim)
                    if isinstance(step, str):
                        step = self._recheck(room_id, step, claim)
                except BaseException:
                    self._release_claim(claim)
                    raise
                if isinstance(step, str):
                    self._release_claim(claim)
                    outcomes.append(step)
                    if step == "no-capacity":
                        break  # the chats behind it in this department have the same candidates
                    continue
                if probe_due is not None:
                    probe_due = self._take_needs_probe()
                probe = bool(probe_due)
                if probe:
                    wait(in_flight)  # our own takes: the probe goes alone, so the others are not refused meanwhile
                future = self._pool().submit(self._complete, step, listing)
                running.append(future)
                in_flight = [f for f in in_flight if not f.done()] + [future]
                if probe or len(in_flight) >= self.settings.routing_concurrency:
                    wait(in_flight, return_when=FIRST_COMPLETED)
        finally:
            failure = None
            for future in running:
                try:
                    outcomes.append(future.result())
                except Exception as error:  # noqa: PERF203 - each take's own failure
                    failure = failure or error
        if failure is not None:
            raise failure
        return outcomes

    def _take_needs_probe(self) -> bool | None:
        """Is nothing known of ``inquiries.take``'s rate limit now (first take, or a window that ended)? Then one
        take goes first and the answer says how many may follow (``bridge.ratelimits``). None: unlimited."""
        limits = self.rocketchat().limits
        return None if limits is None else limits.needs_probe(f"POST {endpoints.TAKE}")

    def _look_up_inquiries(self, department: str | None, room_ids: list[str]) -> None:
        """Give the waiting chats that lack an inquiry id theirs, with one ``inquiries.list`` call for all of them
        (``queuedForUser`` where the account lacks view-livechat-manager). A chat the page does not hold is looked up
        alone (``getOne``) when it is taken. A rate-limited or failing list only means those lookups happen alone."""
        wanted = {
            chat.room_id: chat
            for chat in self.waiting.get_many(room_ids)
            if chat is not None and chat.inquiry_id is None
        }
        if not wanted:
            return
        try:
            found = self._queued_inquiries(department, set(wanted))
        except RocketChatUnavailable as error:
            log.debug("inquiry lookup for %d chats deferred to getOne: %s", len(wanted), error)
            return
        for room_id, inquiry in found.items():
            chat = wanted[room_id]
            weight = inquiry.get("priorityWeight")
            priority = weight if isinstance(weight, int) and not isinstance(weight, bool) else chat.priority
            self.waiting.update(replace(chat, inquiry_id=inquiry["_id"], priority=priority))

    def _queued_inquiries(self, department: str | None, rooms: set[str]) -> dict[str, dict[str, Any]]:
        rc = self.rocketchat()
        if not self.connection.exists(keys.cached("inquiries-list-denied")):
            try:
                return endpoints.queued_inquiries_of_rooms(rc, rooms, department)
            except PermissionDenied:
                self.connection.set(keys.cached("inquiries-list-denied"), "1", ex=LIST_DENIED_SECONDS)
                log.info("inquiries.list is not permitted (view-livechat-manager): using inquiries.queuedForUser")
        return endpoints.queued_inquiries_of_rooms(rc, rooms, department, for_user=True)

    # -- one chat -------------------------------------------------------------------------------------

    def _claim(self, room_id: str) -> Lease | None:
        """One router per room at a time (a lease); a router that finds the room claimed asks its holder to look
        again. A take that an earlier holder may still have on its way (its lease lapsed) keeps the room off limits
        until that call must be over."""
        claim = self.leases.acquire(keys.room_lease(room_id))
        if claim is None:
            self.connection.set(keys.recheck(room_id), "1", ex=RECHECK_SECONDS)
            return None
        if self.connection.exists(keys.take_in_flight(room_id)):
            log.warning("room %s: an earlier take may still be on its way; leaving it for now", room_id)
            self.leases.release(claim)
            self.defer(1.0)
            return None
        return claim

    def _release_claim(self, claim: Lease) -> None:
        self.leases.release(claim)

    def _complete(self, step: Reserved, listing: list[Listing]) -> str:
        try:
            return self._recheck(step.chat.room_id, self._take_step(step, listing), step.claim)
        finally:
            self._release_claim(step.claim)

    def _recheck(self, room_id: str, outcome: str, claim: Lease) -> str:
        """Capacity may have appeared while we held the claim and another router skipped this room: look again."""
        while outcome in ("no-capacity", "waiting") and self.connection.getdel(keys.recheck(room_id)):
            outcome = self._route(room_id, [], claim)
        return outcome

    def _route(self, room_id: str, listing: list[Listing], claim: Lease) -> str:
        step = self._reserve_step(room_id, listing, None, [], claim)
        return step if isinstance(step, str) else self._take_step(step, listing)

    def _reserve_step(
        self,
        room_id: str,
        listing: list[Listing],
        chat: WaitingChat | None,
        attempts: list[dict[str, Any]],
        claim: Lease,
    ) -> Reserved | str:
        """Choose an agent for the chat and reserve a slot atomically; an outcome when there is nothing to take."""
        chat = chat or self.waiting.get(room_id)
        if chat is None:
            return "gone"
        if not listing:
            listing.append(self.directory.agents())
        choice = choose(
            listing[0].agents,
            self.load.counts(),
            self.load.last_assigned(),
            self._request(chat, listing[0]),
            self.policy(chat.department_id),
            self.clock(),
        )
        reservation = self.load.reserve(room_id, [(c.id, c.capacity) for c in choice.ranked])
        self._count_reservation(reservation.outcome)
        if reservation.outcome == "closed":
            return self._leave(chat, "closed", "the room was closed", choice, listing[0], attempts)
        if reservation.outcome == "already" and reservation.agent_id != chat.reserved_for:
            return self._leave(
                chat,
                "served",
                f"served by {reservation.agent_id} (taken webhook)",
                choice,
                listing[0],
                attempts,
                agent_id=reservation.agent_id,
            )
        if reservation.outcome == "full":
            return self._wait(chat, choice, listing[0], attempts)
        agent_id = reservation.agent_id or ""
        chat = replace(chat, reserved_for=agent_id, attempts=chat.attempts + 1)
        self.waiting.update(chat)
        return Reserved(chat, choice, agent_id, reservation.outcome == "already", attempts, claim)

    def _take_step(self, step: Reserved, listing: list[Listing]) -> str:
        """Take the reserved chat for its agent; on a refusal, reserve the next agent and try again (a few times)."""
        rc = self.rocketchat()
        while True:
            chat, choice, agent_id, attempts = step.chat, step.choice, step.agent_id, step.attempts
            if chat.inquiry_id is None:
                try:
                    found = self._find_inquiry(rc, chat)
                except RocketChatUnavailable as error:
                    self._release(step)
                    self.defer(error.retry_after)
                    return DEFERRED
                if isinstance(found, str):
                    self.load.release(chat.room_id, agent_id)
                    self._count_reservation("released")
                    return found
                chat = found
            result = self._take(rc, chat, agent_id, step)
            if result == DEFERRED:
                return DEFERRED
            if result == "no-answer":
                # No answer. If a taken (or closed) webhook was applied meanwhile, the truth is known already.
                if self.waiting.get(chat.room_id) is not None:
                    return DEFERRED
                served = self.load.agent_of(chat.room_id)
                outcome, detail = ("served", f"served by {served} (taken webhook)") if served else ("gone", "closed")
                return self._leave(chat, outcome, detail, choice, listing[0], attempts, agent_id=served)
            attempts.append({"agent_id": agent_id, "result": result})
            if result == "taken":
                self._remember_visitor(chat, agent_id)
                if self.answers is not None:
                    self.answers.start(chat.room_id, agent_id, chat.department_id)
                return self._leave(
                    chat, "routed", "inquiry taken for the agent", choice, listing[0], attempts, agent_id=agent_id
                )
            if result == "inquiry-taken":
                return self._leave(
                    chat, "served", "Rocket.Chat says the inquiry was already taken", choice, listing[0], attempts
                )
            if result == "not-found":
                return self._leave(chat, "gone", "the inquiry no longer exists", choice, listing[0], attempts)
            chat = replace(chat, reserved_for=None)
            if result != "offline":
                chat = replace(chat, excluded=(*chat.excluded, agent_id))
            self.waiting.update(chat)
            if len(attempts) >= MAX_TAKE_ATTEMPTS:
                return self._wait(chat, choice, listing[0], attempts)
            following = self._reserve_step(chat.room_id, listing, chat, attempts, step.claim)
            if isinstance(following, str):
                return following
            step = following

    def _release(self, step: Reserved) -> None:
        """Nothing was sent for this reservation: give the slot back, unless an earlier attempt may have used it."""
        if step.resumed:
            return
        self.load.release(step.chat.room_id, step.agent_id)
        self._count_reservation("released")
        self.waiting.update(replace(step.chat, reserved_for=None))

    def _pool(self) -> ThreadPoolExecutor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.settings.routing_concurrency, thread_name_prefix="take")
            return self._executor

    def _find_inquiry(self, rc: RocketChat, chat: WaitingChat) -> WaitingChat | str:
        inquiry = endpoints.inquiry_for_room(rc, chat.room_id)
        if inquiry is None or not isinstance(inquiry.get("_id"), str):
            return self._leave(chat, "gone", "Rocket.Chat has no inquiry for the room", None, None, [])
        if inquiry.get("status") == "taken":
            return self._leave(chat, "served", "the inquiry was already taken", None, None, [])
        weight = inquiry.get("priorityWeight")
        priority = weight if isinstance(weight, int) and not isinstance(weight, bool) else NO_PRIORITY
        chat = replace(chat, inquiry_id=inquiry["_id"], priority=priority)
        self.waiting.update(chat)
        return chat

    def _take(self, rc: RocketChat, chat: WaitingChat, agent_id: str, step: Reserved) -> str:
        """Take the inquiry for the agent: taken | inquiry-taken | not-found | offline | refused | no-answer | deferred.

        The take is sent only while the room's lease is still ours (``sending``)."""
        room_id = chat.room_id
        with self.sending(step.claim, room_id, agent_id) as sent:
            if not sent:
                log.warning("room %s: lease lost before the take; not sent", room_id, extra={"room_id": room_id})
                self.defer(1.0)
                return DEFERRED
            try:
                endpoints.take_inquiry(rc, chat.inquiry_id or "", agent_id)
                return "taken"
            except RateLimited as error:
                self._release(step)  # nothing was sent (or Rocket.Chat refused it with 429): nothing was applied
                self.defer(error.retry_after)
                return DEFERRED
            except RequestRejected as error:
                code = error.error_type or ""
                if code == "error-inquiry-taken":
                    if not step.resumed:  # ours only if an interrupted attempt of ours took it; else someone else did
                        self.load.release(room_id, agent_id)
                        self._count_reservation("released")
                    return "inquiry-taken"
                self.load.release(room_id, agent_id)
                self._count_reservation("released")
                if code == "error-not-found":
                    return "not-found"
                if code in OFFLINE_ERRORS or "user is invalid" in str(error).lower():
                    self.mark_unavailable(agent_id)
                    return "offline"
                log.warning("take refused for %s: %s", room_id, error, extra={"room_id": room_id})
                return "refused"
            except RocketChatUnavailable as error:
                # No answer is not a "no": Rocket.Chat may have applied the take. The reservation and reserved_for stay,
                # so the next attempt resumes with the same agent and learns the truth (taken, or take it now).
                self._record(
                    chat, "retrying later", str(error), None, None, [{"agent_id": agent_id, "result": "error"}]
                )
                self.defer(error.retry_after)
                return "no-answer"
            except RocketChatError as error:
                self.load.release(room_id, agent_id)
                self._count_reservation("released")
                self.waiting.update(replace(chat, reserved_for=None))
                self._record(chat, "failed", str(error), None, None, [{"agent_id": agent_id, "result": "error"}])
                raise

    @contextlib.contextmanager
    def sending(self, claim: Lease, room_id: str, value: str) -> Iterator[bool]:
        """Record a take or forward of ``room_id`` as in flight, under ``claim``: a fenced write, in the same step
        that checks the lease is still ours (False, and nothing may be sent, when it is not). The record goes once
        Rocket.Chat has answered, or expires after the longest call; a later holder leaves the room alone meanwhile."""
        in_flight = keys.take_in_flight(room_id)
        ttl = self.rocketchat().max_call_seconds + IN_FLIGHT_MARGIN_SECONDS
        if not self.leases.fenced_set(claim, in_flight, value, ttl):
            yield False
            return
        try:
            yield True
        finally:
            self.connection.delete(in_flight)

    # -- bookkeeping ----------------------------------------------------------------------------------

    def policy(self, department_id: str | None) -> Policy:
        return Policy(
            strategy=self.settings.strategy_for(department_id),
            default_max_chats=self.settings.default_max_chats,
            accept_idle=self.settings.accept_idle_agents,
            previous_agent_window=float(self.settings.previous_agent_window_seconds),
        )

    def _count_reservation(self, result: str) -> None:
        if self.metrics is not None and result in ("reserved", "full", "released"):
            self.metrics.inc("omnibridge_reservations", result=result)

    def ensure_load_known(self) -> None:
        """Before routing on a load book Redis may have lost (first start, a restart without persistence), rebuild
        it from Rocket.Chat's open rooms once; until then, routing on empty counts could overfill agents. One
        process rebuilds (the lease ``load-rebuild``); the others do not wait for it: they defer their routing."""
        if self.connection.exists(keys.load_known()):
            return
        with self.leases.holding("load-rebuild") as lease:
            if lease is None:
                raise FetchInProgress("the load book is being rebuilt from Rocket.Chat by another worker", route="load")
            if not self.connection.exists(keys.load_known()):
                from bridge.reconcile import reconcile_load

                log.info("no load book in Redis (first start, or Redis lost its data): rebuilding it from Rocket.Chat")
                log.info(reconcile_load(self.rocketchat(), self.load))
                self.connection.set(keys.load_known(), "1")

    def mark_unavailable(self, agent_id: str) -> None:
        """Rocket.Chat says the agent cannot take work: skip them until the directory has caught up."""
        self.connection.set(keys.unavailable_agent(agent_id), "1", ex=max(1, int(self.settings.directory_ttl_seconds)))

    def unavailable(self, listing: Listing) -> frozenset[str]:
        ids = [agent.id for agent in listing.agents]
        flags = self.connection.mget([keys.unavailable_agent(i) for i in ids]) if ids else []
        return frozenset(i for i, flag in zip(ids, flags, strict=True) if flag)

    def _request(self, chat: WaitingChat, listing: Listing) -> Request:
        previous_id, previous_at = None, None
        if chat.visitor_id:
            raw = self.connection.hgetall(keys.visitor_agent(chat.visitor_id))
            if raw:
                previous_id, previous_at = raw[b"agent"].decode(), float(raw[b"at"])
        return Request(
            department_id=chat.department_id,
            excluded=frozenset(chat.excluded),
            unavailable=self.unavailable(listing),
            previous_agent_id=previous_id,
            previous_at=previous_at,
        )

    def _remember_visitor(self, chat: WaitingChat, agent_id: str) -> None:
        if chat.visitor_id:
            key = keys.visitor_agent(chat.visitor_id)
            self.connection.hset(key, mapping={"agent": agent_id, "at": self.clock()})
            self.connection.expire(key, max(60, self.settings.previous_agent_window_seconds))

    def _wait(self, chat: WaitingChat, choice: Choice, listing: Listing, attempts: list[dict[str, Any]]) -> str:
        if chat.last_outcome != "waiting" or attempts:
            self._record(chat, "waiting", "no agent can take the chat now", choice, listing, attempts)
            self.waiting.update(replace(chat, last_outcome="waiting"))
        return "waiting" if chat.excluded else "no-capacity"

    def _leave(
        self,
        chat: WaitingChat,
        outcome: str,
        detail: str,
        choice: Choice | None,
        listing: Listing | None,
        attempts: list[dict[str, Any]],
        agent_id: str | None = None,
    ) -> str:
        self.waiting.remove(chat.room_id)
        self._record(chat, outcome, detail, choice, listing, attempts, agent_id)
        log.info(
            "chat %s: %s", outcome, detail, extra={"room_id": chat.room_id, "agent_id": agent_id, "outcome": outcome}
        )
        return outcome

    def _record(
        self,
        chat: WaitingChat,
        outcome: str,
        detail: str,
        choice: Choice | None,
        listing: Listing | None,
        attempts: list[dict[str, Any]],
        agent_id: str | None = None,
    ) -> None:
        decision: dict[str, Any] = {
            "kind": "chat",
            "outcome": outcome,
            "detail": detail,
            "department_id": chat.department_id,
            "agent_id": agent_id,
            "waited_seconds": round(max(0.0, self.clock() - chat.queued_at), 3),
            "attempts": attempts,
        }
        if choice is not None:
            decision["strategy"] = choice.strategy
            decision["candidates"] = [c.to_dict() for c in choice.candidates]
            names = {c.id: c.username for c in choice.candidates}
            decision["agent_username"] = names.get(agent_id or "")
        if listing is not None:
            decision["directory"] = {"source": listing.source, "stale": listing.stale, "age": round(listing.age, 1)}
        self.decisions.record("chat", chat.room_id, decision)
        if outcome == "routed":
            record_routed(self.connection, decision["waited_seconds"], self.clock())
        if self.metrics is not None:
            self.metrics.inc("omnibridge_routing_decisions", kind="chat", outcome=outcome)
            if outcome == "routed":
                self.metrics.observe("omnibridge_routing_wait_seconds", decision["waited_seconds"])


def epoch(value: object) -> float | None:
    """An ISO-8601 timestamp as Rocket.Chat sends it -> epoch seconds (None if absent or unreadable)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
