import csv

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunesmith.data.content import (FIXES, KINDS, fix_mojibake, normalize_text, redact_pii, scan_text,
                                    strip_html)


def codes(text: str) -> list[str]:
    return [issue.code for issue in scan_text(text)]


# (support-ticket sentence, expected code, expected matched text)
POSITIVES = [
    ("Please write to jane.doe+billing@example.co.uk and we'll reply.", "pii_email", "jane.doe+billing@example.co.uk"),
    ("Call us on 0800 555 0199 any time.", "pii_phone", "0800 555 0199"),
    ("Reach me at +44 20 7946 0958.", "pii_phone", "+44 20 7946 0958"),
    ("Our US line is +1 (555) 123-4567, open 24/7.", "pii_phone", "+1 (555) 123-4567"),
    ("My number is (555) 123-4567, call after 5pm.", "pii_phone", "(555) 123-4567"),
    ("Call 555-123-4567 to reach billing.", "pii_phone", "555-123-4567"),
    ("Toll free: 1-800-555-0199.", "pii_phone", "1-800-555-0199"),
    ("Appelez le 06 12 34 56 78 demain.", "pii_phone", "06 12 34 56 78"),
    ("My card is 4111 1111 1111 1111, please update it.", "pii_card", "4111 1111 1111 1111"),
    ("Charge 5555-5555-5555-4444 instead.", "pii_card", "5555-5555-5555-4444"),
    ("Amex 378282246310005 was declined.", "pii_card", "378282246310005"),
    ("Refund to GB82 WEST 1234 5698 7654 32 please.", "pii_iban", "GB82 WEST 1234 5698 7654 32"),
    ("IBAN: GB82WEST12345698765432", "pii_iban", "GB82WEST12345698765432"),
    ("The server at 192.168.1.20 refused the connection.", "pii_ip", "192.168.1.20"),
    ("Requests came from 2001:db8::8a2e:370:7334 yesterday.", "pii_ip", "2001:db8::8a2e:370:7334"),
    ("Link-local address fe80::1.", "pii_ip", "fe80::1"),
    ("My SSN is 123-45-6789.", "pii_national_id", "123-45-6789"),
    ("NI number AB 12 34 56 C, thanks.", "pii_national_id", "AB 12 34 56 C"),
    ("NI number AB123456C.", "pii_national_id", "AB123456C"),
    ("Your order {{Order Number}} has shipped.", "placeholder", "{{Order Number}}"),
    ("Hi {customer_name}, thanks for waiting.", "placeholder", "{customer_name}"),
    ("Welcome to [Company Name] support.", "placeholder", "[Company Name]"),
    ("Regards, [NAME]", "placeholder", "[NAME]"),
    ("Contact <EMAIL> for help.", "placeholder", "<EMAIL>"),
    ("<p>Your refund is on its way.", "html", "<p>"),
    ("Done.</div>", "html", "</div>"),
    ("Line one<br/>line two", "html", "<br/>"),
    ('See <a href="https://example.com/help">the help page.', "html", '<a href="https://example.com/help">'),
    ("Terms &amp; conditions apply.", "html", "&amp;"),
    ("Price:&nbsp;€25", "html", "&nbsp;"),
    ("It&#39;s fixed.", "html", "&#39;"),
    ("Your cafÃ© order is ready.", "mojibake", "fÃ©"),
    ("I donâ€™t see my refund.", "mojibake", "â€"),
]


@pytest.mark.parametrize(("text", "code", "match"), POSITIVES, ids=[p[1] + ":" + p[2] for p in POSITIVES])
def test_finds_each_kind_with_its_offsets(text, code, match):
    hits = [issue for issue in scan_text(text) if issue.code == code]
    assert [h.match for h in hits] == [match]
    assert (hits[0].start, hits[0].end) == (text.index(match), text.index(match) + len(match))
    assert hits[0].kind == KINDS[code]


NEGATIVES = [
    "Plans cost €25 a month, or 1,299.00 per year.",
    "Your order shipped on 2024-03-15 and should arrive by 15/03/2024.",
    "Our team is available from 10:30 to 17:45, and the meeting is at 10:30:00.",
    "Text PORT to 5055 to keep your number, or text STATUS to 5050.",
    "Please update to version 2.0.1 or build 10.0.19041.1.",
    "If a < b > c then the filter keeps the row.",
    "Return a List<String> from the handler.",
    "See [1] and [the docs](https://example.com/docs), or [Docs](https://example.com).",
    "Use std::vector and the ratio 3:2.",
    "Ticket 12345678 is closed; ISBN 978-3-16-148410-0.",
    "Thanks for the naïve question about the “café” — it’s fine.",
    "Set {x} to 1 and email us at support at example dot com, or me@home.",
    "AT&T customers: press 1 & hold.",
    "Invalid SSNs 666-12-3456, 000-12-3456, 912-34-5678, 123-00-4567, 123-45-0000.",
    "Sample NI numbers QQ 12 34 56 C and GB 12 34 56 A are never issued.",
    "Order total 3 × €19.99 = €59.97 (incl. 20% VAT).",
    "[Solved] Login loop after the update, see [Edit] below.",
]


@pytest.mark.parametrize("text", NEGATIVES)
def test_ordinary_support_text_raises_nothing(text):
    assert scan_text(text) == []


def test_luhn_decides_whether_a_card_number_is_reported():
    assert codes("Card 4111 1111 1111 1111 on file.") == ["pii_card"]
    assert codes("Card 4111 1111 1111 1112 on file.") == []
    assert codes("Ref 4111111111111111234567 on file.") == []  # a longer digit run is not a card


def test_iban_checksum_decides_whether_an_iban_is_reported():
    assert codes("Pay GB82 WEST 1234 5698 7654 32 today.") == ["pii_iban"]
    assert codes("Pay GB82 WEST 1234 5698 7654 33 today.") == []


