"""DKIM signatures (relaxed/relaxed, rsa-sha256) over finished message bytes.

The signature is computed over the exact bytes handed to SMTP: nothing may touch a message
after it is signed. ``DkimSigner.sign`` writes the header dkimpy would write for the same
message in the same second (same tags, order, folding and header list; a test compares and
verifies with dkimpy), without dkimpy's per-line parsing and canonicalisation in Python, and
keeps the canonical form of body pieces many messages share (ADR 0028).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim import RE_BTAG, HashThrough, fold, hash_headers, select_headers
from dkim.canonicalization import Relaxed
from dkim.crypto import UnparsableKeyError, parse_pem_private_key

from digest.errors import ConfigError, ValidationError
from digest.mail.mime import DEFAULT_SIGNED_HEADERS
from digest.settings import Settings

__all__ = ["DkimSigner"]

# Canonical body pieces (and hash states) a signer keeps: a few per distinct content.
SHARED_PIECES = 64
_SIG_NAME = b"DKIM-Signature"
_WSP = re.compile(rb"[\t ]+")
_LINE_BREAK = re.compile(rb"\r?\n")
_FIELD_NAME = re.compile(rb"([\x21-\x7e]+?):")


def _relaxed_lines(data: bytes) -> bytes:
    """RFC 6376 3.4.4 (a) and (b) on whole lines: what dkimpy's two substitutions give,
    by ``bytes.replace`` passes (C loops over the buffer; the regexes are ~40 times slower
    on a 40 KB body): tabs become spaces, runs of spaces shrink (each pass shortens a run of
    n to about n/2), and the one space a line may end with goes."""
    if b"\t" in data:
        data = data.replace(b"\t", b" ")
    while b"  " in data:
        data = data.replace(b"  ", b" ")
    if b" \r\n" in data:
        data = data.replace(b" \r\n", b"\r\n")
    return data


def _relaxed_body(body: bytes) -> bytes:
    return Relaxed.canonicalize_body(body)


def _relaxed_header_value(value: bytes) -> bytes:
    return _WSP.sub(b" ", _LINE_BREAK.sub(b"", value)).strip() + b"\r\n"


def _parse_headers(head: bytes) -> list[tuple[bytes, bytes]] | None:
    """(name, value) pairs as dkimpy's ``rfc822_parse`` reads them (value: everything after
    the colon, continuation lines included, CRLF-terminated); None for a line it refuses."""
    headers: list[list[bytes]] = []
    for line in head[:-2].split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and headers:
            headers[-1][1] += line + b"\r\n"
            continue
        match = _FIELD_NAME.match(line)
        if match is None:
            return None
        headers.append([match.group(1), line[match.end():] + b"\r\n"])
    return [(name, value) for name, value in headers]


def _select(headers: list[tuple[bytes, bytes]],
            include: tuple[bytes, ...]) -> list[tuple[bytes, bytes]]:
    return select_headers(headers, include)


class DkimSigner:
    """Signs finished messages (relaxed/relaxed, rsa-sha256) with one key."""

    def __init__(
        self,
        selector: str,
        domain: str,
        private_key_pem: bytes,
        headers: Sequence[str] = DEFAULT_SIGNED_HEADERS,
    ):
        try:
            parse_pem_private_key(private_key_pem)
        except (UnparsableKeyError, ValueError) as exc:  # ValueError: broken base64
            raise ConfigError(
                f"the DKIM private key is not a PEM RSA private key ({exc}); "
                "check DIGEST_DKIM_PRIVATE_KEY_PATH"
            ) from exc
        if not any(h.lower() == "from" for h in headers):
            raise ConfigError("DKIM must sign the From header; add it to the signed headers")
        try:
            openssl_key = serialization.load_pem_private_key(private_key_pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ConfigError(
                f"the DKIM private key cannot be loaded ({exc}); it must be an unencrypted PEM "
                "RSA key: check DIGEST_DKIM_PRIVATE_KEY_PATH"
            ) from exc
        if not isinstance(openssl_key, rsa.RSAPrivateKey):
            raise ConfigError("the DKIM private key is not an RSA key; rsa-sha256 needs one")
        self.selector = selector
        self.domain = domain
        self._key = private_key_pem
        self._openssl_key = openssl_key
        self._selector = selector.encode("ascii")
        self._domain = domain.encode("ascii")
        self._headers = [h.encode("ascii") for h in headers]
        self._include = tuple(h.lower() for h in self._headers)
        self._h_value = b" : ".join(self._include)
        # Kept across messages (bounded): canonical shared pieces, hash states after them.
        self._pieces: dict[bytes, bytes] = {}
        self._states: dict[tuple[bytes, bytes], Any] = {}
        self._lock = threading.Lock()

    @staticmethod
    def now() -> float:
        """The signing time (t=), read per message."""
        return time.time()

    def sign(self, message: bytes, shared: Sequence[bytes] = ()) -> bytes:
        """``DKIM-Signature: ...`` followed by ``message``: send exactly these bytes.

        The same signature dkimpy writes for the same message and second (a test compares),
        computed here: the header block parsed as we write it, the body canonicalised by two
        C-level substitutions, the RSA operation by OpenSSL. ``shared``: pieces of the body,
        in order, that recur across messages (a content's quoted-printable prefix); each must
        start a line and end with CRLF. Their canonical form is kept (and the hash state after
        the first, when it is the body's start): a hint, the signature is the same without.
        A message outside what this path reads (a bare CR or LF, no body) goes to dkimpy's.
        """
        split = message.find(b"\r\n\r\n")
        if split < 0 or message.count(b"\n") != message.count(b"\r\n") or \
                message.count(b"\r") != message.count(b"\r\n"):
            return self.sign_with_dkimpy(message)
        headers = _parse_headers(message[:split + 2])
        if headers is None:
            return self.sign_with_dkimpy(message)
        body_hash = self._body_hash(message, split + 4, shared)
        fields = [
            (b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", b"relaxed/relaxed"),
            (b"d", self._domain), (b"i", b"@" + self._domain), (b"q", b"dns/txt"),
            (b"s", self._selector), (b"t", str(int(self.now())).encode("ascii")),
            (b"h", self._h_value), (b"bh", base64.b64encode(body_hash)), (b"b", b"0" * 60),
        ]
        header_value = b"; ".join(b"=".join(x) for x in fields)
        header_value = fold(header_value, namelen=len(_SIG_NAME), linesep=b"\r\n")
        header_value = RE_BTAG.sub(b"\\1", header_value)
        h = hashlib.sha256()
        for name, value in _select(headers, self._include):
            h.update(name.lower().rstrip() + b":" + _relaxed_header_value(value))
        h.update(b"dkim-signature:" + _relaxed_header_value(b" " + header_value).rstrip())
        signature = self._openssl_key.sign(h.digest(), padding.PKCS1v15(),
                                           utils.Prehashed(hashes.SHA256()))
        fields[-1] = (b"b", base64.b64encode(signature))
        header_value = b"; ".join(b"=".join(x) for x in fields) + b"\r\n"
        return _SIG_NAME + b": " + fold(header_value, namelen=len(_SIG_NAME),
                                        linesep=b"\r\n") + message

    def _body_hash(self, message: bytes, start: int, shared: Sequence[bytes]) -> bytes:
        """SHA-256 of the relaxed body of ``message[start:]``, the ``shared`` pieces'
        canonical forms (and the state after the first) taken from the signer's cache."""
        h: Any = None
        pos = start
        pending: list[bytes] = []
        for index, piece in enumerate(shared):
            at = message.find(piece, pos) if piece else -1
            # A piece counts only where it starts a line and ends with one.
            if at < 0 or not piece.endswith(b"\r\n") or message[at - 2:at] != b"\r\n":
                continue
            gap = message[pos:at]
            if index == 0 and h is None and not pending:
                key = (gap, piece)
                state = self._states.get(key)
                if state is None:
                    state = hashlib.sha256(_relaxed_lines(gap) + self._canonical(piece))
                    self._remember(self._states, key, state)
                h = state.copy()
            else:
                pending.append(_relaxed_lines(gap))
                pending.append(self._canonical(piece))
            pos = at + len(piece)
        tail = _relaxed_lines(message[pos:])
        if h is None:
            h = hashlib.sha256()
        for part in pending:
            h.update(part)
        if tail.endswith(b"\r\n\r\n") or not tail.endswith(b"\r\n") or not tail.strip(b"\r\n"):
            # Empty lines at the end (or no line there): let the whole body's rule decide.
            return hashlib.sha256(_relaxed_body(message[start:])).digest()
        h.update(tail)
        return h.digest()

    def _canonical(self, piece: bytes) -> bytes:
        found = self._pieces.get(piece)
        if found is None:
            found = _relaxed_lines(piece)
            self._remember(self._pieces, piece, found)
        return found

    def _remember(self, cache: dict[Any, Any], key: Any, value: Any) -> None:
        with self._lock:
            while len(cache) >= SHARED_PIECES:
                del cache[next(iter(cache))]
            cache[key] = value

    def sign_with_dkimpy(self, message: bytes) -> bytes:
        """The signature as dkimpy computes it (with the RSA step done by OpenSSL): the
        reference ``sign`` is compared with, and its path for messages it does not read."""
        try:
            signer = _OpenSSLDKIM(message, signature_algorithm=b"rsa-sha256", linesep=b"\r\n")
            signer.openssl_key = self._openssl_key
            signature = signer.sign(
                self._selector,
                self._domain,
                self._key,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=self._headers,
            )
        except dkim.DKIMException as exc:
            raise ValidationError(f"DKIM signing failed: {exc}") from exc
        return signature + message

    @classmethod
    def from_settings(cls, settings: Settings) -> DkimSigner | None:
        """A signer when ``dkim_selector`` and ``dkim_private_key_path`` are set, else None."""
        if not (settings.dkim_selector and settings.dkim_private_key_path):
            return None
        path = Path(settings.dkim_private_key_path)
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the DKIM private key {path}: {exc.strerror}; "
                "fix DIGEST_DKIM_PRIVATE_KEY_PATH or unset DIGEST_DKIM_SELECTOR"
            ) from exc
        return _kept_signer(settings.dkim_selector, settings.dkim_domain or settings.from_domain,
                            pem)


@functools.lru_cache(maxsize=4)
def _kept_signer(selector: str, domain: str, pem: bytes) -> DkimSigner:
    """One signer per key for the process: loading and checking a 2048-bit key took about
    a tenth of a worker's time when every batch made its own (profiled under load), and a
    kept signer keeps its shared pieces across batches. The key file is read each time, so
    a new key is used from the next batch on."""
    return DkimSigner(selector, domain, pem)


class _OpenSSLDKIM(dkim.DKIM):
    """dkimpy's signer with the RSA private-key operation done by OpenSSL.

    dkimpy computes RSA in pure Python (``pow`` on 1024-bit halves), ~6 ms of its ~9 ms per
    message; OpenSSL through ``cryptography`` takes ~0.3 ms. Parsing, canonicalisation,
    header selection and folding stay dkimpy's: this is its ``gen_header`` (dkimpy 1.1,
    non-standardised path) with only the signing call replaced. RSASSA-PKCS1-v1_5 is
    deterministic, so the result is byte-for-byte what dkimpy itself would produce (a test
    compares the two).
    """

    openssl_key: rsa.RSAPrivateKey

    def gen_header(self, fields, include_headers, canon_policy, header_name, pk, standardize=False):
        if standardize or self.signature_algorithm != b"rsa-sha256":  # not a path we use
            return super().gen_header(fields, include_headers, canon_policy, header_name, pk,
                                      standardize)
        header_value = b"; ".join(b"=".join(x) for x in fields)
        header_value = fold(header_value, namelen=len(header_name), linesep=b"\r\n")
        header_value = RE_BTAG.sub(b"\\1", header_value)
        h = HashThrough(self.hasher(), self.debug_content)
        headers = canon_policy.canonicalize_headers(self.headers)
        self.signed_headers = hash_headers(h, canon_policy, headers, include_headers,
                                           (header_name, b" " + header_value), dict(fields))
        signature = self.openssl_key.sign(h.digest(), padding.PKCS1v15(),
                                          utils.Prehashed(hashes.SHA256()))
        index = [i for i, (tag, _) in enumerate(fields) if tag == b"b"][0]
        fields[index] = (b"b", base64.b64encode(signature))
        header_value = b"; ".join(b"=".join(x) for x in fields) + self.linesep
        return fold(header_value, namelen=len(header_name), linesep=self.linesep)
