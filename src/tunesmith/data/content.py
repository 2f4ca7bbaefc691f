"""Content problems inside one text field: personal data, template placeholders, HTML, mojibake.

`scan_text` feeds `tunesmith data check` (warnings), the other functions feed `tunesmith data clean`. Every
rule favours precision: a warning on ordinary support prose ("Plans cost €25", "version 2.0.1", "at 10:30")
teaches users to ignore the report. Speed: `data check` scans up to 100,000 rows × ~1 KB in a 60 s budget,
so each detector sits behind a cheap test (a character count or `in`) and the regexes are compiled once.
"""

from __future__ import annotations

import html
import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from functools import cache
from html.entities import html5
from collections.abc import Callable, Iterator


@dataclass(frozen=True)
class ContentIssue:
    code: str
    kind: str
    match: str
    start: int
    end: int


KINDS = {
    "pii_email": "e-mail address", "pii_phone": "phone number", "pii_card": "payment card number",
    "pii_iban": "IBAN", "pii_ip": "IP address", "pii_national_id": "national ID number",
    "placeholder": "template placeholder", "html": "HTML markup", "mojibake": "mojibake",
}
# What `redact_pii` writes; ALL-CAPS angle tags, so a later scan reports them as placeholders, not as PII.
REDACTIONS = {"pii_email": "<EMAIL>", "pii_phone": "<PHONE>", "pii_card": "<CARD>", "pii_iban": "<IBAN>",
              "pii_ip": "<IP>", "pii_national_id": "<ID>"}
_REDACT_FIX = "remove or mask it (`tunesmith data clean --redact-pii` replaces it with {})"
FIXES = {code: _REDACT_FIX.format(token) for code, token in REDACTIONS.items()} | {
    "placeholder": "fill in the placeholder with a realistic value, or remove the row",
    "html": "strip the markup (`tunesmith data clean` does)",
    "mojibake": "re-decode the text as UTF-8 (`tunesmith data clean` repairs it)",
}
# Overlaps are settled inside a group by this order: a card or IBAN also looks like a phone number, and an
# e-mail can contain digits that look like one. Groups don't compete: an e-mail inside <a href> is both.
_PRIORITY = {code: rank for rank, code in enumerate(
    ["pii_email", "pii_iban", "pii_card", "pii_national_id", "pii_ip", "pii_phone", "placeholder", "html",
     "mojibake"])}
_GROUP = {code: "pii" for code in REDACTIONS} | {"placeholder": "markup", "html": "markup", "mojibake": "mojibake"}

