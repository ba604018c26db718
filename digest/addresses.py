"""Email addresses: the form one is stored, compared and suppressed in (``canonical_email``,
``lookup_form``), and as SMTP and headers carry it: validation (no DNS), IDNA domains,
SMTPUTF8 local parts, and the CR/LF check every header value passes first.

In the shared top so that subscribers (which stores addresses), records (which suppresses
them) and mail (which writes them) all use one form without importing each other.

An internationalised domain is always written in its IDNA form. A non-ASCII local part is
accepted only with SMTPUTF8 (``DIGEST_SMTPUTF8``): such an address can only be reached over
SMTPUTF8, and is then written in UTF-8 as RFC 6532 allows.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import email_validator
from email_validator import EmailNotValidError, validate_email

from digest.errors import HeaderInjectionError, ValidationError

__all__ = [
    "SMTPUTF8_HINT",
    "ascii_address",
    "canonical_email",
    "check_header_value",
    "lookup_form",
    "needs_smtputf8",
    "normalise_address",
    "utf8_address",
]


def check_header_value(name: str, value: str) -> str:
    """Return ``value`` unchanged, or refuse it if it could start a new header line."""
    if "\r" in value or "\n" in value:
        raise HeaderInjectionError(f"{name} contains a line break (CR or LF); refusing to send")
    return value


def normalise_address(addr: str, *, smtputf8: bool) -> str:
    """The normalised form of an email address, or ValidationError with the reason.

    No DNS lookups. Internationalised domains are fine (sent in IDNA form). A non-ASCII
    local part (normalised to NFC) is accepted only with ``smtputf8`` (the DIGEST_SMTPUTF8
    setting, passed by the caller): such addresses can only be reached over SMTPUTF8.
    """
    return _validated(addr, smtputf8, hint=True).normalized


def canonical_email(addr: str, *, smtputf8: bool) -> str:
    """The one form an address is stored, compared and suppressed in.

    Local parts are case-sensitive in theory and never in practice; treating
    ``Ana@Example.org`` and ``ana@example.org`` as two people would let one of them escape
    a suppression or subscribe twice. A non-ASCII local part (only with ``smtputf8``, the
    DIGEST_SMTPUTF8 setting) is kept in NFC. Built on ``normalise_address`` (valid and
    normalised, not lower-cased), which is a different thing.
    """
    address = normalise_address(addr, smtputf8=smtputf8).lower()
    # Lower-casing can leave NFC ("H" + U+0331 lowers to "h" + U+0331, which composes).
    return address if address.isascii() else unicodedata.normalize("NFC", address)


def lookup_form(addr: str) -> str:
    """The stored form to look an address up by, whatever form it came in."""
    # Bounce reports and admins may hand us addresses we would not accept as new ones: a
    # look-up accepts every form an address may be stored in, whatever DIGEST_SMTPUTF8 says.
    try:
        return canonical_email(addr, smtputf8=True)
    except ValidationError:
        return addr.strip().lower()


def ascii_address(addr: str) -> str:
    """``addr`` as SMTP and headers carry it without SMTPUTF8: the domain in IDNA form;
    ValidationError for a non-ASCII local part or an invalid address."""
    return _ascii_addr_spec(addr)


def utf8_address(addr: str) -> str:
    """``addr`` as SMTPUTF8 and RFC 6532 headers carry it: the local part in UTF-8 (NFC),
    the domain in IDNA form; an ASCII local part gives the same as ``ascii_address``."""
    return _utf8_addr_spec(addr)


def needs_smtputf8(addr: str) -> bool:
    """True when ``addr`` is a valid address only with SMTPUTF8 (a non-ASCII local part)."""
    if addr.rpartition("@")[0].isascii():
        return False
    try:
        validate_email(addr, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError:
        return False
    return True


SMTPUTF8_HINT = (
    "setting DIGEST_SMTPUTF8=true enables addresses with non-ASCII characters before the @ "
    "(the SMTP server must then offer SMTPUTF8)"
)


def _validated(addr: str, smtputf8: bool = False, *, hint: bool = False):
    """email-validator's result; ``hint``: say how to enable an address refused only for
    want of SMTPUTF8 (for subscribers' addresses, not for the operator's From)."""
    try:
        return validate_email(addr, check_deliverability=False, allow_smtputf8=smtputf8)
    except EmailNotValidError as exc:
        reason = str(exc)
        if hint and not smtputf8 and needs_smtputf8(addr):
            reason = f"{reason.rstrip('.')}; {SMTPUTF8_HINT}"
        raise ValidationError(f"invalid email address {addr!r}: {reason}") from exc


# An address email-validator would return unchanged: an ASCII dot-atom local part (at most
# 64 characters) at a lower-case domain of letter-digit-hyphen labels (no "--", which IDNA
# reads) whose top label is letters. Stored addresses were validated and normalised when
# they were stored; every To of a run is new, so a cache would not help, and this check
# keeps the guarantee that mattered at send time: no line break, nothing a header cannot
# carry. Anything else (and the special-use domains) is validated in full.
_PLAIN_ADDRESS = re.compile(
    r"(?=[^@]{1,64}@)[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:(?!-)(?!..--)[a-z0-9-]{1,63}(?<!-)\.)+[a-z]{2,63}")


def _plain(addr: str) -> bool:
    if len(addr) > 254 or _PLAIN_ADDRESS.fullmatch(addr) is None:
        return False
    domain = addr.rpartition("@")[2]
    return not any(domain == name or domain.endswith(f".{name}")
                   for name in email_validator.SPECIAL_USE_DOMAIN_NAMES)


def _ascii_addr_spec(addr: str, hint: bool = False) -> str:
    return addr if _plain(addr) else _ascii_addr_spec_validated(addr, hint)


def _utf8_addr_spec(addr: str) -> str:
    return addr if _plain(addr) else _utf8_addr_spec_validated(addr)


@lru_cache(maxsize=64)  # From and Reply-To are the same for every message of a run
def _ascii_addr_spec_validated(addr: str, hint: bool = False) -> str:
    result = _validated(addr, hint=hint)
    return result.ascii_email or result.normalized


@lru_cache(maxsize=64)
def _utf8_addr_spec_validated(addr: str) -> str:
    result = _validated(addr, smtputf8=True)
    # email-validator refuses quoted local parts, so a UTF-8 one is a dot-atom (RFC 6532 3.2).
    return result.ascii_email or f"{result.local_part}@{result.ascii_domain}"
