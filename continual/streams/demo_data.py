"""Built-in "demo" stream: four small intent-classification tasks generated in code.

Why generate data instead of shipping or downloading a dataset?  The package's
default experiment has to run offline, in seconds, on any machine, with no data
files and no network access.  A template grammar gives us that: it is tiny,
deterministic for a given seed, and free of licensing questions.

Why split by *template* rather than by sentence?  If train and test sentences
came from the same templates, a model could score well by memorising phrase
skeletons ("{please} move {amount} to my {account}") and the test accuracy would
say little about generalisation.  Here the last ``_N_TEST_TEMPLATES`` templates
of every label are reserved for the test split, so a test sentence always has a
phrasing the learner never saw during training; the shared slot fillers
(amounts, cities, dishes, ...) keep the vocabulary overlap realistic. The
validation split is drawn from the same held-out templates (never a test
sentence), as a dev set is drawn like the test set: a rejection threshold
calibrated on it then means on new phrasings what it says.

Each task is a different domain so that a continual learner sees a genuine
distribution shift from one task to the next (banking -> travel -> cooking ->
fitness), which is what makes forgetting measurable.
"""

from __future__ import annotations

import itertools
import random
from string import Formatter

DEMO_TASKS: tuple[str, ...] = ("banking", "travel", "cooking", "fitness")

_SPLITS: tuple[str, ...] = ("train", "validation", "test")
_PER_LABEL = {"train": 60, "validation": 10, "test": 20}
# With 8 templates per label this reserves 25% of the phrasings for test.
_N_TEST_TEMPLATES = 2

# Politeness/casual prefixes are shared by every domain; "" keeps bare commands.
_COMMON_SLOTS: dict[str, list[str]] = {
    "please": ["", "please", "can you", "could you", "hey,"],
}

# Per-domain slot fillers.  Fillers are chosen so that every template stays
# grammatical (e.g. all fillers used after "a" start with a consonant).
_SLOTS: dict[str, dict[str, list[str]]] = {
    "banking": {
        "amount": ["$50", "$200", "500 dollars", "a hundred bucks", "$1,000", "twenty euros", "$75", "300 pounds"],
        "account": [
            "savings account",
            "checking account",
            "joint account",
            "business account",
            "current account",
            "student account",
        ],
        "card": ["debit card", "credit card", "visa card", "bank card", "mastercard"],
        "person": ["my mom", "my landlord", "john", "my sister", "a friend", "my roommate"],
        "when": ["yesterday", "this morning", "last night", "on friday", "an hour ago"],
        "now": ["right now", "today", "at the moment", "after my last paycheck", "this week"],
        "loan": ["mortgage", "car loan", "personal loan", "student loan", "home equity loan"],
        "sum": ["$10,000", "$250,000", "fifty thousand dollars", "$5,000", "twenty grand"],
    },
    "travel": {
        "city": ["paris", "tokyo", "new york", "lisbon", "rome", "berlin", "sydney", "toronto"],
        "day": ["tomorrow", "next friday", "on monday", "this weekend", "next month", "on the 12th"],
        "seat": ["window seat", "aisle seat", "exit row seat", "seat near the front"],
        "hotel": ["cheap hotel", "hostel", "beachfront hotel", "hotel near the station", "boutique hotel"],
        "nights": ["two nights", "three nights", "a week", "one night", "the weekend"],
        "bag": ["suitcase", "bag", "backpack", "carry-on", "duffel bag", "golf bag"],
        "flight": [
            "my flight",
            "the 6pm flight",
            "the morning flight",
            "tonight's flight",
            "flight ua 482",
            "the red-eye",
        ],
        "citizen": ["us citizen", "british citizen", "canadian", "student", "tourist"],
    },
    "cooking": {
        "dish": [
            "lasagna",
            "banana bread",
            "chicken curry",
            "pancakes",
            "risotto",
            "apple pie",
            "beef stew",
            "pad thai",
        ],
        "ingredient": ["eggs", "butter", "buttermilk", "garlic", "heavy cream", "sugar", "flour", "soy sauce"],
        "style": ["from scratch", "for beginners", "without an oven", "for a crowd", "in under an hour"],
        "guests": ["dinner tonight", "my family", "six people", "a party", "two"],
        "temp": ["350 degrees", "180c", "a low heat", "high heat", "400f"],
        "measure": ["two cups", "a tablespoon", "half a cup", "100 grams", "three ounces", "a quart", "250 ml"],
        "unit": ["grams", "ounces", "teaspoons", "milliliters", "cups", "tablespoons"],
        "days": ["three days", "a week", "two days", "five days"],
    },
    "fitness": {
        "exercise": ["squats", "push-ups", "deadlifts", "lunges", "bench press", "pull-ups", "planks", "burpees"],
        "muscle": ["legs", "chest", "back", "shoulders", "core", "arms", "glutes"],
        "duration": ["20 minutes", "half an hour", "an hour", "45 minutes", "ten minutes"],
        "goal": ["lose weight", "build muscle", "get stronger", "improve my endurance", "run a 5k"],
        "food": ["chicken breast", "a banana", "oatmeal", "a protein shake", "greek yogurt", "peanut butter"],
        "activity": ["running", "cycling", "swimming", "a hiit class", "yoga", "rowing"],
    },
}

