"""The text the tiny backbones' tokenizers are trained on (offline, deterministic).

A few thousand lines in the registers peftrun's tasks use: E2E-style meaning representations and
restaurant descriptions, subject | relation | object triples and their verbalisations, short news
prose, question/answer and entailment phrasing, and SQL. Byte-level BPE on top of it covers any text
(unknown words fall back to bytes); the corpus only decides which merges exist, i.e. how short common
task text becomes. `corpus_text()` is a pure function of this file, so its hash keys the cache.
"""

from __future__ import annotations

import random

_NAMES = (
    "The Eagle", "The Mill", "Alimentum", "Aromi", "Bibimbap House", "Blue Spice", "Browns Cambridge",
    "Clowns", "Cocum", "Cotto", "Fitzbillies", "Giraffe", "Green Man", "Loch Fyne", "Midsummer House",
    "Strada", "Taste of Cambridge", "The Cambridge Blue", "The Cricketers", "The Dumpling Tree",
    "The Golden Curry", "The Golden Palace", "The Phoenix", "The Plough", "The Punter", "The Rice Boat",
    "The Twenty Two", "The Vaults", "The Waterman", "The Wrestlers", "Wildwood", "Zizzi",
)
_EAT_TYPES = ("restaurant", "coffee shop", "pub")
_FOODS = ("French", "Italian", "Chinese", "Japanese", "Indian", "English", "Fast food")
_PRICES = ("cheap", "moderate", "high", "less than £20", "£20-25", "more than £30")
_RATINGS = ("low", "average", "high", "1 out of 5", "3 out of 5", "5 out of 5")
_AREAS = ("city centre", "riverside")
_NEAR = ("Café Rouge", "Raja Indian Cuisine", "The Portland Arms", "Burger King", "Crowne Plaza Hotel",
         "Express by Holiday Inn", "All Bar One", "Rainbow Vegetarian Café", "Café Sicilia", "Yippee Noodle Bar")

_SUBJECTS = (
    "Alan Bean", "Aarhus Airport", "Abilene, Texas", "Ajoblanco", "Alba Iulia", "Amsterdam", "Arem-arem",
    "Atlanta", "Bakewell pudding", "Baku Turkish Martyrs' Memorial", "Buzz Aldrin", "Elliot See", "Acharya Institute",
    "Ace Wilder", "Agra Airport", "Allama Iqbal International Airport", "Antwerp International Airport",
    "Asilomar Conference Grounds", "Bananaman", "Big Hero 6", "Apollo 12", "Texas", "Denmark", "Pakistan",
    "the United States", "India", "Indonesia", "Romania", "Belgium", "Karnataka", "London", "Spain",
)
_RELATIONS = (
    ("birthPlace", "was born in"), ("country", "is in"), ("location", "is located in"),
    ("leaderName", "is led by"), ("capital", "has the capital"), ("runwayLength", "has a runway length of"),
    ("elevationAboveTheSeaLevel", "is at an elevation of"), ("ingredient", "contains"),
    ("operatingOrganisation", "is operated by"), ("occupation", "worked as"), ("nationality", "is a national of"),
    ("dateOfBirth", "was born on"), ("almaMater", "graduated from"), ("creator", "was created by"),
    ("starring", "stars"), ("architect", "was designed by"), ("foundingYear", "was founded in"),
    ("populationTotal", "has a population of"), ("language", "speaks"), ("genre", "is a work of"),
)
_OBJECTS = (
    "New Hampshire", "NASA", "Apollo 12", "test pilot", "1930-03-15", "Texas", "Denmark", "Spain", "Garlic",
    "Bread", "Romania", "Klaus Iohannis", "Pakistan", "Indian Air Force", "2,776.0", "25.0 metres", "English",
    "United States", "Julia Morgan", "1920", "Brussels", "Karnataka", "Belgium", "Jack Kirby", "Ryan Potter",
    "University of Texas at Austin", "science fiction", "Tirthankara", "Bangalore", "88,000",
)