# The lookbehinds stop a match from starting mid-token, which also keeps finditer linear on long runs. The
# patterns that run on most rows begin with a character class and only then look behind: `re` skips ahead to a
# candidate character in C only when the pattern starts with one (card regex: 36 -> 8 µs per 1 KB text). The
# e-mail and IPv6 patterns run only near "@" or on rows with "::", so they keep the plainer lookbehind-first form.
_EMAIL = re.compile(r"(?<![\w.+%-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# Issuer prefixes start with 2-6 (Mastercard 2/5, Amex 3, Visa 4, Discover 6): a 1/7/8/9-led order number
# that happens to pass Luhn (1 in 10 do) is not reported. Possessive, so a longer digit run never matches.
_CARD = re.compile(r"[2-6](?<!\d\d)(?<!\d[ -]\d)(?:[ -]?\d){12,18}+(?![ -]?\d)")
_IBAN = re.compile(r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d\d"
                   r"(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)(?![A-Za-z0-9])")
_IPV4 = re.compile(r"\d(?<![\w.]\d)\d{0,2}(?:\.\d{1,3}){3}(?![\w]|\.\d)")  # four parts: "2.0.1" is a version
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:]|\.\w)")
# The shared first character is consumed up front (see above), so each branch re-asserts it with (?<=...).
_PHONE = re.compile(r"""
    [+(\d](?<![\w+][+(\d])(?<!\d[.,/:-][+(\d])          # not the tail of a word, price, date or time
    (?:
        (?<=\+)\d{1,3}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,5}))++  # +44 20 7946 0958, +1 (555) 123-4567; 8-15 digits
      | (?<=1)[ .-]\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}          # 1 (555) 123-4567
      | (?<=\()\d{3}\)[ .-]?\d{3}[ .-]\d{4}                # (555) 123-4567
      | (?<=1)[ .-]\d{3}(?P<sep1>[ .-])\d{3}(?P=sep1)\d{4} # 1-800-555-0199
      | (?<=\d)\d\d(?P<sep>[ .-])\d{3}(?P=sep)\d{4}        # 555-123-4567, 555.123.4567
      | (?<=0)\d{2,4}[ -]\d{3,4}[ -]\d{3,4}                # trunk prefix 0: 0800 555 0199, 020 7946 0958
      | (?<=0)\d{3,4}[ -]\d{6}                             # 07700 900123
      | (?<=0)\d(?:[ .]\d\d){4}                            # 06 12 34 56 78
    )
    (?!\w|[.,/:-]\d)                                       # not the head of a longer number or date
""", re.VERBOSE)
# US SSN without the never-issued ranges (area 000, 666, 9xx; group 00; serial 0000), dashed only: nine bare
# digits are as likely an order number. UK National Insurance number without HMRC's unused letters/prefixes.
_SSN = re.compile(r"[0-8](?<![\w-][0-8])\d\d(?<!000)(?<!666)-(?!00)\d\d-(?!0000)\d{4}(?![\w-])")
_NINO = re.compile(r"[A-CEGHJ-PR-TW-Z](?<![A-Za-z0-9][A-Z])[A-CEGHJ-NPR-TW-Z](?<!BG|GB|KN|NK|NT|TN|ZZ)"
                   r" ?\d\d ?\d\d ?\d\d ?[A-D](?![A-Za-z0-9])")

