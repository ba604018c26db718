"""DKIM signatures (relaxed/relaxed, rsa-sha256) over finished message bytes.

The signature is computed over the exact bytes handed to SMTP: nothing may touch a message
after it is signed.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim import RE_BTAG, HashThrough, fold, hash_headers
from dkim.crypto import UnparsableKeyError, parse_pem_private_key

from digest.errors import ConfigError, ValidationError
from digest.mail.mime import DEFAULT_SIGNED_HEADERS
from digest.settings import Settings

__all__ = ["DkimSigner"]


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

    def sign(self, message: bytes) -> bytes:
        """``DKIM-Signature: ...`` followed by ``message``: send exactly these bytes."""
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
        return cls(settings.dkim_selector, settings.dkim_domain or settings.from_domain, pem)


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
