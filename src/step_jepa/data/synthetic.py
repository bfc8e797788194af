"""Synthetic multi-step arithmetic word problems with exact, step-wise solutions.

Why: smoke runs, tests and offline users need Step-JEPA data that has real step structure
without downloading anything. Every problem is built backwards from integers chosen so that each
division is exact, so every intermediate value and the answer are integers, and every step is one
sentence that shows its arithmetic as ``a op b = c`` (which tests re-evaluate).

``generate_problems(n, seed)`` is deterministic: problem ``i`` depends only on ``(seed, i)``, so
a larger ``n`` extends a smaller one instead of reshuffling it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from step_jepa.data.records import DEFAULT_SYSTEM_PROMPT, final_answer_step, make_record

PEOPLE = [
    ("Tom", "he"),
    ("Maria", "she"),
    ("Aisha", "she"),
    ("Liam", "he"),
    ("Chen", "he"),
    ("Sofia", "she"),
    ("Noah", "he"),
    ("Priya", "she"),
    ("Mateo", "he"),
    ("Yuki", "she"),
    ("Omar", "he"),
    ("Elena", "she"),
    ("Kofi", "he"),
    ("Hannah", "she"),
    ("Diego", "he"),
    ("Fatima", "she"),
    ("Lucas", "he"),
    ("Ingrid", "she"),
    ("Ravi", "he"),
    ("Zoe", "she"),
    ("Ahmed", "he"),
    ("Mei", "she"),
    ("Jonas", "he"),
    ("Amara", "she"),
    ("Pablo", "he"),
]

SCHOOL_ITEMS = ["pencils", "erasers", "markers", "crayons", "stickers", "notebooks", "pens"]
SHOP_ITEMS = [
    ("apples", "oranges"),
    ("notebooks", "pens"),
    ("shirts", "socks"),
    ("cups", "plates"),
    ("books", "magazines"),
    ("candles", "soaps"),
]
VEGETABLES = ["tomatoes", "peppers", "cucumbers", "zucchinis", "carrots", "strawberries"]
BAKED = [("muffins", "cookies"), ("cupcakes", "brownies"), ("bagels", "croissants"), ("pies", "tarts")]
FRUITS = ["apples", "oranges", "plums", "peaches", "pears", "mangoes"]
VEHICLES = ["car", "bus", "train", "van", "motorbike"]
TREATS = ["cookies", "pancakes", "muffins", "waffles"]


@dataclass(frozen=True)
class Problem:
    """One generated problem before it becomes a record; ``answer`` is computed independently
    of the step text, so tests can check the two agree."""

    template: str
    question: str
    steps: list[str]
    answer: int


Template = Callable[[random.Random, str, str], tuple[str, list[str], int]]


def _mul(a: int, b: int) -> tuple[str, int]:
    return f"{a} * {b} = {a * b}", a * b


def _div(a: int, b: int) -> tuple[str, int]:
    if a % b:  # templates must construct exact divisions; fail loudly if one does not
        raise AssertionError(f"inexact division {a} / {b}")
    return f"{a} / {b} = {a // b}", a // b


def _shopping_packs(rng: random.Random, name: str, he: str) -> tuple[str, list[str], int]:
    item = rng.choice(SCHOOL_ITEMS)
    packs, per = rng.randint(2, 9), rng.choice([6, 8, 10, 12, 20, 24])
    expr, total = _mul(packs, per)
    steps = [f"{name} buys {packs} packs of {per} {item}, so {he} has {expr} {item}."]
    extra_q = ""
    if rng.random() < 0.5:
        extra = rng.randint(2, 15)
        steps.append(f"{he.capitalize()} finds {extra} more, so {he} has {total} + {extra} = {total + extra} {item}.")
        extra_q = f" Then {he} finds {extra} more {item} in a drawer."
        total += extra
    gift = rng.randint(1, total - 1)
    steps.append(f"After giving away {gift}, {he} has {total} - {gift} = {total - gift} {item} left.")
    q = (
        f"{name} buys {packs} packs of {item} with {per} {item} in each pack.{extra_q} "
        f"{he.capitalize()} gives {gift} {item} to friends. How many {item} does {name} have left?"
    )
    return q, steps, total - gift


def _shopping_change(rng: random.Random, name: str, he: str) -> tuple[str, list[str], int]:
    a_item, b_item = rng.choice(SHOP_ITEMS)
    a, pa, b, pb = rng.randint(2, 8), rng.randint(2, 15), rng.randint(2, 8), rng.randint(2, 15)
    ea, ca = _mul(a, pa)
    eb, cb = _mul(b, pb)
    total = ca + cb
    bill = next(x for x in (20, 50, 100, 200, 500) if x >= total)
    steps = [
        f"The {a_item} cost {ea} dollars.",
        f"The {b_item} cost {eb} dollars.",
        f"Together {name} spends {ca} + {cb} = {total} dollars.",
        f"{he.capitalize()} gets back {bill} - {total} = {bill - total} dollars in change.",
    ]
    q = (
        f"{name} buys {a} {a_item} for {pa} dollars each and {b} {b_item} for {pb} dollars each. "
        f"{he.capitalize()} pays with a {bill}-dollar bill. How much change does {he} get, in dollars?"
    )
    return q, steps, bill - total


def _travel_distance(rng: random.Random, name: str, he: str) -> tuple[str, list[str], int]:
    vehicle = rng.choice(VEHICLES)
    s1, h1, s2, h2 = rng.randint(4, 12) * 5, rng.randint(1, 5), rng.randint(4, 12) * 5, rng.randint(1, 4)
    e1, d1 = _mul(s1, h1)
    e2, d2 = _mul(s2, h2)
    steps = [
        f"In the first part {name} travels {e1} km.",
        f"In the second part {he} travels {e2} km.",
        f"The total distance is {d1} + {d2} = {d1 + d2} km.",
    ]
    q = (
        f"{name} drives a {vehicle} at {s1} km per hour for {h1} hours, then at {s2} km per hour "
        f"for {h2} hours. How many kilometers does {name} travel in total?"
    )
    return q, steps, d1 + d2


def _travel_time(rng: random.Random, name: str, he: str) -> tuple[str, list[str], int]:
    vehicle = rng.choice(VEHICLES)
    speed, hours = rng.randint(3, 16) * 5, rng.randint(2, 9)
    dist = speed * hours
    expr, t = _div(dist, speed)
    steps = [f"One way takes {expr} hours."]
    if rng.random() < 0.5:
        steps.append(f"There and back takes {t} * 2 = {t * 2} hours.")
        q = (
            f"A {vehicle} drives {dist} km to a town at {speed} km per hour and comes back at the "
            f"same speed. How many hours does the round trip take?"
        )
        return q, steps, t * 2
    q = f"{name} takes a {vehicle} that covers {dist} km at {speed} km per hour. How many hours does the trip take?"
    return q, steps, t


def _savings(rng: random.Random, name: str, he: str) -> tuple[str, list[str], int]:
    start, weekly, weeks = rng.randint(5, 60), rng.randint(3, 25), rng.randint(2, 12)
    expr, saved = _mul(weekly, weeks)
    total = start + saved
    cost = rng.randint(1, total - 1)
    steps = [
        f"{name} saves {expr} dollars over {weeks} weeks.",
        f"With the {start} dollars {he} already had, {he} has {start} + {saved} = {total} dollars.",
        f"After buying the gift, {he} has {total} - {cost} = {total - cost} dollars left.",
    ]
    q = (
        f"{name} has {start} dollars and saves {weekly} dollars every week for {weeks} weeks. "
        f"Then {he} spends {cost} dollars on a gift. How many dollars does {name} have left?"
    )
    return q, steps, total - cost


def _savings_goal(rng: random.Random, name: str, he: str) -> tuple[str, list[str], int]:
    weekly, weeks, start = rng.randint(4, 30), rng.randint(2, 15), rng.randint(10, 90)
    price = start + weekly * weeks
    steps = [
        f"{name} still needs {price} - {start} = {price - start} dollars.",
        f"Saving {weekly} dollars a week, that takes {_div(price - start, weekly)[0]} weeks.",
    ]
    q = (
        f"{name} wants a bike that costs {price} dollars. {he.capitalize()} has {start} dollars and "
        f"saves {weekly} dollars each week. How many weeks until {he} can buy the bike?"
    )
    return q, steps, weeks


def _recipe(rng: random.Random, name: str, he: str) -> tuple[str, list[str], int]:
    treat = rng.choice(TREATS)
    per_batch, batches = rng.choice([6, 8, 10, 12, 15, 24]), rng.randint(2, 8)
    cups = {"flour": rng.randint(2, 5), "sugar": rng.randint(1, 4)}
    if rng.random() < 0.5:  # a third ingredient gives some problems the maximum of six steps
        cups["milk"] = rng.randint(1, 3)
    wanted = per_batch * batches
    steps = [f"{name} needs {_div(wanted, per_batch)[0]} batches."]
    steps += [f"That uses {_mul(batches, c)[0]} cups of {k}." for k, c in cups.items()]
    used = [batches * c for c in cups.values()]
    steps.append(f"In total {he} needs {' + '.join(map(str, used))} = {sum(used)} cups.")
    listing = ", ".join(f"{c} cups of {k}" for k, c in cups.items())
    q = (
        f"A recipe makes {per_batch} {treat} using {listing}. {name} wants to make {wanted} {treat}. "
        f"How many cups of ingredients does {he} need altogether?"
    )
    return q, steps, sum(used)


def _classroom(rng: random.Random, name: str, he: str) -> tuple[str, list[str], int]:
    classes, size, group = rng.randint(2, 6), rng.randint(18, 32), rng.choice([3, 4, 5, 6])
    total = classes * size
    absent = total % group + group * rng.randint(0, 2)
    present = total - absent
    steps = [
        f"There are {_mul(classes, size)[0]} students.",
        f"Without the absent students, {total} - {absent} = {present} students are there.",
        f"Teacher {name} can make {_div(present, group)[0]} groups.",
    ]
    q = (
        f"A school has {classes} classes with {size} students each. On a trip day {absent} students "
        f"are absent. Teacher {name} puts the rest into groups of {group}. How many groups are there?"
    )
    return q, steps, present // group


def _garden(rng: random.Random, name: str, he: str) -> tuple[str, list[str], int]:
    veg = rng.choice(VEGETABLES)
    rows, per_row, yield_ = rng.randint(2, 9), rng.randint(3, 12), rng.randint(2, 8)
    plants = rows * per_row
    harvest = plants * yield_
    given = rng.randint(1, harvest - 1)
    steps = [
        f"{name} has {_mul(rows, per_row)[0]} plants.",
        f"The plants give {_mul(plants, yield_)[0]} {veg}.",
        f"After giving some to neighbors, {he} keeps {harvest} - {given} = {harvest - given} {veg}.",
    ]
    q = (
        f"{name} plants {rows} rows of {veg} with {per_row} plants in each row. Each plant gives "
        f"{yield_} {veg}. {he.capitalize()} gives {given} {veg} to neighbors. How many {veg} does {he} keep?"
    )
    return q, steps, harvest - given


def _bakery(rng: random.Random, name: str, he: str) -> tuple[str, list[str], int]:
    a_item, b_item = rng.choice(BAKED)
    a, pa, b, pb = rng.randint(5, 40), rng.randint(2, 6), rng.randint(5, 40), rng.randint(1, 5)
    income = a * pa + b * pb
    costs = rng.randint(1, income - 1)
    steps = [
        f"The {a_item} bring in {_mul(a, pa)[0]} dollars.",
        f"The {b_item} bring in {_mul(b, pb)[0]} dollars.",
        f"The bakery takes in {a * pa} + {b * pb} = {income} dollars.",
        f"After costs, {name} earns {income} - {costs} = {income - costs} dollars.",
    ]
    q = (
        f"{name}'s bakery sells {a} {a_item} at {pa} dollars each and {b} {b_item} at {pb} dollars each. "
        f"Ingredients cost {costs} dollars. How much profit does {name} make, in dollars?"
    )
    return q, steps, income - costs


def _reading(rng: random.Random, name: str, he: str) -> tuple[str, list[str], int]:
    per_day, days, later, later_days = rng.randint(5, 30), rng.randint(2, 7), rng.randint(10, 40), rng.randint(2, 9)
    read = per_day * days
    left = later * later_days
    pages = read + left
    steps = [
        f"In the first {days} days {name} reads {_mul(per_day, days)[0]} pages.",
        f"That leaves {pages} - {read} = {left} pages.",
        f"At {later} pages a day, {he} needs {_div(left, later)[0]} more days.",
    ]
    q = (
        f"A book has {pages} pages. {name} reads {per_day} pages a day for {days} days, then "
        f"{later} pages a day. How many more days does {he} need to finish the book?"
    )
    return q, steps, later_days


def _fruit_sharing(rng: random.Random, name: str, he: str) -> tuple[str, list[str], int]:
    fruit = rng.choice(FRUITS)
    friends, each = rng.randint(2, 8), rng.randint(3, 12)
    total = friends * each
    morning = rng.randint(1, total - 1)
    eaten = rng.randint(1, each - 1)
    steps = [
        f"{name} picks {morning} + {total - morning} = {total} {fruit}.",
        f"Each friend gets {_div(total, friends)[0]} {fruit}.",
        f"After eating {eaten}, each friend has {each} - {eaten} = {each - eaten} {fruit}.",
    ]
    q = (
        f"{name} picks {morning} {fruit} in the morning and {total - morning} in the afternoon, and shares "
        f"them equally among {friends} friends. Each friend eats {eaten}. How many {fruit} does each friend have left?"
    )
    return q, steps, each - eaten


def _wages(rng: random.Random, name: str, he: str) -> tuple[str, list[str], int]:
    rate, hours, days = rng.randint(8, 30), rng.randint(3, 8), rng.randint(2, 6)
    daily = rate * hours
    total = daily * days
    steps = [
        f"{name} earns {_mul(rate, hours)[0]} dollars a day.",
        f"Over {days} days {he} earns {_mul(daily, days)[0]} dollars.",
    ]
    q_extra, answer = "", total
    if rng.random() < 0.6:
        bonus = rng.randint(10, 80)
        rent = rng.randint(1, total + bonus - 1)
        steps.append(f"With the bonus {he} has {total} + {bonus} = {total + bonus} dollars.")
        steps.append(f"After paying rent, {he} has {total + bonus} - {rent} = {total + bonus - rent} dollars.")
        q_extra = f" {he.capitalize()} also gets a {bonus}-dollar bonus and pays {rent} dollars of rent."
        answer = total + bonus - rent
    q = (
        f"{name} earns {rate} dollars an hour and works {hours} hours a day for {days} days.{q_extra} "
        f"How many dollars does {name} have {'left' if q_extra else 'in total'}?"
    )
    return q, steps, answer


def _pizza_party(rng: random.Random, name: str, he: str) -> tuple[str, list[str], int]:
    pizzas, price, slices = rng.randint(2, 12), rng.randint(7, 18), rng.choice([2, 4])
    guests = pizzas * 8 // slices
    steps = [
        f"The guests eat {_mul(guests, slices)[0]} slices.",
        f"With 8 slices per pizza, {name} needs {_div(guests * slices, 8)[0]} pizzas.",
        f"The pizzas cost {_mul(pizzas, price)[0]} dollars.",
    ]
    q = (
        f"{name} invites {guests} guests to a party, and each guest eats {slices} slices of pizza. "
        f"A pizza has 8 slices and costs {price} dollars. How many dollars does {name} spend on pizza?"
    )
    return q, steps, pizzas * price


def _farm_legs(rng: random.Random, name: str, he: str) -> tuple[str, list[str], int]:
    chickens, cows = rng.randint(3, 40), rng.randint(2, 25)
    steps = [
        f"The chickens have {_mul(chickens, 2)[0]} legs.",
        f"The cows have {_mul(cows, 4)[0]} legs.",
        f"Together there are {chickens * 2} + {cows * 4} = {chickens * 2 + cows * 4} legs.",
    ]
    q = f"{name}'s farm has {chickens} chickens and {cows} cows. How many legs do the animals have in total?"
    return q, steps, chickens * 2 + cows * 4


def _discount(rng: random.Random, name: str, he: str) -> tuple[str, list[str], int]:
    # price a multiple of 20 and percent a multiple of 5 make price * percent / 100 an integer.
    price, percent, qty = rng.randint(1, 10) * 20, rng.randint(1, 10) * 5, rng.randint(2, 5)
    off = price * percent // 100
    steps = [
        f"The discount is {price} * {percent} / 100 = {off} dollars.",
        f"One jacket costs {price} - {off} = {price - off} dollars.",
        f"{qty} jackets cost {_mul(price - off, qty)[0]} dollars.",
    ]
    q = (
        f"A jacket costs {price} dollars and is on sale for {percent}% off. {name} buys {qty} jackets. "
        f"How many dollars does {he} pay?"
    )
    return q, steps, (price - off) * qty


def _fuel(rng: random.Random, name: str, he: str) -> tuple[str, list[str], int]:
    km_per_l, liters, price = rng.randint(8, 20), rng.randint(3, 30), rng.randint(1, 3)
    dist = km_per_l * liters
    steps = [
        f"The trip needs {_div(dist, km_per_l)[0]} liters of fuel.",
        f"The fuel costs {_mul(liters, price)[0]} dollars.",
    ]
    q = (
        f"{name}'s car goes {km_per_l} km on one liter of fuel. {he.capitalize()} drives {dist} km, "
        f"and fuel costs {price} dollars per liter. How many dollars does the fuel cost?"
    )
    return q, steps, liters * price


def _library(rng: random.Random, name: str, he: str) -> tuple[str, list[str], int]:
    boxes, per_box = rng.randint(2, 12), rng.randint(5, 30)
    books = boxes * per_box
    shelf = rng.choice([d for d in range(4, 41) if books % d == 0 and d != books] or [books])
    steps = [
        f"{name} has {_mul(boxes, per_box)[0]} books.",
        f"{he.capitalize()} needs {_div(books, shelf)[0]} shelves.",
    ]
    q = (
        f"{name} receives {boxes} boxes with {per_box} books each for the library. Each shelf holds "
        f"{shelf} books. How many shelves does {he} fill?"
    )
    return q, steps, books // shelf


def _pets(rng: random.Random, name: str, he: str) -> tuple[str, list[str], int]:
    dogs, grams, days = rng.randint(2, 5), rng.randint(2, 9) * 50, rng.randint(2, 7)
    daily = dogs * grams
    total = daily * days
    bag = rng.choice([d for d in (250, 500, 1000) if total % d == 0] or [50])
    steps = [
        f"The dogs eat {_mul(dogs, grams)[0]} grams a day.",
        f"In {days} days they eat {_mul(daily, days)[0]} grams.",
        f"{name} needs {_div(total, bag)[0]} bags of food.",
    ]
    q = (
        f"{name} has {dogs} dogs, and each eats {grams} grams of food a day. Food comes in {bag}-gram bags. "
        f"How many bags does {he} need for {days} days?"
    )
    return q, steps, total // bag


TEMPLATES: dict[str, Template] = {
    "shopping_packs": _shopping_packs,
    "shopping_change": _shopping_change,
    "travel_distance": _travel_distance,
    "travel_time": _travel_time,
    "savings": _savings,
    "savings_goal": _savings_goal,
    "recipe": _recipe,
    "classroom": _classroom,
    "garden": _garden,
    "bakery": _bakery,
    "reading": _reading,
    "fruit_sharing": _fruit_sharing,
    "wages": _wages,
    "pizza_party": _pizza_party,
    "farm_legs": _farm_legs,
    "discount": _discount,
    "fuel": _fuel,
    "library": _library,
    "pets": _pets,
}


def make_problem(seed: int, i: int) -> Problem:
    """Problem ``i`` of stream ``seed``. String seeding is stable across Python runs and versions
    (unlike ``hash()``), which is what makes the output reproducible."""
    rng = random.Random(f"step-jepa-gen-{seed}-{i}")
    template = rng.choice(sorted(TEMPLATES))
    name, pronoun = rng.choice(PEOPLE)
    question, steps, answer = TEMPLATES[template](rng, name, pronoun)
    return Problem(template, question, steps + [final_answer_step(str(answer))], answer)


CHAIN_ITEMS = ["coins", "stamps", "marbles", "points", "shells", "cards", "beads"]


def _chain_op(rng: random.Random, x: int, lo: int, hi: int) -> tuple[str, str, int]:
    """One operation on the running total: (question clause, solution step body, new total).

    Sums and differences use numbers of the chosen size; products and exact quotients use one
    digit, so the size knob sets how hard each step's arithmetic is and the step knob how many
    there are (errors compound along the chain, which is what gives the task its range).
    """
    op = rng.choice(("add", "sub", "mul", "div"))
    divisors = [d for d in range(2, 10) if x % d == 0]
    if op == "div" and not divisors:
        op = "add"
    if op == "sub" and x <= lo:
        op = "add"
    if op == "add":
        b = rng.randint(lo, hi)
        return f"gets {b} more", f"gets {b} more, so the total is {x} + {b} = {x + b}", x + b
    if op == "sub":
        b = rng.randint(max(1, lo // 2), min(hi, x - 1))
        return f"gives away {b}", f"gives away {b}, so the total is {x} - {b} = {x - b}", x - b
    if op == "mul":
        b = rng.randint(2, 9)
        return f"makes the collection {b} times as large", f"makes it {b} times as large: {_mul(x, b)[0]}", x * b
    b = rng.choice(divisors)
    return (
        f"splits the collection into {b} equal parts and keeps one",
        f"keeps one of {b} equal parts: {_div(x, b)[0]}",
        x // b,
    )


def make_chain_problem(seed: int, i: int, steps: int = 4, digits: int = 3) -> Problem:
    """A controlled-difficulty problem: a start value and ``steps`` operations on numbers of
    ``digits`` digits, one solution step per operation. Problem ``i`` depends only on
    ``(seed, steps, digits, i)``."""
    if steps < 1 or not 1 <= digits <= 6:
        raise ValueError(f"chain problems need steps >= 1 and 1 <= digits <= 6, got {steps}, {digits}")
    rng = random.Random(f"step-jepa-chain-{seed}-{steps}-{digits}-{i}")
    name, he = rng.choice(PEOPLE)
    item = rng.choice(CHAIN_ITEMS)
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    x = rng.randint(max(lo, 2), hi)
    clauses, sol = [f"{name} starts with {x} {item}."], []
    for k in range(steps):
        clause, body, x = _chain_op(rng, x, lo, hi)
        clauses.append(f"{'Then' if k else 'First'}, {he} {clause}.")
        sol.append(f"{he.capitalize() if k else name} {body} {item}.")
    question = " ".join(clauses) + f" How many {item} does {name} have at the end?"
    return Problem(f"chain{steps}x{digits}", question, sol + [final_answer_step(str(x))], x)


def generate_problems(
    n: int,
    seed: int = 0,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    task: str = "mixed",
    chain_steps: int = 4,
    chain_digits: int = 3,
) -> list[dict]:
    """``n`` prepared records, deterministic for ``(n, seed)`` (and the chain knobs).

    task 'mixed': the word-problem templates above (ids ``gen-{seed}-{i}``); task 'chain': the
    controlled-difficulty chains of ``make_chain_problem`` (ids ``chain{S}x{D}-{seed}-{i}``).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if task not in TASKS:
        raise ValueError(f"unknown generator task {task!r}; choose one of {', '.join(TASKS)}")
    out = []
    for i in range(n):
        if task == "chain":
            p = make_chain_problem(seed, i, chain_steps, chain_digits)
            rid = f"{p.template}-{seed}-{i}"
        else:
            p, rid = make_problem(seed, i), f"gen-{seed}-{i}"
        out.append(make_record(rid, p.question, p.steps, str(p.answer), system_prompt))
    return out


TASKS = ("mixed", "chain")