_PROSE = """\
The government said on Tuesday that it would announce new measures to support small businesses.
Officials confirmed that the bridge, which was closed last year after storms, will reopen in the spring.
Police are appealing for witnesses after a car was stolen from a street in the town centre on Sunday night.
The company reported higher profits for the third quarter, helped by strong sales in Europe and Asia.
Scientists have found that the number of birds visiting gardens in the winter has fallen by a third.
A new study suggests that children who read every day perform better in school than those who do not.
The match ended in a draw after the home side scored a late goal in the second half.
Thousands of people gathered in the city to celebrate the anniversary of the festival.
The council has approved plans for a new school, a library and two hundred homes near the river.
Doctors warned that waiting times at the hospital have reached their highest level for ten years.
The museum will display the paintings for the first time since they were restored.
Researchers at the university trained a model on millions of sentences to translate between languages.
Fine-tuning a large pretrained language model updates all of its parameters, which is expensive.
Parameter-efficient methods such as adapters, prefix tuning and low-rank adaptation train only a few parameters.
A low-rank update is the product of two small matrices, added to the frozen weight of a projection.
An adapter is a small bottleneck network inserted after a sublayer, with a residual connection.
Prefix tuning prepends trainable key and value vectors to every attention layer of the network.
The question is whether the passage supports the hypothesis, contradicts it, or neither.
Question: Is the sky blue on a clear day? Answer: yes. Question: Can a fish climb a tree? Answer: no.
Premise: The man is playing a guitar on the stage. Hypothesis: A person is performing music. Entailment.
The word "bank" means the side of a river in one sentence and a place that keeps money in the other.
The effect was that the ground became wet. What was the cause? It rained during the night.
Summarize: the article describes how the town prepared for the flood and how volunteers helped residents.
Translate English to Romanian: The weather is nice today. Traducere: Vremea este frumoasă astăzi.
"""

_SQL = (
    "SELECT count(*) FROM head WHERE age > 56",
    "SELECT name , born_state , age FROM head ORDER BY age",
    "SELECT T1.name FROM customers AS T1 JOIN orders AS T2 ON T1.customer_id = T2.customer_id",
    "SELECT product_name FROM products GROUP BY product_name HAVING count(*) > 1",
    "SELECT avg(price) , max(price) , min(price) FROM products WHERE product_type_code = 'Hardware'",
    "SELECT DISTINCT department_name FROM departments WHERE department_id IN (SELECT department_id FROM staff)",
    "SELECT staff_name FROM staff EXCEPT SELECT staff_name FROM staff_department_assignments",
    "SELECT supplier_id FROM product_suppliers ORDER BY total_amount_purchased DESC LIMIT 3",
)


def _e2e_pair(rng: random.Random) -> str:
    name, eat, food = rng.choice(_NAMES), rng.choice(_EAT_TYPES), rng.choice(_FOODS)
    price, rating, area, near = rng.choice(_PRICES), rng.choice(_RATINGS), rng.choice(_AREAS), rng.choice(_NEAR)
    family = rng.choice(("yes", "no"))
    mr = (
        f"name[{name}], eatType[{eat}], food[{food}], priceRange[{price}], customer rating[{rating}], "
        f"area[{area}], familyFriendly[{family}], near[{near}]"
    )
    kids = "is family friendly" if family == "yes" else "is not family-friendly"
    refs = (
        f"{name} is a {eat} that serves {food} food in the {price} price range. It {kids}.",
        f"Located in the {area} near {near}, {name} is a {food} {eat} with a {rating} customer rating.",
        f"There is a {price} {eat} called {name} near {near} in the {area}. It has a {rating} rating and {kids}.",
    )
    return mr + "\n" + rng.choice(refs)


def _triple_pair(rng: random.Random) -> str:
    triples = []
    text = []
    for _ in range(rng.randint(1, 3)):
        subject, (relation, verb), obj = rng.choice(_SUBJECTS), rng.choice(_RELATIONS), rng.choice(_OBJECTS)
        triples.append(f"{subject} | {relation} | {obj}")
        text.append(f"{subject} {verb} {obj}.")
    return " && ".join(triples) + "\n" + " ".join(text)


def corpus_documents(lines: int = 3000) -> list[str]:
    """The corpus as documents: fixed prose and SQL, then `lines` generated task-like pairs (a meaning
    representation or triples, a newline, their text), then number lines (deterministic)."""
    rng = random.Random(20240611)
    parts = [_PROSE, *_SQL]
    for index in range(lines):
        parts.append(_e2e_pair(rng) if index % 2 == 0 else _triple_pair(rng))
    parts.extend(f"{n} {n * 7} {n / 4:.2f} {1900 + n}" for n in range(0, 200, 3))
    return parts


def corpus_text(lines: int = 3000) -> str:
    """The tokenizer's training text: the documents one after another (deterministic)."""
    return "\n".join(corpus_documents(lines)) + "\n"
