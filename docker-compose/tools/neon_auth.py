"""Tokens for the compose cluster's helpers (docs/authentication.md).

A token is a JWT signed with Ed25519 (alg EdDSA) whose claims are
{"scope": S} plus "tenant_id" for scope tenant and optionally "exp". The
private key is PKCS#8 PEM, the public key file one or more SubjectPublicKeyInfo
PEM blocks: a token signed by any of them is accepted (key rotation).
"""

from __future__ import annotations

import os
import re
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SCOPES = ("admin", "tenant", "safekeeper", "pageserver", "compute", "proxy")
LEEWAY_SECONDS = 30
_PUBLIC_BLOCK = re.compile(r"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", re.S)
_TENANT_ID = re.compile(r"[0-9a-f]{32}")


class AuthError(Exception):
    """A refused call: `status` 401 (no valid token) or 403 (a valid token
    that does not open it)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(path: str) -> Ed25519PrivateKey:
    with open(path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def public_pem_blocks(text: str) -> list[str]:
    """The PUBLIC KEY blocks of a public key file's text, in order."""
    return _PUBLIC_BLOCK.findall(text)


def load_public_keys(path: str) -> list[Ed25519PublicKey]:
    with open(path) as f:
        blocks = public_pem_blocks(f.read())
    if not blocks:
        raise ValueError(f"{path}: no '-----BEGIN PUBLIC KEY-----' block")
    keys = []
    for i, block in enumerate(blocks, 1):
        key = serialization.load_pem_public_key(block.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{path}: key {i} is not an Ed25519 public key")
        keys.append(key)
    return keys


def claims_for(scope: str, tenant_id: str | None = None, expires_in: float | None = None) -> dict:
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}: expected one of {', '.join(SCOPES)}")
    if (scope == "tenant") != (tenant_id is not None):
        raise ValueError("a tenant_id goes with scope tenant, and only with it")
    if tenant_id is not None and not _TENANT_ID.fullmatch(tenant_id):
        raise ValueError(f"tenant id {tenant_id!r} is not 32 lowercase hex digits")
    claims: dict = {"scope": scope}
    if tenant_id is not None:
        claims["tenant_id"] = tenant_id
    if expires_in is not None:
        claims["exp"] = int(time.time() + expires_in)
    return claims


def mint(key: Ed25519PrivateKey, scope: str, tenant_id: str | None = None,
         expires_in: float | None = None) -> str:
    """A signed token. Without `expires_in` it has no `exp`, and the same key
    and claims always give the same token (Ed25519 is deterministic)."""
    return jwt.encode(claims_for(scope, tenant_id, expires_in), key, algorithm="EdDSA")


def verify(token: str, keys: list[Ed25519PublicKey]) -> dict:
    """The claims of a token signed by one of `keys` and not expired, or
    AuthError(401)."""
    last = "no key to verify it with"
    for key in keys:
        try:
            claims = jwt.decode(token.strip(), key, algorithms=["EdDSA"], leeway=LEEWAY_SECONDS,
                                options={"require": []})
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "the token has expired") from None
        except jwt.InvalidSignatureError:
            last = "bad signature (not signed by a trusted key)"
            continue
        except jwt.PyJWTError as e:
            raise AuthError(401, f"invalid token: {e}") from None
        scope, tenant_id = claims.get("scope"), claims.get("tenant_id")
        if scope not in SCOPES:
            raise AuthError(401, f"invalid token: unknown scope {scope!r}")
        if (scope == "tenant") != (tenant_id is not None):
            raise AuthError(401, "invalid token: a tenant_id goes with scope tenant, and only with it")
        return claims
    raise AuthError(401, f"invalid token: {last}")


def authorize(authorization: str | None, keys: list[Ed25519PublicKey], scopes: tuple[str, ...]) -> dict:
    """Checks an `Authorization: Bearer <jwt>` header value: the claims of a
    token of one of `scopes` (admin opens everything), or AuthError."""
    if not authorization or not authorization.strip():
        raise AuthError(401, "no token: this needs a token (Authorization: Bearer <jwt>)")
    kind, _, token = authorization.strip().partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise AuthError(401, "invalid token: expected 'Authorization: Bearer <jwt>'")
    claims = verify(token, keys)
    if claims["scope"] != "admin" and claims["scope"] not in scopes:
        wanted = ", ".join(f"a {s} token" for s in scopes)
        raise AuthError(403, f"a {claims['scope']} token does not open this: it needs {wanted} or an admin token")
    return claims


def read_token(path: str) -> str:
    with open(path) as f:
        token = f.read().strip()
    if not token:
        raise ValueError(f"{path} is empty")
    return token


def write_file(path: str, data: bytes, mode: int) -> bool:
    """Writes `data` to `path` atomically with `mode` (a temporary file
    renamed over it), unless it already holds exactly that. True if
    written."""
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                os.chmod(path, mode)
                return False
    except FileNotFoundError:
        pass
    tmp = f"{path}.tmp"
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True
