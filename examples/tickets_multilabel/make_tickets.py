"""Write the multi-label support-ticket example: 480 tickets, each tagged with 1-3 of 6 topics.

Every sentence here was written for tunesmith (no third-party text). A ticket is an opener, one fragment per
topic (fragments have slots filled from small word lists, so wording varies), and a closer. Deterministic:
running it again rewrites identical train.jsonl (400 rows) and test.jsonl (80 rows).

    python examples/tickets_multilabel/make_tickets.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TOPICS: dict[str, list[str]] = {
    "billing": [
        "I was charged {amount} twice for the same {plan} subscription this month.",
        "My invoice shows a fee of {amount} that I never agreed to.",
        "The card ending in {digits} was billed even though I switched to the free tier.",
        "Can someone explain why the {plan} price went up by {amount} without notice?",
        "Your payment page keeps declining my card, but my bank says nothing is wrong.",
        "I need a VAT invoice for last {weekday}'s purchase for my accountant.",
        "There is a pending charge of {amount} on my statement that I don't recognise.",
        "Please update the billing address on my account before the next payment goes out.",
        "I was promised a discount on the {plan} plan and it was not applied to the bill.",
        "The annual renewal took {amount} from my account a week early.",
    ],
    "delivery": [
        "My parcel was supposed to arrive on {weekday} and the tracking hasn't moved since.",
        "The courier marked order {order} as delivered, but nothing reached my door.",
        "The box for order {order} showed up crushed and soaked.",
        "Delivery has been pushed back three times now for my {item}.",
        "The tracking link in your email just says 'label created' after {days} days.",
        "Can you ship the {item} to my office instead of my home address?",
        "Only half of order {order} arrived; the {item} is missing from the package.",
        "The driver left my {item} outside in the rain with no photo or note.",
        "I paid for express shipping and the {item} is still not here after {days} days.",
        "Which carrier handles order {order}? Their site doesn't recognise the tracking number.",
    ],
    "account": [
        "I can't log in: the password reset email never arrives.",
        "My account got locked after a few wrong passwords and I am stuck.",
        "Please change the email on my profile to my new work address.",
        "Someone signed in to my account from a device I don't own on {weekday}.",
        "The two-factor code from the app is always rejected.",
        "I would like to delete my account and all the data you hold about me.",
        "How do I add a second user to our team account?",
        "My username changed by itself and I can't find my saved {item} settings.",
        "The verification link says it expired even though I clicked it right away.",
        "I want to merge my two accounts, one from my old email and one from the new one.",
    ],
    "technical": [
        "The app crashes as soon as I open the settings screen on my phone.",
        "Your website shows an error 500 when I try to check out.",
        "The {item} won't pair over Bluetooth no matter how often I restart it.",
        "Since the last update the dashboard takes about {days} minutes to load.",
        "Exports to CSV come out empty even though the report shows data on screen.",
        "The firmware update for my {item} stopped at 60% and now it won't turn on.",
        "Notifications stopped working on my tablet after {weekday}'s update.",
        "The search bar returns nothing, even for products I can see in the catalogue.",
        "The {item} keeps disconnecting from Wi-Fi every few minutes.",
        "Uploading a photo fails with a message about an unsupported format, but it's a normal JPEG.",
    ],
    "returns": [
        "I want to send the {item} back; it is not what I expected.",
        "How do I get a return label for order {order}?",
        "I returned the {item} {days} days ago and still haven't seen my refund.",
        "The {item} is faulty and I'd like a replacement rather than my money back.",
        "Can I exchange the {item} for a different size?",
        "Your returns portal says order {order} is outside the return window, but it has only been {days} days.",
        "The shop refused my return in person and told me to contact support.",
        "I received the refund for order {order} but it is {amount} short.",
        "Do I have to pay for shipping when I return a damaged {item}?",
        "Please cancel my return request; I've decided to keep the {item}.",
    ],
    "feedback": [
        "Just wanted to say the agent I spoke with on {weekday} was really patient and helpful.",
        "Honestly, the new design of the app is confusing and harder to use than before.",
        "It would be great if you offered the {item} in more colours.",
        "Your support team solved my last problem in minutes, thank you.",
        "I'm disappointed with how long it takes to get an answer from your team.",
        "Suggestion: let us schedule deliveries for the evening.",
        "The quality of the {item} is much better than I expected for the price.",
        "I've been a customer for years and this is the first time I'm unhappy.",
        "Please bring back the old checkout page, it was much quicker.",
        "Five stars for the packaging, everything was neat and recyclable.",
    ],
}
SLOTS = {
    "amount": ["$12.99", "$45", "€30", "£19.50", "$7.20", "$120", "€8.99"],
    "plan": ["Basic", "Pro", "Family", "Business", "Premium"],
    "digits": ["4821", "0937", "5510", "7764"],
    "weekday": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "order": ["#A1043", "#B2290", "#C7781", "#D0412", "#E5567", "#F3318", "#G9920"],
    "item": ["headphones", "smart watch", "desk lamp", "coffee grinder", "router", "backpack", "speaker",
             "keyboard", "running shoes", "phone case"],
    "days": ["two", "three", "five", "six", "ten", "twelve"],
}
OPENERS = ["Hi,", "Hello team,", "Good morning,", "Hi there.", "Hey,", "Dear support,", "", "", "Hello,"]
CLOSERS = ["Thanks.", "Thank you in advance.", "Please help.", "Regards, {name}", "Cheers, {name}", "",
           "Looking forward to your reply.", "This is urgent.", ""]
CONNECTORS = ["", "Also, ", "On top of that, ", "And ", "Separately, ", "One more thing: ", "Besides, "]
NAMES = ["Maya", "Tom", "Priya", "Lukas", "Aiko", "Omar", "Sofia", "Diego", "Nora", "Kwame"]


def fill(rng: random.Random, template: str) -> str:
    return template.format(**{k: rng.choice(v) for k, v in SLOTS.items()}, name=rng.choice(NAMES))


def ticket(rng: random.Random) -> dict:
    k = rng.choices([1, 2, 3], weights=[50, 35, 15])[0]
    topics = rng.sample(sorted(TOPICS), k)
    parts = [rng.choice(OPENERS)]
    for i, topic in enumerate(topics):
        sentence = fill(rng, rng.choice(TOPICS[topic]))
        connector = rng.choice(CONNECTORS) if i else ""
        parts.append(connector + (sentence[0].lower() + sentence[1:] if connector else sentence))
    parts.append(fill(rng, rng.choice(CLOSERS)))
    return {"text": " ".join(p for p in parts if p), "labels": sorted(topics)}


def main() -> None:
    rng = random.Random(2026)
    rows, seen = [], set()
    while len(rows) < 480:
        row = ticket(rng)
        if row["text"] not in seen:  # no exact duplicates, so the split cannot leak
            seen.add(row["text"])
            rows.append(row)
    here = Path(__file__).resolve().parent
    for name, part in (("train.jsonl", rows[:400]), ("test.jsonl", rows[400:])):
        (here / name).write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")


if __name__ == "__main__":
    main()