# Templates per label.  The LAST _N_TEST_TEMPLATES of each list are test-only.
# Test phrasings deliberately avoid the most obvious label keyword where
# possible (e.g. no "visa" in visa_info test templates) so they probe meaning.
_TEMPLATES: dict[str, dict[str, list[str]]] = {
    "banking": {
        "check_balance": [
            "{please} tell me how much is left in my {account}",
            "what's the balance on my {account} {now}",
            "how much money do i have in my {account} {now}",
            "{please} show me my {account} balance",
            "am i overdrawn on my {account} {now}",
            "do i have enough in my {account} to spend {amount}",
            "i need to know what's sitting in my {account} {now}",
            "is there still {amount} available in my {account}",
        ],
        "transfer_money": [
            "{please} move {amount} to my {account}",
            "send {amount} to {person}",
            "i want to transfer {amount} from my {account} to {person}",
            "{please} wire {amount} to {person} today",
            "how do i pay {person} back {amount}",
            "can i shift {amount} over to my {account}",
            "i owe {person} {amount}, can you pay them from my {account}",
            "{please} get {amount} over to {person} asap",
        ],
        "lost_card": [
            "i lost my {card} {when}",
            "{please} block my {card}, it was stolen",
            "someone stole my {card} {when}",
            "help, i can't find my {card} and i last used it {when}",
            "{please} freeze my {card} right away",
            "my {card} went missing {when}",
            "i think i left my {card} in a taxi {when}",
            "{please} cancel my {card} because it's gone",
        ],
        "open_account": [
            "{please} help me open a new {account}",
            "what do i need to open a {account} online",
            "i want to start a {account} with {amount}",
            "{please} set up a {account} for me",
            "what documents do i need for a new {account}",
            "can i open a {account} with just {amount}",
            "{please} register me for a fresh {account}",
            "is it possible to get a second {account} with a {amount} deposit",
        ],
        "loan_rates": [
            "what's the interest rate on a {loan} {now}",
            "{please} tell me your {loan} rates",
            "how much would a {loan} of {sum} cost me per month",
            "are {loan} rates going up {now}",
            "if i borrow {sum} for a {loan}, what's the apr",
            "is the rate on a {loan} fixed or variable",
            "how expensive is borrowing {sum} through a {loan} {now}",
            "{please} quote me a rate for a {loan}",
        ],
    },
    "travel": {
        "book_flight": [
            "{please} book me a flight to {city} {day}",
            "i need a one-way ticket to {city} {day}",
            "find me the cheapest flight to {city} {day}",
            "can i get a {seat} on a flight to {city}",
            "i want to fly out to {city} {day}",
            "are there any direct flights to {city} {day}",
            "get me on a plane heading to {city} {day}",
            "{please} reserve a {seat} for my trip to {city}",
        ],
        "book_hotel": [
            "{please} book a {hotel} in {city}",
            "i need a room in {city} for {nights}",
            "find me a {hotel} in {city} {day}",
            "is there a {hotel} available in {city} for {nights}",
            "reserve a double room in {city} starting {day}",
            "i'd like to stay at a {hotel} for {nights}",
            "looking for somewhere to sleep in {city} for {nights}",
            "{please} get me a {hotel} near downtown {city}",
        ],
        "lost_luggage": [
            "my {bag} never arrived in {city}",
            "the airline lost my {bag} on the way to {city}",
            "{please} help me track down my missing {bag}",
            "i can't find my {bag} at the baggage claim in {city}",
            "who do i call about a lost {bag} in {city}",
            "my {bag} ended up in {city} instead of with me",
            "i landed in {city} but my {bag} didn't",
            "{please} file a report, my {bag} is gone",
        ],
        "flight_status": [
            "is {flight} to {city} on time",
            "has {flight} to {city} been delayed",
            "{please} check the status of {flight} to {city}",
            "what gate does {flight} to {city} leave from",
            "is {flight} from {city} still landing on schedule",
            "did {flight} to {city} get cancelled",
            "any updates on {flight} to {city}",
            "will {flight} out of {city} depart late",
        ],
        "visa_info": [
            "do i need a visa to visit {city} as a {citizen}",
            "how long does a visa for {city} take to process",
            "what are the entry requirements for {city} as a {citizen}",
            "{please} tell me if {city} requires a visa",
            "how long can i stay in {city} without a visa as a {citizen}",
            "can i get a visa on arrival in {city}",
            "what paperwork do i need before entering {city} as a {citizen}",
            "is a travel permit required for {city} {day}",
        ],
    },
    "cooking": {
        "find_recipe": [
            "{please} give me a recipe for {dish}",
            "how do i make {dish} {style}",
            "show me a simple {dish} recipe {style}",
            "i want to cook {dish} for {guests}",
            "what's a good way to make {dish} {style}",
            "{please} find a {dish} recipe for {guests}",
            "walk me through making {dish} {style}",
            "any ideas for how to prepare {dish} for {guests}",
        ],
        "substitute_ingredient": [
            "what can i use instead of {ingredient} in {dish}",
            "i'm out of {ingredient}, what can i use in my {dish}",
            "can i replace {ingredient} with something else",
            "{please} suggest a substitute for {ingredient}",
            "is there a vegan alternative to {ingredient}",
            "what's a good swap for {ingredient} when making {dish}",
            "i ran out of {ingredient}, is there anything similar",
            "my {dish} recipe calls for {ingredient} but i have none",
        ],
        "cooking_time": [
            "how long should i cook {dish}",
            "how many minutes does {dish} need on the stove",
            "how long do i cook {dish} at {temp}",
            "when is {dish} done cooking",
            "what's the cooking time for {dish} for {guests}",
            "{please} tell me the right timing for {dish} at {temp}",
            "at {temp}, when should i take the {dish} out",
            "{please} tell me roughly how long the {dish} will take",
        ],
        "convert_measurement": [
            "how many {unit} are in {measure}",
            "convert {measure} of {ingredient} to {unit}",
            "{please} turn {measure} into {unit}",
            "what is {measure} of {ingredient} in {unit}",
            "i only have a scale, how much is {measure} of {ingredient}",
            "how do i measure {measure} of {ingredient} without a measuring cup",
            "{measure} of {ingredient} equals how many {unit}",
            "roughly how many {unit} would {measure} be",
        ],
        "food_storage": [
            "how long does {dish} last in the fridge",
            "{please} tell me if i can freeze leftover {dish}",
            "{please} tell me how to store {ingredient}",
            "are my {dish} leftovers still good after {days}",
            "how long can {ingredient} sit out at room temperature",
            "what's the best way to keep {dish} fresh",
            "my {dish} has been in the fridge for {days}, is it safe",
            "should {ingredient} be refrigerated or kept in the pantry",
        ],
    },
    "fitness": {
        "workout_plan": [
            "{please} make me a workout plan to {goal}",
            "what should i do at the gym to work my {muscle}",
            "give me a routine for my {muscle} that takes {duration}",
            "i want to {goal}, how often should i train",
            "{please} suggest a home workout that takes {duration}",
            "what's a good weekly schedule to {goal}",
            "i have {duration} free, what should i train for my {muscle}",
            "{please} put together a program so i can {goal}",
        ],
        "exercise_form": [
            "how do i do {exercise} properly",
            "am i doing {exercise} wrong if i feel it in my {muscle}",
            "what's the correct form for {exercise}",
            "{please} explain proper technique for {exercise}",
            "should my back be straight during {exercise}",
            "how wide should my feet be for {exercise}",
            "something feels off when i do {exercise}, what should i fix",
            "{please} tell me what mistakes beginners make with {exercise}",
        ],
        "calories_burned": [
            "how many calories does {duration} of {activity} burn",
            "how many calories did i burn doing {exercise} for {duration}",
            "{please} estimate the calories burned during {activity}",
            "is {activity} good for burning calories",
            "what's the calorie burn for {duration} of {activity}",
            "how much energy do i use in {duration} of {activity}",
            "if i do {activity} for {duration}, how many calories is that",
            "{please} calculate what {duration} of {exercise} burns",
        ],
        "nutrition_advice": [
            "how much protein is in {food}",
            "what should i eat after {duration} of {activity}",
            "is {food} a good snack before {activity}",
            "{please} tell me what to eat to {goal}",
            "how much protein do i need to {goal}",
            "should i have {food} before or after training",
            "is {food} healthy if i'm trying to {goal}",
            "what's a good meal plan for someone who does {activity}",
        ],
        "injury_recovery": [
            "my {muscle} hurt after {exercise}",
            "i pulled something in my {muscle}, what should i do",
            "how long should i rest after straining my {muscle}",
            "is it normal for my {muscle} to ache two days after {exercise}",
            "{please} suggest some stretches for my aching {muscle}",
            "should i ice or heat my {muscle} after {exercise}",
            "i tweaked my {muscle} doing {exercise}, how do i heal it",
            "what helps sore {muscle} bounce back faster after {exercise}",
        ],
    },
}


