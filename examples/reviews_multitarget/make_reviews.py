"""Write the multi-target regression example: product reviews scored for quality (1-5) and delivery (1-5).

Every sentence here was written for tunesmith (no third-party text). A review is one remark on the product,
whose wording sets its quality score, and one on the delivery, whose wording sets its delivery score, in either
order. Deterministic: running it again rewrites identical train.csv (60 rows) and test.csv (20 rows).

    python examples/reviews_multitarget/make_reviews.py
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

QUALITY = {
    1: ["The {item} broke on the first day.", "The {item} is junk and went straight back."],
    2: ["The {item} feels cheap and wobbles.", "The {item} works, barely, and looks worn already."],
    3: ["The {item} is fine for the price.", "The {item} does the job, nothing special."],
    4: ["The {item} is solid and well made.", "I like the {item}; it feels sturdy."],
    5: ["The {item} is superb, the best I have owned.", "The {item} is flawless and beautifully finished."],
}
DELIVERY = {
    1: ["It took a month to arrive.", "Delivery was weeks late and the box was crushed."],
    2: ["Shipping was slow.", "It arrived a week after the promised date."],
    3: ["It came within the usual week.", "Delivery was on time."],
    4: ["It arrived in two days.", "Shipping was quick."],
    5: ["It was at my door the next morning.", "Delivery was astonishingly fast, same day."],
}
ITEMS = ["lamp", "kettle", "chair", "backpack", "desk", "blender", "jacket", "toaster"]


def reviews(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(n):
        quality, delivery = rng.randint(1, 5), rng.randint(1, 5)
        parts = [rng.choice(QUALITY[quality]).format(item=rng.choice(ITEMS)), rng.choice(DELIVERY[delivery])]
        rng.shuffle(parts)
        rows.append({"review": " ".join(parts), "quality": quality, "delivery": delivery})
    return rows


def main() -> None:
    here = Path(__file__).resolve().parent
    rng = random.Random(7)
    for name, n in (("train.csv", 60), ("test.csv", 20)):
        with open(here / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["review", "quality", "delivery"])
            writer.writeheader()
            writer.writerows(reviews(n, rng))


if __name__ == "__main__":
    main()
