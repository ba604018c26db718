"""What the words of a refusal say, read the way the reference bounce classifiers read them
(Sisimai's reason lists, Mail::DeliveryStatus::BounceParser, flufl.bounce): the sentence a
server writes is a better witness than the enhanced code it puts in front of it, which is
often a generic 5.1.1, 5.2.1 or 5.0.0 (ADR 0024).

``reading(text)`` names the first that matches, in this order:

- ``suspended``: the mailbox exists but is suspended, disabled, inactive or locked (Gmail's
  "5.2.1 The email account that you tried to reach is disabled", Yahoo's "This account has
  been disabled or discontinued"): the reader may come back; soft.
- ``full``: the mailbox is full or over its quota, whatever the code: soft.
- ``size``: the message is too large for the receiver: soft.
- ``rate``: the receiver limits how fast we send ("speeding", "rate limit", "too many",
  "try again later"): soft, unless the classifier reads policy words in the same reply (a
  block list that says "try again later" is still a block list).
- ``unknown``: the address or its domain does not exist; the only words that make a hard
  bounce, and ``unavailable`` ("mailbox unavailable"), a weaker form of them.

None: the words tell nothing the code does not. Policy and sender words are read by the
classifier itself (``digest.delivery.classify``); addresses are taken out of the text first.
"""

from __future__ import annotations

import re

SUSPENDED = "suspended"
RATE = "rate"
FULL = "full"
SIZE = "size"
UNKNOWN = "unknown"
UNAVAILABLE = "unavailable"

_SUSPENDED = re.compile(
    r"\bsuspend(?:ed)?\b|\binactive\b|\bdeactivated?\b|\bdiscontinued\b|"
    r"(?:account|mailbox|user|address|recipient)(?: \w+)? (?:is |has been |was )?"
    r"(?:currently |temporarily |temporarly )?(?:disabled|locked|frozen|blocked by its owner)|"
    r"\bdisabled (?:account|mailbox|user)|account (?:that you tried to reach )?is disabled|"
    r"temporar(?:il)?y locked",
    re.I,
)
_RATE = re.compile(
    r"\bspeeding\b|rate[ -]?limit|\bthrottl\w*|too many\b|try (?:again )?later|"
    r"(?:sending|message|connection) rate|exceeded the (?:max|maximum) (?:emails|messages)|"
    r"receiving limits?|temporarily (?:deferred|rejected)|receiving mail (?:at a rate|too quickly)",
    re.I,
)
_FULL = re.compile(
    r"mailbox (?:is )?full|full mailbox|mail ?(?:box|folder|drop) (?:is )?full|"
    r"over ?(?:the )?(?:disk )?quota|quota (?:exceeded|full|violation|usage exceeded)|"
    r"exceed\w* (?:the |its |their |your )?(?:storage|(?:mailbox |disk )?quota|disk space|"
    r"allowed size|mailbox size)|insufficient (?:storage|disk space)|mailbox size limit|"
    r"disk quota|not enough (?:storage|disk)? ?space|does not have enough space|"
    r"too much mail|too many messages (?:on the server|in (?:the|this) mailbox)|"
    r"mailbox (?:would )?exceeds?|space has been used up",
    re.I,
)
_SIZE = re.compile(
    r"message (?:is )?too (?:big|large)|message size (?:\d+ )?exceeds|size limit|"
    r"exceeds? (?:the )?(?:max(?:imum)? )?(?:allowed )?(?:inbound )?message size|"
    r"max(?:imum)? message size|sizelimit|SIZE=",
    re.I,
)
_UNKNOWN = re.compile(
    r"user unknown|unknown (?:user|recipient|addressee|address|mailbox|local part)|"
    r"(?<!ip )(?<!client )(?:address|addressee|recipient) unknown|"
    r"non[- ]?existent (?:user|address|mailbox|recipient)|"
    r"no such (?:user|mailbox|recipient|address|account|person|domain)|"
    r"(?:user|mailbox|recipient|address|account|domain)(?: name)? (?:does not|doesn't) exist|"
    r"does not exist|invalid (?:recipient|mailbox|user|address|final delivery userid)|"
    r"(?:mail[- ]?box|recipient|user|account|address) (?:was )?not found|"
    r"is not a (?:known|valid) (?:user|mailbox|recipient)|not a valid (?:user|mailbox|recipient)|"
    r"is not an active address|no (?:mail ?box|account|mailbox) (?:here )?(?:by that name|"
    r"available|found)|not listed in (?:the )?(?:\w+ )?directory|bad[-_ ]recipient|"
    r"(?:doesn't|does not) have an? [\w.-]+ account|no longer (?:on (?:this|the) server|"
    r"valid|exists?)|no matches to nameserver query|(?<!client )\bhost unknown|unknown host|"
    r"domain (?:not found|unknown)",
    re.I,
)

# RFC 5321's own text for a 550; Outlook.com's reply for an address that does not exist, but
# also written for other refusals: hard only where the code says nothing else (not a 5.7.x
# policy code, not 5.2.1).
_UNAVAILABLE = re.compile(r"mailbox unavailable", re.I)


def reading(text: str) -> str | None:
    """What ``text`` (a reply with the addresses taken out) says about the recipient's
    mailbox: one of the names above, or None."""
    for name, words in ((SUSPENDED, _SUSPENDED), (FULL, _FULL), (SIZE, _SIZE), (RATE, _RATE),
                        (UNKNOWN, _UNKNOWN), (UNAVAILABLE, _UNAVAILABLE)):
        if words.search(text):
            return name
    return None