def _expand(template: str, slots: dict[str, list[str]]) -> list[str]:
    """All fillings of one template, in a fixed order (so sampling is reproducible)."""
    names = list(dict.fromkeys(f for _, f, _, _ in Formatter().parse(template) if f))
    texts = []
    for combo in itertools.product(*(slots[n] for n in names)):
        # Collapse the double spaces left behind by empty fillers such as please="".
        texts.append(" ".join(template.format(**dict(zip(names, combo))).split()))
    return texts


def _sample(pools: list[list[str]], n: int, rng: random.Random, where: str) -> list[str]:
    """Pick n distinct texts, taking from the templates' pools in turn.

    Round-robin (instead of one flat sample) keeps every phrasing represented;
    otherwise templates with many slots would dominate the split.
    """
    pools = [list(p) for p in pools]
    for pool in pools:
        rng.shuffle(pool)
    chosen: list[str] = []
    seen: set[str] = set()
    while len(chosen) < n:
        progressed = False
        for pool in pools:
            while pool and len(chosen) < n:
                text = pool.pop()
                if text not in seen:
                    seen.add(text)
                    chosen.append(text)
                    progressed = True
                    break
        if not progressed:  # only reachable if the template tables are edited too thin
            raise RuntimeError(f"demo templates for {where} yield fewer than {n} texts")
    return chosen


