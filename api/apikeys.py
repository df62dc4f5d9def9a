"""API keys: the token format, the key records in the object store, and their limits.

A token is ``vdb_<key-id>_<secret>`` (16 + 64 hex digits). Only the SHA-256 of the secret
is stored, in ``.sys/keys/<key-id>.json`` of the service's own store, so every stateless
worker can check a key and nobody who can read the store can use one. (A plain hash
suffices: the secret is 256 random bits, not a password to stretch.) ``.sys`` can never
be a namespace (names start with a letter or digit), so namespace listings skip it.

Revoking a key rewrites its record with ``revoked_at``; the record stays, so a store
that ever had keys keeps requiring them (see :mod:`api.auth`).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass, field, replace

from storage.base import ObjectStore
from storage.errors import ObjectNotFound
from vectordb.catalog import get_fresh
from vectordb.errors import InvalidArgument, NotFound

KEYS_PREFIX = ".sys/keys/"
RIGHTS: tuple[str, ...] = ("read", "write", "admin")  # each includes the ones before it
_TOKEN = re.compile(r"vdb_([0-9a-f]{16})_([0-9a-f]{64})")
_KEY_ID = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class Limits:
    """What one credential may spend. None = no limit.

    ``rate_per_s``/``burst``: a token bucket of requests, per worker process (burst
    defaults to ``max(1, rate_per_s)``); ``max_namespaces``: most namespaces within the
    key's prefixes when it creates another; ``max_rows``: most documents (or ids) in one
    write request; ``max_bytes``: largest request body.
    """

    rate_per_s: float | None = None
    burst: int | None = None
    max_namespaces: int | None = None
    max_rows: int | None = None
    max_bytes: int | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_json(cls, data: dict | None) -> Limits:
        """Raises InvalidArgument for an unknown name or a value that is not a positive number."""
        data = data or {}
        if not isinstance(data, dict):
            raise InvalidArgument("limits must be an object")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidArgument(f"unknown limits: {sorted(unknown)}")
        for name, value in data.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise InvalidArgument(f"limit {name} must be a positive number, not {value!r}")
        return cls(**data)


def normalize_prefixes(prefixes) -> tuple[str, ...]:
    """``"*"`` (or ``""``) means every namespace, kept as ``""``. Raises InvalidArgument on
    anything that could not begin a namespace name."""
    from vectordb.namespace import check_namespace_name

    out = []
    for p in prefixes:
        if not isinstance(p, str):
            raise InvalidArgument(f"a prefix is a string, not {p!r}")
        p = "" if p == "*" else p
        if p:
            try:
                check_namespace_name(p)
            except InvalidArgument:
                raise InvalidArgument(
                    f"invalid prefix {p!r}: use the start of a namespace name, or '*' for every namespace"
                ) from None
        out.append(p)
    if not out:
        raise InvalidArgument("a key needs at least one prefix ('*' for every namespace)")
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class KeyRecord:
    """One key as stored (never its secret)."""

    id: str
    rights: str
    prefixes: tuple[str, ...]
    secret_sha256: str
    name: str = ""
    limits: Limits = field(default_factory=Limits)
    created_at: float = 0.0
    revoked_at: float | None = None

    def to_json(self, with_hash: bool = True) -> dict:
        out = {
            "id": self.id,
            "name": self.name,
            "rights": self.rights,
            "prefixes": ["*" if p == "" else p for p in self.prefixes],
            "limits": self.limits.to_json(),
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }
        if with_hash:
            out["secret_sha256"] = self.secret_sha256
        return out

    @classmethod
    def from_json(cls, data: dict) -> KeyRecord:
        return cls(
            id=data["id"],
            rights=data["rights"],
            prefixes=normalize_prefixes(data["prefixes"]),
            secret_sha256=data["secret_sha256"],
            name=data.get("name", ""),
            limits=Limits.from_json(data.get("limits")),
            created_at=data.get("created_at", 0.0),
            revoked_at=data.get("revoked_at"),
        )


def parse_token(token: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of an API key token, or None if it is not shaped like one."""
    m = _TOKEN.fullmatch(token)
    return (m.group(1), m.group(2)) if m else None


def record_key(key_id: str) -> str:
    return f"{KEYS_PREFIX}{key_id}.json"


class KeyStore:
    """Key records in ``store``. Reads bypass any read cache: records change (revocation)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def create(self, rights: str, prefixes, name: str = "", limits: Limits | None = None) -> tuple[KeyRecord, str]:
        """A new key; returns its record and the token (shown once, never stored)."""
        if rights not in RIGHTS:
            raise InvalidArgument(f"rights must be one of {', '.join(RIGHTS)}, not {rights!r}")
        limits = limits or Limits()
        Limits.from_json(limits.to_json())  # validate
        key_id, secret = secrets.token_hex(8), secrets.token_hex(32)
        record = KeyRecord(
            id=key_id,
            rights=rights,
            prefixes=normalize_prefixes(prefixes),
            secret_sha256=hashlib.sha256(secret.encode()).hexdigest(),
            name=name,
            limits=limits,
            created_at=round(time.time(), 3),
        )
        self.store.put_if_absent(record_key(key_id), _encode(record))
        return record, f"vdb_{key_id}_{secret}"

    def get(self, key_id: str) -> KeyRecord | None:
        """The record, or None if there is none (or ``key_id`` is not shaped like an id)."""
        if not _KEY_ID.fullmatch(key_id):
            return None
        try:
            return KeyRecord.from_json(json.loads(get_fresh(self.store, record_key(key_id))))
        except ObjectNotFound:
            return None

    def list(self) -> list[KeyRecord]:
        """Every record, revoked ones included, oldest first."""
        out = []
        for info in self.store.list(KEYS_PREFIX):
            record = self.get(info.key[len(KEYS_PREFIX) :].removesuffix(".json"))
            if record is not None:
                out.append(record)
        return sorted(out, key=lambda r: (r.created_at, r.id))

    def revoke(self, key_id: str) -> KeyRecord:
        """Mark the key revoked (idempotent). Raises NotFound."""
        record = self.get(key_id)
        if record is None:
            raise NotFound(f"no API key {key_id!r}")
        if record.revoked_at is None:
            record = replace(record, revoked_at=round(time.time(), 3))
            self.store.put(record_key(key_id), _encode(record))
        return record

    def any(self) -> bool:
        """Whether any key record (revoked or not) exists: one LIST of at most a page."""
        return next(iter(self.store.list(KEYS_PREFIX)), None) is not None


def _encode(record: KeyRecord) -> bytes:
    return json.dumps(record.to_json(), indent=1).encode()