_PLACEHOLDER = re.compile(r"""
    \{(?<!\{\{)(?:
        \{[^{}\n]{1,80}\}\}                                # Bitext's {{Order Number}}
      | [A-Za-z_][A-Za-z0-9_]+\}(?!\})                     # {customer_name}
    )
    # [Company Name], [NAME]; not [1], not a markdown link [Docs](url), not one Title word ([Solved], [Edit])
  | \[(?:[A-Z][A-Za-z]*(?:\ [A-Z][A-Za-z]*){1,5}|[A-Z][A-Z0-9_]+)\](?![\[(])
  | <[A-Z][A-Z0-9_]+>                                      # <EMAIL>, what redact_pii writes
""", re.VERBOSE)
# Only names of real elements count as tags: "List<String>" or "<name>" in prose is not markup.
_HTML_ELEMENTS = frozenset("""
    a abbr article aside audio b blockquote body br button caption center cite code col colgroup dd del div dl
    dt em figcaption figure font footer form h1 h2 h3 h4 h5 h6 head header hr html i iframe img input ins label
    li link main mark meta nav ol option p pre q s section select small source span strong style sub sup svg
    table tbody td textarea tfoot th thead title tr tt u ul video script
""".split())
_BLOCK_ELEMENTS = frozenset("blockquote br div h1 h2 h3 h4 h5 h6 hr li ol p pre table tr ul".split())
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]*)(?:\s[^<>]*)?/?>")
_ENTITY = re.compile(r"&(?:#\d{1,7}|#[xX][0-9A-Fa-f]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_SCRIPT = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)

# Two adjacent non-ASCII characters, or one of C1/Œ/œ/Ã/Â (see _first_bad_sequence); class-first, as above.
_MOJIBAKE_HINT = re.compile(r"[^\x00-\x7f](?:[^\x00-\x7f]|(?<=[\x80-\x9fŒœÃÂ]))")

_Found = Iterator[tuple[str, int, int]]


def _digits(text: str) -> int:
    return sum(map(text.count, "0123456789"))  # ten C-level counts beat a Python loop over 1 KB


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _iban_ok(candidate: str) -> bool:
    iban = candidate.replace(" ", "")
    if not 15 <= len(iban) <= 34:  # 4 + 11..30 (Norway's 15 is the shortest in use)
        return False
    rearranged = iban[4:] + iban[:4]  # ISO 13616: move country+check to the end, letters to 10..35, mod 97 == 1
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _ip_ok(candidate: str) -> bool:
    if ":" in candidate and candidate.strip(":") == "":
        return False  # a bare "::" in prose is punctuation, not the unspecified address
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def _find_email(text: str) -> _Found:
    # Search only near each "@": a local part has at most 64 characters (RFC 5321), and the lookbehind still
    # sees the text before `pos`. Scanning the whole row instead tries every letter as a start (~25 µs/KB).
    pos = 0
    while (at := text.find("@", pos)) >= 0:
        m = _EMAIL.search(text, max(at - 64, pos), at + 256)
        if m is None or m.start() > at:
            pos = at + 1
            continue
        yield "pii_email", m.start(), m.end()
        pos = m.end()


def _find_numbers(text: str) -> _Found:
    digits = _digits(text)
    if digits >= 13:
        for m in _CARD.finditer(text):
            if _luhn_ok(re.sub(r"\D", "", m.group())):
                yield "pii_card", m.start(), m.end()
    if digits >= 2:
        for m in _IBAN.finditer(text):
            if _iban_ok(m.group()):
                yield "pii_iban", m.start(), m.end()
    if digits >= 6:
        for regex in (_SSN, _NINO):
            for m in regex.finditer(text):
                yield "pii_national_id", m.start(), m.end()
    if digits >= 4 and "." in text:
        for m in _IPV4.finditer(text):
            if _ip_ok(m.group()):
                yield "pii_ip", m.start(), m.end()
    if "::" in text or text.count(":") >= 7:  # compressed or full IPv6; "10:30" has one colon
        for m in _IPV6.finditer(text):
            if _ip_ok(m.group()):
                yield "pii_ip", m.start(), m.end()
    if digits >= 8:
        for m in _PHONE.finditer(text):
            if 8 <= sum(c.isdigit() for c in m.group()) <= 15:
                yield "pii_phone", m.start(), m.end()


def _find_markup(text: str) -> _Found:
    if "{" in text or "[" in text or "<" in text:
        for m in _PLACEHOLDER.finditer(text):
            if m.group()[0] != "<" or m.group()[1:-1].lower() not in _HTML_ELEMENTS:  # <BR> is old HTML
                yield "placeholder", m.start(), m.end()
    if "<" in text:
        for m in _TAG.finditer(text):
            if m.group(2).lower() in _HTML_ELEMENTS:
                yield "html", m.start(), m.end()
    if "&" in text:
        for m in _ENTITY.finditer(text):
            if m.group()[1] == "#" or m.group()[1:] in html5:
                yield "html", m.start(), m.end()


def _find_mojibake(text: str) -> _Found:
    if text.isascii():
        return  # mojibake needs characters outside ASCII
    bad = _first_bad_sequence(text)
    if bad and fix_mojibake(text) != text:  # confirm: ftfy can actually re-decode it
        yield "mojibake", bad.start(), bad.end()


def _first_bad_sequence(text: str) -> re.Match | None:
    """The first match of ftfy's "looks like mojibake" regex (the one behind `is_bad`), or None.

    BADNESS_RE tries ~40 branches at every position: ~190 µs per 1 KB, the cost of the whole scan. In ftfy 6.x
    each branch holds either two adjacent non-ASCII characters or one of C1/Œ/œ/Ã/Â, and spans at most 7
    characters, so the search can start 6 before the first such hint, and clean rows (most) skip it."""
    hint = _MOJIBAKE_HINT.search(text)
    if hint is None:
        return None
    from ftfy.badness import BADNESS_RE

    return BADNESS_RE.search(text, max(hint.start() - 6, 0))  # with pos > 0, `^` still means the real start


_DETECTORS: tuple[Callable[[str], _Found], ...] = (_find_email, _find_numbers, _find_markup, _find_mojibake)


def scan_text(text: str) -> list[ContentIssue]:
    """Every content issue in `text`, ordered by start offset; overlapping matches of one group keep the
    higher-priority code (a Luhn-valid card is not also a phone number)."""
    found = sorted((hit for detect in _DETECTORS for hit in detect(text)),
                   key=lambda hit: (_PRIORITY[hit[0]], hit[1]))
    kept: list[tuple[str, int, int]] = []
    for code, start, end in found:
        if not any(_GROUP[code] == _GROUP[c] and start < e and s < end for c, s, e in kept):
            kept.append((code, start, end))
    kept.sort(key=lambda hit: (hit[1], _PRIORITY[hit[0]]))
    return [ContentIssue(code, KINDS[code], text[start:end], start, end) for code, start, end in kept]


def redact_pii(text: str) -> tuple[str, dict[str, int]]:
    """Replace each personal-data match with its typed placeholder (<EMAIL>, <PHONE>, ...); return the new text
    and the count per code."""
    counts: dict[str, int] = {}
    # Repeat until clean: removing a match can expose a neighbour that a lookbehind hid ("a@b.cc.x@d.ee").
    # Ends: every match holds an "@", a digit or a ":" (IPv6), the placeholders hold none, so each pass
    # strictly lowers their count.
    while pii := [i for i in scan_text(text) if i.code in REDACTIONS]:
        for issue in reversed(pii):  # right to left keeps the earlier offsets valid
            text = text[:issue.start] + REDACTIONS[issue.code] + text[issue.end:]
            counts[issue.code] = counts.get(issue.code, 0) + 1
    return text, counts


def strip_html(text: str) -> str:
    """Remove HTML tags (block tags become a line break so words don't run together) and unescape entities.
    Text without HTML comes back unchanged: "a < b", "List<String>" and <EMAIL> placeholders are kept."""
    if not any(code == "html" for code, _, _ in _find_markup(text)):
        return text
    stripped = _SCRIPT.sub("", text)  # script and style bodies are code, not text
    stripped = _TAG.sub(lambda m: _tag_replacement(m.group(0), m.group(2).lower()), stripped)
    # Unescape only what _ENTITY accepted: html.unescape on the whole text also turns "a &not b" into "a ¬ b".
    stripped = _ENTITY.sub(lambda m: html.unescape(m.group()), stripped)
    return stripped.strip()


def _tag_replacement(tag: str, name: str) -> str:
    if name not in _HTML_ELEMENTS:
        return tag
    return "\n" if name in _BLOCK_ELEMENTS else ""


@cache
def _ftfy_config():
    from ftfy import TextFixerConfig

    # Encoding repairs only. The rest would change text that isn't broken (curly quotes, ligatures, full-width
    # characters) or belongs to another step (HTML entities: strip_html; NFC and line breaks: normalize_text).
    return TextFixerConfig(unescape_html=False, remove_terminal_escapes=False, fix_latin_ligatures=False,
                           fix_character_width=False, uncurl_quotes=False, fix_line_breaks=False,
                           remove_control_chars=False, normalization=None, explain=False)


def fix_mojibake(text: str) -> str:
    """Re-decode UTF-8 that was read as Latin-1/Windows-1252 ("cafÃ©" -> "café"); other text is unchanged."""
    if text.isascii():
        return text
    import ftfy

    return ftfy.fix_text(text, _ftfy_config())


_NEWLINES = re.compile(r"\r\n?")
_TRAILING = re.compile(r"[ \t]+$", re.MULTILINE)
_INNER_RUN = re.compile(r"(?<=\S)(?:[ \t]{2,}|\t)(?=\S)")  # between words only: code indentation stays
_BLANK_RUN = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    """NFC, \\n line ends, no trailing spaces, one space between words, at most one blank line, stripped."""
    text = unicodedata.normalize("NFC", text)
    text = _NEWLINES.sub("\n", text)
    text = _TRAILING.sub("", text)
    text = _INNER_RUN.sub(" ", text)
    return _BLANK_RUN.sub("\n\n", text).strip()
