"""Mail: a rendered email turned into the bytes that are sent.

``mime`` assembles the message by hand (RFC 5322 + MIME) with the shared top's
``digest.addresses`` (validation, IDNA, SMTPUTF8, header values), ``dkim`` signs, and ``compose``
is the one composition path every mail goes through: digests, alerts, confirmations,
previews and "view in browser".
"""

from digest.addresses import (
    SMTPUTF8_HINT,
    ascii_address,
    check_header_value,
    needs_smtputf8,
    normalise_address,
    utf8_address,
)
from digest.mail.compose import (
    Headers,
    MessageFactory,
    Preview,
    confirm_url,
    preview,
    preview_view_url,
    view_url,
)
from digest.mail.dkim import DkimSigner
from digest.mail.mime import DEFAULT_SIGNED_HEADERS, build_message, make_message_id

__all__ = [
    "DEFAULT_SIGNED_HEADERS",
    "SMTPUTF8_HINT",
    "DkimSigner",
    "Headers",
    "MessageFactory",
    "Preview",
    "ascii_address",
    "build_message",
    "check_header_value",
    "confirm_url",
    "make_message_id",
    "needs_smtputf8",
    "normalise_address",
    "preview",
    "preview_view_url",
    "utf8_address",
    "view_url",
]
