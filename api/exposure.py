"""Whether a server may listen on an address: the safe default for ``vectordb serve``.

Without credentials (no key in the store, no JWT key, or ``VECTORDB_AUTH=off``) anyone
who reaches the server may read and write every namespace, so it listens on loopback
only. Any other address needs credentials, or ``--insecure`` / ``VECTORDB_INSECURE=true``
to say that something in front (a private network, a gateway) controls access. The check
runs before binding, so the container entrypoint (which binds 0.0.0.0 and execs
``vectordb serve``) refuses to start in the same case.
"""

from __future__ import annotations

import ipaddress
import logging

from api.apikeys import KeyStore
from vectordb.errors import InvalidArgument
from vectordb.settings import Settings

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def check_bind(settings: Settings, host: str, keys: KeyStore, insecure: bool = False) -> Settings:
    """The settings to serve with on ``host``, or InvalidArgument if serving there would be open.

    ``auth=auto`` with keys in the store becomes ``auth=keys`` on a non-loopback address:
    such a server stays closed even if the key records were later removed.
    """
    if is_loopback(host):
        return settings
    insecure = insecure or settings.insecure
    if settings.auth == "keys" or (settings.auth == "auto" and (settings.jwt_secret or settings.jwt_public_key)):
        return settings
    if settings.auth == "auto" and keys.any():
        return settings.model_copy(update={"auth": "keys"})
    if insecure:
        log.warning("serving on %s WITHOUT access control (--insecure): anyone who reaches it may read and write", host)
        return settings
    why = "VECTORDB_AUTH=off" if settings.auth == "off" else "no API key exists in the store and no JWT key is set"
    raise InvalidArgument(
        f"refusing to listen on {host}: {why}, so anyone who can reach it could read and write every namespace. "
        "Create a key (vectordb keys create --prefix '*' --rights admin), set VECTORDB_JWT_SECRET or "
        "VECTORDB_JWT_PUBLIC_KEY, listen on 127.0.0.1, or pass --insecure (VECTORDB_INSECURE=true) "
        "if something in front controls access."
    )
