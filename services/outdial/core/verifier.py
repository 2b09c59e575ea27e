"""What a server checks on every RPC's token: signature against the JWKS (re-read when its file changes, so a
rotation needs no restart), then the in-process revocation list."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from outdial.core.auth import Principal, verify_token
from outdial.core.revocation import RevocationList
from outdial.core.signing import Jwks, KeyConfigError, load_jwks

log = logging.getLogger("outdial.auth")


class Verifier:
    def __init__(
        self,
        jwks: Jwks,
        revocations: RevocationList | None,
        *,
        jwks_path: Path | None = None,
        dev: bool = False,
    ) -> None:
        self.jwks = jwks
        # None: no revocation list (the gateway, which has no store: it accepts only short-lived service
        # tokens, and managers' status reads; docs/security.md).
        self.revocations = revocations
        self._path = jwks_path
        self._dev = dev
        self._mtime = self._stat()

    def _stat(self) -> tuple[int, int, int] | None:
        """The file's identity: a rewrite (`outdial keys rotate` replaces it; a Secret volume swaps a symlink)
        changes the inode or the modification time."""
        if self._path is None:
            return None
        try:
            st = self._path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def verify(self, token: str) -> Principal:
        principal = verify_token(self.jwks, token)
        if self.revocations is not None:
            self.revocations.check(principal)
        return principal

    def reload_jwks(self) -> bool:
        """Re-read the JWKS when its file changed; a bad new file is logged and the old keys kept."""
        mtime = self._stat()
        if self._path is None or mtime is None or mtime == self._mtime:
            return False
        try:
            jwks = load_jwks(self._path, dev=self._dev)
        except KeyConfigError as exc:
            log.error("the changed JWKS is refused, keeping the previous keys: %s", exc)
            self._mtime = mtime
            return False
        self._mtime = mtime
        added = set(jwks.keys) - set(self.jwks.keys)
        removed = set(self.jwks.keys) - set(jwks.keys)
        self.jwks = jwks
        log.info(
            "JWKS reloaded: %d keys (added %s, removed %s)", len(jwks.keys), sorted(added), sorted(removed)
        )
        return True

    async def watch_jwks(self, interval: float = 5.0) -> None:
        while True:
            await asyncio.sleep(interval)
            self.reload_jwks()
