"""Who may do what: the loopback rule for the listening address, the bearer token of reads and writes, and the
repos a write may change (docs/serve.md, "Auth")."""

from __future__ import annotations

import hmac
import ipaddress

from ..errors import BadInput, RepoNotFound
from ..hub.ids import check_user_writable, validate_repo_id
from .common import LOOPBACK_NAMES, HTTPError, Request


def is_loopback(host: str) -> bool:
    """``127.0.0.0/8``, ``::1`` and ``localhost``; anything else can be reached from other machines."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool) -> None:
    if not is_loopback(host) and not allow_remote:
        raise BadInput(f"--host {host} is not a loopback address: the hub would be reachable from other machines; "
                       "pass --allow-remote if that is what you want")


class Auth:
    """The token check and the repo a route names (mixed into :class:`~fiun_hub.serve.app._Server`)."""

    def _auth(self, request: "Request", write: bool) -> None:
        if not write and self.open_reads:
            return
        if write and self.token is None:
            raise HTTPError(403, "this server is read-only: start `fiun-hub serve` with --token to accept writes")
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise HTTPError(401, "a token is required: send `Authorization: Bearer <token>` "
                                 "(HfApi(token=...) or HF_TOKEN)", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(value.strip().encode(), self.token.encode()):
            raise HTTPError(403, "invalid token")

    @staticmethod
    def _repo(org: str, name: str) -> str:
        repo = f"{org}/{name}"
        try:
            return validate_repo_id(repo)
        except BadInput:
            raise RepoNotFound(f"repo {repo[:200]} not found (fiun-hub repo ids are org/name)") from None

    @staticmethod
    def _writable(repo: str) -> None:
        try:
            check_user_writable(repo)
        except BadInput as exc:
            raise HTTPError(403, str(exc)) from None

    def _write_target(self, request, org: str, name: str, *, commit: bool = False) -> str:
        """The repo a write route may change: the token checked, the ledger refused, and for a commit (preupload,
        commit) no pull request."""
        self._auth(request, write=True)
        repo = self._repo(org, name)
        self._writable(repo)
        if commit and request.query_params.get("create_pr"):
            raise HTTPError(400, "pull requests are not supported by fiun-hub serve")
        return repo