def demo_examples(task: str, split: str, seed: int = 0) -> list[tuple[str, str]]:
    """(text, label) pairs of one demo task; split is "train", "validation" or "test"; deterministic for a seed."""
    if task not in DEMO_TASKS:
        raise ValueError(f"unknown demo task {task!r}; expected one of {DEMO_TASKS}")
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {_SPLITS}")
    slots = {**_COMMON_SLOTS, **_SLOTS[task]}
    # A string seed is hashed deterministically by `random` (unlike hash()), and
    # including task/split/label keeps the streams of different parts independent.
    examples: list[tuple[str, str]] = []
    for label, templates in _TEMPLATES[task].items():
        train_t = templates[:-_N_TEST_TEMPLATES]
        test_t = templates[-_N_TEST_TEMPLATES:]
        train_pools = [_expand(t, slots) for t in train_t]
        if split == "train":
            rng = random.Random(f"demo/{seed}/{task}/train/{label}")
            examples.extend((text, label) for text in _sample(train_pools, _PER_LABEL["train"], rng, f"{task}/{label}"))
            continue
        # A test template could by chance render a string a train template
        # also renders; drop those so no held-out sentence is ever seen in train.
        in_train = set(itertools.chain.from_iterable(train_pools))
        held_out = [[s for s in _expand(t, slots) if s not in in_train] for t in test_t]
        rng = random.Random(f"demo/{seed}/{task}/test/{label}")
        texts = _sample(held_out, _PER_LABEL["test"], rng, f"{task}/{label}/test")
        if split == "validation":
            rng = random.Random(f"demo/{seed}/{task}/validation/{label}")
            rest = [[s for s in pool if s not in set(texts)] for pool in held_out]
            texts = _sample(rest, _PER_LABEL["validation"], rng, f"{task}/{label}/validation")
        examples.extend((text, label) for text in texts)
    random.Random(f"demo/{seed}/{task}/{split}/order").shuffle(examples)
    return examples
