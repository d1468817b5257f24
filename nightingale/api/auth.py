"""API keys with scopes: `forecast` (next events, forecasts), `generate` (cohorts), `admin` (all).

Keys come from a key file (JSON or YAML) holding only SHA-256 hashes, so the file is not a secret:
    keys:
      - {id: planner, sha256: <hex of sha256(key)>, scopes: [forecast]}
and/or an environment variable (plain keys, hashed on load; handy for tests and containers):
    NIGHTINGALE_API_KEYS="planner:secret1:forecast,ops:secret2:admin+generate"
A request presents its key as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Keys are
compared by hash in constant time. The key id (never the key) is what the audit log records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
from pathlib import Path

import yaml

SCOPES = ("forecast", "generate", "admin")


class AuthError(Exception):
    """401: no key or an unknown key."""


class ScopeError(Exception):
    """403: a known key without the scope the endpoint needs."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class ApiKey:
    id: str
    sha256: str
    scopes: frozenset[str]


def _check(entry: ApiKey) -> ApiKey:
    bad = sorted(entry.scopes - set(SCOPES))
    if bad:
        raise ValueError(f"api key {entry.id!r}: unknown scope(s) {bad}; allowed {SCOPES}")
    if len(entry.sha256) != 64:
        raise ValueError(f"api key {entry.id!r}: sha256 must be 64 hex digits")
    return entry


def load_keys(key_file: str | None = None, env_var: str | None = "NIGHTINGALE_API_KEYS") -> list[ApiKey]:
    """Keys from the file and the environment variable (either may be absent)."""
    keys: list[ApiKey] = []
    if key_file:
        path = Path(key_file)
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        for e in (data or {}).get("keys", []):
            keys.append(_check(ApiKey(str(e["id"]), str(e["sha256"]).lower(), frozenset(e.get("scopes", [])))))
    raw = os.environ.get(env_var, "") if env_var else ""
    for item in filter(None, (s.strip() for s in raw.split(","))):
        parts = item.split(":")
        if len(parts) != 3:
            raise ValueError(f"{env_var}: entries are id:key:scope+scope, got one with {len(parts)} parts")
        kid, key, scopes = parts
        keys.append(_check(ApiKey(kid, hash_key(key), frozenset(filter(None, scopes.split("+"))))))
    ids = [k.id for k in keys]
    if len(set(ids)) != len(ids):
        raise ValueError(f"api keys: duplicate key ids {sorted({i for i in ids if ids.count(i) > 1})}")
    return keys


class KeyStore:
    def __init__(self, keys: list[ApiKey]):
        self.keys = list(keys)

    def authenticate(self, presented: str | None) -> ApiKey:
        if not presented:
            raise AuthError("missing API key (Authorization: Bearer <key> or X-API-Key)")
        h = hash_key(presented)
        found = None
        for k in self.keys:  # no early exit: constant time in the position of the match
            if hmac.compare_digest(k.sha256, h):
                found = k
        if found is None:
            raise AuthError("unknown API key")
        return found

    @staticmethod
    def authorise(key: ApiKey, scope: str) -> None:
        if scope not in key.scopes and "admin" not in key.scopes:
            raise ScopeError(f"API key {key.id!r} lacks the {scope!r} scope")


def presented_key(headers) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return headers.get("x-api-key") or None
