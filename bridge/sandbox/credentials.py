"""Auth tokens, personal access tokens and passwords, kept apart from the user documents.

Rocket.Chat stores them under `users.services` and never returns that; keeping them out of the
documents means no sandbox endpoint can leak them either.
"""

import hashlib
import threading
from collections.abc import Callable
from typing import Any


class Credentials:
    def __init__(self, new_token: Callable[[], str]) -> None:
        self._new_token = new_token
        self._tokens: dict[str, str] = {}  # login token or PAT -> user id
        self._passwords: dict[str, str] = {}  # user id -> password
        self._lock = threading.Lock()

    def add_token(self, user_id: str, token: str | None = None) -> str:
        """Register a PAT as given, or issue a login token; both are sent as X-Auth-Token."""
        token = token or self._new_token()
        with self._lock:
            self._tokens[token] = user_id
        return token

    def owner_of(self, token: str) -> str | None:
        with self._lock:
            return self._tokens.get(token)

    def set_password(self, user_id: str, password: str) -> None:
        with self._lock:
            self._passwords[user_id] = password

    def password_matches(self, user_id: str, password: str | dict[str, Any]) -> bool:
        with self._lock:
            stored = self._passwords.get(user_id)
        if stored is None:
            return False
        if isinstance(password, dict):  # the {digest, algorithm: 'sha-256'} form of login
            return password.get("digest") == hashlib.sha256(stored.encode()).hexdigest()
        return password == stored
