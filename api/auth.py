"""Who is calling: the :class:`Principal` of a request, and the :class:`Authenticator` that
turns an ``Authorization: Bearer`` header into one.

A credential is an API key (``vdb_<key-id>_<secret>``, records in the object store, see
:mod:`api.apikeys`) or, where configured, a JWT whose ``vdb`` claim carries the same
scopes (:mod:`api.jwt_auth`). Either grants one of three nested rights over the
namespaces whose names start with one of its prefixes:

    read   describe, list, get documents, query, rag, warm, read jobs
    write  read + upsert, delete documents, upload files, index, cancel jobs
    admin  write + create and drop namespaces

Whether credentials are needed at all (``VECTORDB_AUTH``): ``keys`` always; ``off``
never; ``auto`` (the default) once a key record exists in the store or a JWT key is
configured. ``auto`` checks the store at most every ``auth_cache_s`` seconds and, once
it has seen a key, stays on for the life of the process: revoking every key closes the
server (every request 401), it never reopens it.

Every worker looks key records up in the store and keeps what it read (found or not)
for ``auth_cache_s`` seconds, so a revocation takes effect everywhere within that time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import hmac
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from starlette.concurrency import run_in_threadpool

from api.apikeys import KeyRecord, KeyStore, Limits, parse_token
from vectordb.errors import Unauthenticated
from vectordb.settings import Settings

Right = Literal["none", "read", "write", "admin"]
_RANK = {"none": 0, "read": 1, "write": 2, "admin": 3}

# Key look-ups kept per worker (found or not); beyond this the oldest go first.
_CACHE_ENTRIES = 10_000


@dataclass(frozen=True)
class Principal:
    """The caller of one request (``request.state.principal``).

    ``key_id`` is None when no credential was checked: the server runs open
    (``source="open"``, every right everywhere) or the route is public
    (``source="public"``, no rights). JWT callers get ``key_id="jwt:<sub>"``.
    """

    key_id: str | None
    rights: Right = "none"
    prefixes: tuple[str, ...] = ()  # namespace-name prefixes; "" = every namespace
    limits: Limits = field(default_factory=Limits)
    name: str = ""
    source: Literal["open", "public", "key", "jwt"] = "public"

    def sees(self, ns: str) -> bool:
        """Whether ``ns`` is inside this principal's scope (it may know it exists)."""
        return self.rights != "none" and any(ns.startswith(p) for p in self.prefixes)

    def may(self, right: str) -> bool:
        return _RANK[self.rights] >= _RANK[right]

    @property
    def everywhere(self) -> bool:
        """Whether the scope is every namespace (operator endpoints ask for it)."""
        return "" in self.prefixes


OPEN = Principal(key_id=None, rights="admin", prefixes=("",), source="open")
PUBLIC = Principal(key_id=None)


def principal_of_record(record: KeyRecord) -> Principal:
    return Principal(record.id, record.rights, record.prefixes, record.limits, record.name, "key")


class Authenticator:
    """Bearer token → :class:`Principal`, with per-worker caching of key records.

    Runs on the event loop: store reads go to the thread pool and only happen on a
    cache miss. Raises :class:`Unauthenticated` (401) for a missing, malformed, unknown,
    revoked or wrong credential, :class:`PermissionDenied` for a JWT without rights.
    """

    def __init__(self, settings: Settings, keys: KeyStore, clock=time.monotonic) -> None:
        from api.jwt_auth import JwtVerifier

        self.mode = settings.auth
        self.ttl_s = settings.auth_cache_s
        self.keys = keys
        self.jwt = JwtVerifier.from_settings(settings)  # None unless a JWT key is configured
        self._clock = clock
        self._records: dict[str, tuple[KeyRecord | None, float]] = {}
        self._on = self.mode == "keys" or (self.mode == "auto" and self.jwt is not None)
        self._checked_until = 0.0
        self._pending: concurrent.futures.Future | None = None

    def start(self) -> None:
        """Under ``auto``, ask the store whether keys exist in the background now, so that a
        fresh worker's first request does not wait for that LIST (cold starts)."""
        if self.mode != "auto" or self._on:
            return
        future: concurrent.futures.Future = concurrent.futures.Future()
        started = self._clock()

        def look() -> None:
            try:
                future.set_result((self.keys.any(), started))
            except BaseException as exc:  # handed to the request that waits for it
                future.set_exception(exc)

        self._pending = future
        threading.Thread(target=look, name="auth-keys-exist", daemon=True).start()

    async def required(self, authorization: str | None = None) -> bool:
        """Whether requests need a credential now (see the module docstring). A request
        that carries an API key whose record exists answers it without a LIST."""
        if self._on or self.mode == "off":
            return self._on
        parsed = parse_token(_token_of(authorization)) if authorization else None
        if parsed is not None and await self._record(parsed[0]) is not None:
            self._on = True  # a key exists
            return True
        # A store error propagates (503): failing open would be worse than failing.
        if self._pending is not None:
            pending = self._pending
            try:
                exists, at = await asyncio.wrap_future(pending)
            finally:
                if self._pending is pending:
                    self._pending = None
            self._on, self._checked_until = self._on or exists, at + self.ttl_s
        elif self._clock() >= self._checked_until:
            at = self._clock()
            self._on = await run_in_threadpool(self.keys.any)
            self._checked_until = at + self.ttl_s
        return self._on

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthenticated("this server needs a credential: send 'Authorization: Bearer <API key>'")
        token = _token_of(authorization)
        if not token:
            raise Unauthenticated("send the credential as 'Authorization: Bearer <API key>'")
        parsed = parse_token(token)
        if parsed is None:
            if self.jwt is not None:
                return self.jwt.verify(token)
            raise Unauthenticated("malformed API key (expected vdb_<id>_<secret>)")
        key_id, secret = parsed
        record = await self._record(key_id)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        # One message for unknown, revoked and wrong: none of them tells a guesser anything.
        if record is None or record.revoked_at is not None or not hmac.compare_digest(digest, record.secret_sha256):
            raise Unauthenticated("invalid or revoked API key")
        return principal_of_record(record)

    async def _record(self, key_id: str) -> KeyRecord | None:
        now = self._clock()
        cached = self._records.get(key_id)
        if cached is not None and now < cached[1]:
            return cached[0]
        record = await run_in_threadpool(self.keys.get, key_id)
        if len(self._records) >= _CACHE_ENTRIES:
            self._records = {k: v for k, v in self._records.items() if v[1] > now}
            while len(self._records) >= _CACHE_ENTRIES:
                self._records.pop(next(iter(self._records)))
        self._records[key_id] = (record, now + self.ttl_s)
        return record


def _token_of(authorization: str) -> str:
    """The token of ``Bearer <token>``; '' for any other scheme."""
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
