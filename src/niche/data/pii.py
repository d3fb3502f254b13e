"""PII redaction: emails, phone numbers, payment card numbers (Luhn-checked), IBANs (mod-97-checked), IP addresses.

Each match is replaced by a typed placeholder ([EMAIL], [PHONE], ...) and counted. Card numbers and IBANs are
validated by their check digits, so order numbers and other long digit runs stay untouched.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?\b")
CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\w)")
IPV6 = re.compile(r"(?<![\w:])(?=[0-9A-Fa-f:]*:[0-9A-Fa-f:]*:)[0-9A-Fa-f:]{3,39}(?![\w:])")
# International (+CC ...), an area code in parentheses, or the 3-3-4 North American shape; dates and plain
# digit runs do not match.
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?\(?\d{1,4}\)?(?:[ .-]?\d{2,4}){2,4}"
    r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}"
    r"|\d{3}[ .-]\d{3}[ .-]\d{4})(?!\w)"
)


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, character in enumerate(reversed(digits)):
        value = int(character)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(character, 36)) for character in rearranged)) % 97 == 1


def _ip_valid(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def redact(text: str, counts: Counter[str] | None = None) -> str:
    """`text` with every PII match replaced by its placeholder; `counts` gains one per replacement."""
    counts = counts if counts is not None else Counter()

    def replace(pattern: re.Pattern[str], kind: str, valid=None) -> None:
        nonlocal text

        def substitute(match: re.Match[str]) -> str:
            if valid is not None and not valid(match.group(0)):
                return match.group(0)
            counts[kind] += 1
            return f"[{kind}]"

        text = pattern.sub(substitute, text)

    # Most specific first: an IBAN or card number must not be half-eaten by the phone pattern.
    replace(EMAIL, "EMAIL")
    replace(IBAN, "IBAN", iban_valid)
    replace(CARD, "CARD", lambda value: luhn_valid(re.sub(r"\D", "", value)))
    replace(IPV4, "IP", _ip_valid)
    replace(IPV6, "IP", _ip_valid)
    replace(PHONE, "PHONE", lambda value: 7 <= len(re.sub(r"\D", "", value)) <= 15)
    return text
