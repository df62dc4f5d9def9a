"""JWTs as credentials, for platforms with their own identity service (PyJWT).

The token's ``vdb`` claim carries what an API key record carries::

    {"sub": "svc-search", "exp": 1767225600,
     "vdb": {"prefixes": ["acme-"], "rights": "write", "limits": {"rate_per_s": 50}}}

``exp`` and ``sub`` are required; ``aud`` and ``iss`` are checked when
``VECTORDB_JWT_AUDIENCE`` / ``VECTORDB_JWT_ISSUER`` are set (a token that carries an
``aud`` is refused unless the audience is configured). The algorithm is fixed by the
settings, never taken from the token: HS* with ``VECTORDB_JWT_SECRET``, RS*/ES*/PS*/EdDSA
with ``VECTORDB_JWT_PUBLIC_KEY``.
"""

from __future__ import annotations

from pathlib import Path

from api.apikeys import RIGHTS, Limits, normalize_prefixes
from vectordb.errors import InvalidArgument, PermissionDenied, Unauthenticated
from vectordb.settings import Settings

LEEWAY_S = 30.0  # clock skew allowed on exp/nbf/iat
_MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash


class JwtVerifier:
    def __init__(self, key, algorithm: str, audience: str = "", issuer: str = "") -> None:
        self.key = key
        self.algorithm = algorithm
        self.audience = audience or None
        self.issuer = issuer or None

    @classmethod
    def from_settings(cls, settings: Settings) -> JwtVerifier | None:
        """None when no JWT key is configured. Raises InvalidArgument (at start-up) when the
        key does not fit the algorithm, or PyJWT is not installed."""
        secret, public = settings.jwt_secret, settings.jwt_public_key
        if not secret and not public:
            return None
        if secret and public:
            raise InvalidArgument("set VECTORDB_JWT_SECRET or VECTORDB_JWT_PUBLIC_KEY, not both")
        try:
            import jwt  # noqa: F401
        except ImportError as exc:
            raise InvalidArgument("JWT settings need PyJWT: pip install pyjwt") from exc
        algorithm = settings.jwt_algorithm
        symmetric = algorithm.startswith("HS")
        if symmetric and not secret:
            raise InvalidArgument(f"VECTORDB_JWT_ALGORITHM={algorithm} needs VECTORDB_JWT_SECRET")
        if not symmetric and not public:
            raise InvalidArgument(f"VECTORDB_JWT_ALGORITHM={algorithm} needs VECTORDB_JWT_PUBLIC_KEY")
        if symmetric and len(secret.encode()) < _MIN_SECRET_BYTES:
            raise InvalidArgument(f"VECTORDB_JWT_SECRET must be at least {_MIN_SECRET_BYTES} bytes")
        key = secret if symmetric else _public_key(public)
        return cls(key, algorithm, settings.jwt_audience, settings.jwt_issuer)

    def verify(self, token: str):
        """The token's :class:`api.auth.Principal`. Raises Unauthenticated for a bad or
        expired token, PermissionDenied for a valid one without a usable ``vdb`` claim."""
        import jwt

        from api.auth import Principal

        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from None
        grant = claims.get("vdb")
        if not isinstance(grant, dict) or grant.get("rights") not in RIGHTS:
            raise PermissionDenied('the token grants no vectordb rights (claim "vdb": {"prefixes", "rights"})')
        try:
            prefixes = normalize_prefixes(grant.get("prefixes") or [])
            limits = Limits.from_json(grant.get("limits"))
        except InvalidArgument as exc:
            raise PermissionDenied(f'the token\'s "vdb" claim is invalid: {exc.message}') from None
        return Principal(f"jwt:{claims['sub']}", grant["rights"], prefixes, limits, str(claims["sub"]), "jwt")


def _public_key(value: str) -> str:
    """PEM text, or the path of a PEM file."""
    if value.lstrip().startswith("-----BEGIN"):
        return value
    path = Path(value)
    if not path.is_file():
        raise InvalidArgument("VECTORDB_JWT_PUBLIC_KEY is neither PEM text nor a readable file")
    return path.read_text()
