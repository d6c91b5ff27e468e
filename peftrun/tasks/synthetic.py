"""`synthetic`: a built-in, deterministic E2E-like table-to-text task that needs no files and no network.

Each input is a small restaurant table: name and type always, plus one to three of food, price, customer rating,
area, family friendly. It is linearised exactly as E2E (`name : Blue Spice | Type : pub | food : Italian`) and has
three references, one per fixed sentence template. Measured with the random-init tiny-gpt2, method=full, lr 1e-3
(first 30/50 validation inputs, greedy): BLEU 24.7 after 400 steps of batch 8 (the inputs not yet copied), 88.1
after 1,500 steps of batch 16 (226 s on 2 CPU cores). Sizes: train 700 inputs (2,100 pairs with grouped=False),
validation 100, test 100; the three splits have disjoint inputs. The data never depend on trainer.seed.
"""

from __future__ import annotations

import random
from pathlib import Path

from peftrun.errors import PeftrunError
from peftrun.tasks.base import register_task
from peftrun.tasks.e2e import ATTRIBUTE_NAMES
from peftrun.tasks.table_to_text import Group, TableToTextTask

SEED = 20170601
SIZES = {"train": 700, "validation": 100, "test": 100}
NAMES = (
    "The Eagle", "Blue Spice", "Zizzi", "Aromi", "Cotto", "The Mill", "Loch Fyne", "The Olive Grove", "Green Man",
    "The Punter", "Alimentum", "Fitzbillies", "The Phoenix", "Wildwood", "Strada", "Giraffe", "Midsummer House",
    "The Rice Boat", "Clowns", "The Golden Curry", "Browns Cambridge", "Cocum", "The Wrestlers", "Travellers Rest",
)  # fmt: skip
TYPES = ("restaurant", "pub", "coffee shop")
OPTIONAL = {
    "food": ("Italian", "French", "Chinese", "Indian", "Japanese", "English"),
    "priceRange": ("cheap", "moderate", "high"),
    "customer rating": ("low", "average", "high"),
    "area": ("city centre", "riverside"),
    "familyFriendly": ("yes", "no"),
}
ORDER = ("name", "eatType", "food", "priceRange", "customer rating", "area", "familyFriendly")  # E2E's order
PRICE_ADJ = {"cheap": "cheap", "moderate": "moderately priced", "high": "expensive"}
PRICE_LEVEL = {"cheap": "low", "moderate": "moderate", "high": "high"}


def _a(phrase: str) -> str:
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def _v0(t: dict[str, str]) -> str:
    head = f"{t['name']} is {_a(' '.join(x for x in (t.get('food'), t['eatType']) if x))}"
    parts = [head + (f" in the {t['area']}" if "area" in t else "") + "."]
    if "priceRange" in t:
        parts.append(f"It is {PRICE_ADJ[t['priceRange']]}.")
    if "customer rating" in t:
        parts.append(f"It has {_a(t['customer rating'])} customer rating.")
    if "familyFriendly" in t:
        parts.append("It is family friendly." if t["familyFriendly"] == "yes" else "It is not family friendly.")
    return " ".join(parts)


def _v1(t: dict[str, str]) -> str:
    head = f"There is {_a(t['eatType'])} called {t['name']}"
    head += f" in the {t['area']}" if "area" in t else ""
    head += f" that serves {t['food']} food" if "food" in t else ""
    parts = [head + "."]
    if "priceRange" in t:
        parts.append(f"Prices are {PRICE_LEVEL[t['priceRange']]}.")
    if "customer rating" in t:
        parts.append(f"Customers rate it {t['customer rating']}.")
    if "familyFriendly" in t:
        parts.append("Children are welcome." if t["familyFriendly"] == "yes" else "It is not suitable for children.")
    return " ".join(parts)


def _v2(t: dict[str, str]) -> str:
    head = f"Located in the {t['area']}, {t['name']} is" if "area" in t else f"{t['name']} is"
    head += f" {_a(t['eatType'])}" + (f" that offers {t['food']} food" if "food" in t else "")
    parts = [head + "."]
    if "priceRange" in t:
        parts.append(f"{t['name']} has {PRICE_LEVEL[t['priceRange']]} prices.")
    if "customer rating" in t:
        parts.append(f"Its customer rating is {t['customer rating']}.")
    if "familyFriendly" in t:
        parts.append("It is kid friendly." if t["familyFriendly"] == "yes" else "It is not kid friendly.")
    return " ".join(parts)


def _table(rng: random.Random) -> dict[str, str]:
    table = {"name": rng.choice(NAMES), "eatType": rng.choice(TYPES)}
    for key in rng.sample(sorted(OPTIONAL), rng.randint(1, 3)):
        table[key] = rng.choice(OPTIONAL[key])
    return {k: table[k] for k in ORDER if k in table}


def build_splits() -> dict[str, list[Group]]:
    """All three splits, drawn from one seeded stream without repeating an input."""
    rng = random.Random(SEED)
    seen: set[str] = set()
    splits: dict[str, list[Group]] = {}
    for split, size in SIZES.items():
        groups: list[Group] = []
        while len(groups) < size:
            table = _table(rng)
            mr = ", ".join(f"{k}[{v}]" for k, v in table.items())
            if mr in seen:
                continue
            seen.add(mr)
            source = " | ".join(f"{ATTRIBUTE_NAMES.get(k, k)} : {v}" for k, v in table.items())
            groups.append(Group(mr, source, (_v0(table), _v1(table), _v2(table)), {"mr": mr}))
        splits[split] = groups
    return splits


_SPLITS: dict[str, list[Group]] = {}


@register_task("synthetic")
class SyntheticTask(TableToTextTask):
    """The offline demo task (see the module doc); scored like E2E (case-insensitive 13a BLEU when bleu_lowercase)."""

    bleu_style = "13a"

    def groups(self, split: str) -> list[Group]:
        if self.cfg.data_dir or self.cfg.hub_id:
            raise PeftrunError("synthetic: the task is built in and reads no data; set task.data_dir=null task.hub_id=null")
        if not _SPLITS:
            _SPLITS.update(build_splits())
        return _SPLITS[split]

    def read_local(self, data_dir: Path, split: str) -> list[Group]:  # never called: groups() is overridden
        return self.groups(split)

    def read_hub(self, split: str) -> list[Group]:  # never called: groups() is overridden
        return self.groups(split)
