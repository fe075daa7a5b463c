"""The compose cluster's keys, tokens and TLS certificate, in the `auth`
volume (AUTH_DIR, default /auth). See docs/authentication.md.

  init            (the one-shot `auth-setup` service, before every daemon)
                  Makes what is missing, keeps what exists:
                    auth_private_key.pem  Ed25519, PKCS#8 (0600)
                    auth_public_key.pem   the public key(s) the daemons verify with
                    proxy_tls.crt         the proxy's self-signed certificate (ECDSA P-256)
                    proxy_tls.key         its key (0600)
                  and writes, from the private key, one token per daemon
                  that calls others, plus one for people (all 0600, no
                  expiry; the same key always gives the same tokens):
                    admin.token, pageserver.token, safekeeper.token,
                    proxy.token, compute.token
                  and copies what the proxy needs (proxy.token, the TLS
                  certificate and key, the public key) into PROXY_AUTH_DIR, if set: the
                  proxy, the one container clients reach, mounts only that.
  token [--scope S | --tenant-id T] [--expires-in SECONDS]
                  Prints a new token (default scope admin).
  rotate-begin    A new key pair: its private key in auth_private_key.next.pem,
                  its public key added to auth_public_key.pem.
  rotate-switch   The new private key replaces the old one; tokens minted again.
  rotate-finish   auth_public_key.pem keeps only the current key's public key.

Between the rotation steps every daemon is restarted (README.md beside
docker-compose.yml says how); during them both keys verify, so a
restart in any order never refuses a daemon. Exits 0 when done, 1 with the
reason otherwise.

Environment: AUTH_DIR (/auth), PROXY_AUTH_DIR (none), PROXY_TLS_NAMES
(extra DNS names for the certificate, comma-separated), PROXY_TLS_DAYS
(3650).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import neon_auth

AUTH_DIR = os.environ.get("AUTH_DIR", "/auth")
PRIVATE = os.path.join(AUTH_DIR, "auth_private_key.pem")
PRIVATE_NEXT = os.path.join(AUTH_DIR, "auth_private_key.next.pem")
PUBLIC = os.path.join(AUTH_DIR, "auth_public_key.pem")
TLS_CERT = os.path.join(AUTH_DIR, "proxy_tls.crt")
TLS_KEY = os.path.join(AUTH_DIR, "proxy_tls.key")
PROXY_AUTH_DIR = os.environ.get("PROXY_AUTH_DIR")
PROXY_FILES = ("proxy.token", "proxy_tls.crt", "proxy_tls.key", "auth_public_key.pem")
# The token files <scope>.token, by who presents them to whom: admin (people
# and the setup: every API), pageserver (safekeepers' WAL, the broker's
# subscriptions), safekeeper (publishing to the broker), proxy (the control
# plane's wake API), compute (the control plane: compute_ctl's HTTP API).
SERVICE_TOKENS = ("admin", "pageserver", "safekeeper", "proxy", "compute")
TLS_NAMES = ["localhost", "proxy", "localtest.me", "*.localtest.me"]


def log(message: str) -> None:
    print(f"auth-setup: {message}", flush=True)


def fail(message: str) -> None:
    print(f"auth-setup: error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def token_path(scope: str) -> str:
    return os.path.join(AUTH_DIR, f"{scope}.token")


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def public_blocks() -> list[str]:
    return neon_auth.public_pem_blocks(read(PUBLIC)) if os.path.exists(PUBLIC) else []


def write_public(blocks: list[str]) -> None:
    neon_auth.write_file(PUBLIC, "".join(b.strip() + "\n" for b in blocks).encode(), 0o644)


def current_key():
    try:
        return neon_auth.load_private_key(PRIVATE)
    except FileNotFoundError:
        fail(f"{PRIVATE} does not exist: run `init` first")
    except ValueError as e:
        fail(str(e))


def ensure_keys() -> None:
    if not os.path.exists(PRIVATE):
        if public_blocks():
            fail(f"{PUBLIC} exists without {PRIVATE}: remove it (and every token) to start afresh, "
                 "or put the private key back")
        key = neon_auth.generate_private_key()
        neon_auth.write_file(PRIVATE, neon_auth.private_pem(key), 0o600)
        write_public([neon_auth.public_pem(key).decode()])
        log(f"new Ed25519 key pair: {PRIVATE}, {PUBLIC}")
        return
    key = current_key()
    mine = neon_auth.public_pem(key).decode().strip()
    blocks = public_blocks()
    if not blocks:
        write_public([mine])
        log(f"{PUBLIC} made from {PRIVATE}")
    elif mine not in (b.strip() for b in blocks):
        fail(f"{PUBLIC} does not hold the public key of {PRIVATE}: the daemons would refuse every token "
             "(add it back, or see the key rotation steps)")
    else:
        log(f"key pair kept ({len(blocks)} public key{'s' if len(blocks) > 1 else ''} in {PUBLIC})")


def ensure_tls() -> None:
    if os.path.exists(TLS_CERT) and os.path.exists(TLS_KEY):
        log(f"TLS certificate kept: {TLS_CERT}")
        return
    names = TLS_NAMES + [n.strip() for n in os.environ.get("PROXY_TLS_NAMES", "").split(",") if n.strip()]
    days = int(os.environ.get("PROXY_TLS_DAYS", "3650"))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "neon compose proxy")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        # Self-signed: it is its own CA, so a client can trust it with
        # sslrootcert=proxy_tls.crt and sslmode=verify-full.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False),
                       critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    neon_auth.write_file(TLS_KEY, key.private_bytes(serialization.Encoding.PEM,
                                                    serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()), 0o600)
    neon_auth.write_file(TLS_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log(f"new self-signed TLS certificate for the proxy ({', '.join(names)}, 127.0.0.1; {days} days): {TLS_CERT}")


def mint_service_tokens() -> None:
    key = current_key()
    written = [scope for scope in SERVICE_TOKENS
               if neon_auth.write_file(token_path(scope), (neon_auth.mint(key, scope) + "\n").encode(), 0o600)]
    log(f"tokens {'written' if written else 'unchanged'}: "
        + ", ".join(f"{s}.token" for s in (written or SERVICE_TOKENS)))
    if PROXY_AUTH_DIR:
        os.makedirs(PROXY_AUTH_DIR, exist_ok=True)
        os.chmod(PROXY_AUTH_DIR, 0o755)
        copied = []
        for name in PROXY_FILES:
            source = os.path.join(AUTH_DIR, name)
            with open(source, "rb") as f:
                data = f.read()
            if neon_auth.write_file(os.path.join(PROXY_AUTH_DIR, name), data, os.stat(source).st_mode & 0o777):
                copied.append(name)
        if copied:
            log(f"for the proxy, in {PROXY_AUTH_DIR}: {', '.join(copied)}")


def cmd_init(_args) -> None:
    os.makedirs(AUTH_DIR, exist_ok=True)
    os.chmod(AUTH_DIR, 0o755)
    ensure_keys()
    ensure_tls()
    mint_service_tokens()
    if os.path.exists(PRIVATE_NEXT):
        log(f"a key rotation is under way ({PRIVATE_NEXT}): `rotate-switch` is next")


def cmd_token(args) -> None:
    scope = "tenant" if args.tenant_id else (args.scope or "admin")
    try:
        print(neon_auth.mint(current_key(), scope, args.tenant_id, args.expires_in))
    except ValueError as e:
        fail(str(e))


def cmd_rotate_begin(_args) -> None:
    current_key()
    if os.path.exists(PRIVATE_NEXT):
        fail(f"{PRIVATE_NEXT} exists: a rotation is already under way (`rotate-switch` is next)")
    key = neon_auth.generate_private_key()
    neon_auth.write_file(PRIVATE_NEXT, neon_auth.private_pem(key), 0o600)
    write_public(public_blocks() + [neon_auth.public_pem(key).decode()])
    log(f"new key pair: {PRIVATE_NEXT}; its public key added to {PUBLIC} "
        f"({len(public_blocks())} keys). Restart every daemon, then `rotate-switch`")


def cmd_rotate_switch(_args) -> None:
    try:
        key = neon_auth.load_private_key(PRIVATE_NEXT)
    except FileNotFoundError:
        fail(f"no {PRIVATE_NEXT}: run `rotate-begin` first")
    mine = neon_auth.public_pem(key).decode().strip()
    if mine not in (b.strip() for b in public_blocks()):
        fail(f"{PUBLIC} does not hold the new public key: run `rotate-begin` again after removing {PRIVATE_NEXT}")
    os.replace(PRIVATE_NEXT, PRIVATE)
    mint_service_tokens()
    log("tokens are signed by the new key. Restart every daemon (and run `setup` for the compute's "
        "tenant token), then `rotate-finish`")


def cmd_rotate_finish(_args) -> None:
    if os.path.exists(PRIVATE_NEXT):
        fail(f"{PRIVATE_NEXT} exists: run `rotate-switch` first")
    key = current_key()
    before = len(public_blocks())
    write_public([neon_auth.public_pem(key).decode()])
    log(f"{PUBLIC} holds the current public key only (it held {before}). Restart every daemon: "
        "tokens signed by the old key are refused from now on")


def main() -> None:
    parser = argparse.ArgumentParser(description="The compose cluster's keys, tokens and TLS certificate.")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("init", help="make what is missing, write the tokens (the default)")
    token = commands.add_parser("token", help="print a new token")
    token.add_argument("--scope", choices=neon_auth.SCOPES)
    token.add_argument("--tenant-id", help="a token for this tenant (scope tenant)")
    token.add_argument("--expires-in", type=float, metavar="SECONDS", help="expiry, from now")
    commands.add_parser("rotate-begin", help="a new key pair, its public key trusted beside the old one")
    commands.add_parser("rotate-switch", help="sign with the new key")
    commands.add_parser("rotate-finish", help="trust the new key only")
    args = parser.parse_args()
    if args.command == "token" and args.tenant_id and args.scope not in (None, "tenant"):
        parser.error("--tenant-id makes a tenant token: it goes without --scope or with --scope tenant")
    {
        None: cmd_init,
        "init": cmd_init,
        "token": cmd_token,
        "rotate-begin": cmd_rotate_begin,
        "rotate-switch": cmd_rotate_switch,
        "rotate-finish": cmd_rotate_finish,
    }[args.command](args)


if __name__ == "__main__":
    main()