def test_card_and_iban_take_precedence_over_phone():
    # "0044 0532 0130" inside the IBAN looks like a UK phone number on its own.
    assert codes("IBAN DE89 3704 0044 0532 0130 00 please") == ["pii_iban"]
    assert codes("Card 4111-1111-1111-1111") == ["pii_card"]


def test_issues_are_ordered_by_offset_and_slice_the_text():
    text = "Hi {{Customer Name}}, mail <b>bo@example.com</b> or call 555-123-4567 from 10.0.0.1."
    issues = scan_text(text)
    assert [i.code for i in issues] == ["placeholder", "html", "pii_email", "html", "pii_phone", "pii_ip"]
    assert [i.start for i in issues] == sorted(i.start for i in issues)
    assert all(text[i.start:i.end] == i.match for i in issues)


def test_redact_pii_replaces_with_typed_placeholders_and_counts():
    text = ("Mail ann@example.com or bo@example.org, call +44 20 7946 0958, card 4111 1111 1111 1111, "
            "IBAN GB82 WEST 1234 5698 7654 32, IP 192.168.1.20, SSN 123-45-6789. Plans cost €25.")
    redacted, counts = redact_pii(text)
    assert redacted == ("Mail <EMAIL> or <EMAIL>, call <PHONE>, card <CARD>, IBAN <IBAN>, IP <IP>, SSN <ID>. "
                        "Plans cost €25.")
    assert counts == {"pii_email": 2, "pii_phone": 1, "pii_card": 1, "pii_iban": 1, "pii_ip": 1,
                      "pii_national_id": 1}
    assert {i.code for i in scan_text(redacted)} == {"placeholder"}  # not html, not PII
    assert redact_pii(redacted) == (redacted, {})


def test_redact_pii_catches_an_email_exposed_by_an_earlier_redaction():
    redacted, counts = redact_pii("a@b.cc.x@d.ee")
    assert "@" not in redacted and counts == {"pii_email": 2}


def test_strip_html_removes_tags_and_unescapes_entities():
    assert strip_html("<p>Hello &amp; welcome</p><p>Bye</p>") == "Hello & welcome\n\nBye"
    assert strip_html('<b>Bold</b> and <a href="https://x.example">a link</a>') == "Bold and a link"
    assert strip_html("Line one<br/>line two") == "Line one\nline two"
    assert strip_html("It&#39;s Tom &amp; Jerry&nbsp;time") == "It's Tom & Jerry\xa0time"
    assert strip_html("<script>alert(1)</script><div>Hi</div>") == "Hi"


@pytest.mark.parametrize("text", ["a < b > c", "Return a List<String>.", "Contact <EMAIL> soon",
                                  "AT&T; a &not b", "  plain text  "])
def test_strip_html_leaves_text_without_html_unchanged(text):
    assert strip_html(text) == text


def test_strip_html_keeps_placeholders_next_to_real_tags():
    assert strip_html("<p>Write to <EMAIL></p>") == "Write to <EMAIL>"


def test_fix_mojibake_repairs_encoding_only():
    assert fix_mojibake("cafÃ©") == "café"
    assert fix_mojibake("I donâ€™t see it") == "I don’t see it"  # the curly quote stays curly
    for clean in ["café", "“quoted” it’s", "ﬁnal ＡＢＣ", "Tom &amp; Jerry", "plain ascii", "e\u0301"]:
        assert fix_mojibake(clean) == clean


def test_normalize_text_rules():
    assert normalize_text("e\u0301") == "\u00e9"  # NFC
    assert normalize_text("a\r\nb\rc") == "a\nb\nc"
    assert normalize_text("a   \nb\t \nc") == "a\nb\nc"
    assert normalize_text("one  two\t\tthree \t four") == "one two three four"
    assert normalize_text("a\n\n\n\n\nb\n \n\nc") == "a\n\nb\n\nc"
    assert normalize_text("  \n  hello  \n\n ") == "hello"
    assert normalize_text("def f():\n    return 1") == "def f():\n    return 1"  # indentation kept


def test_every_code_has_a_kind_and_a_fix():
    assert set(FIXES) == set(KINDS) == {"pii_email", "pii_phone", "pii_card", "pii_iban", "pii_ip",
                                        "pii_national_id", "placeholder", "html", "mojibake"}
    assert "<EMAIL>" in FIXES["pii_email"] and "--redact-pii" in FIXES["pii_email"]
    assert all(fix and "\n" not in fix for fix in FIXES.values())


def test_real_support_data_reports_placeholders_and_no_false_alarms(shared_data):
    path = shared_data / "bitext_customer_support" / "Bitext_Sample_Customer_Support_Training_Dataset.csv"
    with path.open(newline="", encoding="utf-8") as f:
        texts = [row[k] for row in csv.DictReader(f) for k in ("instruction", "response")]
    found = {}
    for text in texts:
        issues = scan_text(text)
        assert ("{{" in text) == any(i.code == "placeholder" and i.match.startswith("{{") for i in issues)
        for issue in issues:
            found.setdefault(issue.code, []).append(issue.match)
    # The corpus is anonymised: its only PII is one generic support address.
    assert set(found) <= {"placeholder", "pii_email"}
    assert set(found.get("pii_email", [])) <= {"support@company.com"}


@settings(max_examples=300, database=None, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet="ab19.@-+_: <>{}[]&;#\n")))
def test_scan_and_redact_never_raise_and_leave_no_email(text):
    issues = scan_text(text)
    assert all(text[i.start:i.end] == i.match for i in issues)
    redacted, _ = redact_pii(text)
    assert not any(i.code == "pii_email" for i in scan_text(redacted))
