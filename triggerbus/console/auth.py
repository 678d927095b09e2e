"""Console sessions: log in with the API token, get an HMAC-signed session cookie, never the token.

The cookie value is ``<nonce>.<expires>.<signature>`` where the signature is an HMAC of the
nonce and expiry under a key derived from the API token: processes sharing the token accept
each other's sessions, and changing the token ends every session. The CSRF token of a session
is another HMAC of its nonce, so a form can only be posted by a page rendered for that session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

COOKIE = "tb_console"
SESSION_TTL_S = 12 * 3600
MAX_REVOKED = 10_000


@dataclass(frozen=True, slots=True)
class Session:
    nonce: str
    expires: int
    csrf: str


class SessionKeeper:
    def __init__(self, token: str) -> None:
        self._key = hmac.new(token.encode(), b"triggerbus-console-session-v1", hashlib.sha256).digest()
        self._token = token
        self._revoked: dict[str, int] = {}  # nonce -> expiry (logged out before it expired)

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def check_token(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._token.encode())

    def new_session(self, now: float | None = None) -> tuple[str, Session]:
        """The cookie value of a fresh session, and the session."""
        nonce = secrets.token_urlsafe(18)
        expires = int((now or time.time()) + SESSION_TTL_S)
        value = f"{nonce}.{expires}.{self._sign(f'{nonce}.{expires}')}"
        return value, self._session(nonce, expires)

    def _session(self, nonce: str, expires: int) -> Session:
        return Session(nonce, expires, self._sign(f"csrf.{nonce}")[:40])

    def session(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie value proves, or None (missing, forged, expired, logged out)."""
        if not cookie or cookie.count(".") != 2:
            return None
        nonce, expires_text, signature = cookie.split(".")
        if not expires_text.isdigit():
            return None
        if not hmac.compare_digest(signature, self._sign(f"{nonce}.{expires_text}")):
            return None
        expires = int(expires_text)
        if expires < (now or time.time()) or nonce in self._revoked:
            return None
        return self._session(nonce, expires)

    def revoke(self, session: Session) -> None:
        now = time.time()
        if len(self._revoked) >= MAX_REVOKED:
            self._revoked = {n: e for n, e in self._revoked.items() if e > now}
        self._revoked[session.nonce] = session.expires

    @staticmethod
    def csrf_ok(session: Session, submitted: str | None) -> bool:
        return bool(submitted) and hmac.compare_digest(session.csrf.encode(), str(submitted).encode())
