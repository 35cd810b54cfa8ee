"""Explicit instruction following: verifiable constraints on free content (curriculum stage 1).

What it does: :func:`instruction_following` builds one generator task per constraint kind —
the reply's *form* is fixed by the instruction and checked by code, its content is free:

  ``n_words`` / ``n_items`` / ``bullets`` / ``json_list`` — name exactly n members of a topic
  (space-separated words, comma-separated items, ``- `` bullet lines, a JSON list of strings);
  ``uppercase`` / ``lowercase`` — one sentence about a subject in capitals / lower case only;
  ``start_word`` / ``end_word`` / ``include_word`` — one sentence that begins with, ends with
  or uses a given word; ``quoted`` — one sentence in double quotation marks; ``n_sentences`` —
  exactly n sentences about a subject.

Replies end at a blank line, an ``Answer:`` line or a ``# `` block (:data:`REPLY_STOPS`,
the same for every model). Every sentence-like constraint also asks for at least three words on one line, so an empty
or one-token reply does not pass (the source project's lesson: a scorer that a trivial
reply satisfies measures nothing). Each sample's ``metadata["topic"]`` names its content
(the topic or subject): :func:`topic_split` partitions topics so held-out evaluation items
share no topic with training items (held-out *instructions*, not only held-out instances).

What it does not do: judge content (a reply naming three wrong fruits passes ``n_items``);
checks live in :data:`selfimprove.tasks.validators.FORMAT_CHECKS` (keys ``if_<kind>``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from random import Random
from typing import Any, Literal

from selfimprove.errors import TaskError
from selfimprove.tasks.base import Task
from selfimprove.tasks.generators import _make_task

InstructionKind = Literal[
    "n_words",
    "n_items",
    "bullets",
    "json_list",
    "uppercase",
    "lowercase",
    "start_word",
    "end_word",
    "include_word",
    "quoted",
    "n_sentences",
]
INSTRUCTION_KINDS: tuple[str, ...] = InstructionKind.__args__  # type: ignore[attr-defined]

#: topic -> members (lists: n_words, n_items, bullets, json_list); single-word members
LIST_TOPICS: dict[str, tuple[str, ...]] = {
    "fruits": ("apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"),
    "colors": ("red", "blue", "green", "yellow", "purple", "orange", "black", "white"),
    "animals": ("dog", "cat", "horse", "lion", "tiger", "rabbit", "sheep", "wolf"),
    "vegetables": ("carrot", "potato", "onion", "pea", "cabbage", "leek", "turnip", "bean"),
    "tools": ("hammer", "saw", "drill", "wrench", "chisel", "pliers", "file", "axe"),
    "instruments": ("piano", "violin", "guitar", "flute", "drum", "harp", "cello", "trumpet"),
    "drinks": ("water", "tea", "coffee", "milk", "juice", "cocoa", "lemonade", "soda"),
    "sports": ("tennis", "golf", "soccer", "rugby", "hockey", "boxing", "rowing", "cricket"),
    "birds": ("robin", "eagle", "owl", "crow", "sparrow", "parrot", "swan", "duck"),
    "trees": ("oak", "pine", "birch", "maple", "willow", "elm", "cedar", "ash"),
    "countries": ("France", "Spain", "Italy", "Japan", "Brazil", "Canada", "Egypt", "India"),
    "metals": ("iron", "copper", "gold", "silver", "tin", "lead", "zinc", "nickel"),
    "flowers": ("rose", "tulip", "daisy", "lily", "orchid", "poppy", "iris", "violet"),
    "planets": ("Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"),
    "vehicles": ("car", "bus", "train", "truck", "bicycle", "boat", "plane", "tram"),
    "furniture": ("chair", "table", "sofa", "bed", "desk", "shelf", "stool", "bench"),
    "clothes": ("shirt", "coat", "hat", "scarf", "sock", "glove", "skirt", "jacket"),
    "insects": ("ant", "bee", "wasp", "moth", "beetle", "fly", "cricket", "flea"),
    "fish": ("salmon", "trout", "cod", "tuna", "carp", "pike", "herring", "perch"),
    "weekdays": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "months": ("January", "March", "April", "May", "June", "July", "August", "October"),
    "shapes": ("circle", "square", "triangle", "oval", "star", "hexagon", "cube", "cone"),
    "kitchen utensils": ("spoon", "fork", "knife", "ladle", "whisk", "spatula", "grater", "pan"),
    "body parts": ("hand", "foot", "knee", "elbow", "nose", "ear", "shoulder", "ankle"),
}

#: subjects of one-sentence instructions, with a plain sentence about each (reference text)
SUBJECTS: dict[str, str] = {
    "the ocean": "the ocean is wide and deep",
    "a cat": "a cat likes to sleep in the sun",
    "winter": "winter brings cold days and long nights",
    "a library": "a library keeps many books for people to read",
    "trains": "trains carry people between cities",
    "the moon": "the moon shines at night",
    "a garden": "a garden needs water and light",
    "coffee": "coffee is a warm drink many people enjoy",
    "mountains": "mountains are tall and often covered in snow",
    "a river": "a river flows down to the sea",
    "music": "music can make people feel happy",
    "the city": "the city is busy and loud at noon",
    "rain": "rain falls from grey clouds",
    "a bicycle": "a bicycle has two wheels and a bell",
    "bread": "bread is baked in a hot oven",
    "the forest": "the forest is full of tall trees",
    "a teacher": "a teacher helps students learn",
    "the sun": "the sun gives the earth light and heat",
    "a friend": "a friend listens when you need help",
    "the kitchen": "the kitchen smells of fresh soup",
    "a storm": "a storm brings wind and heavy rain",
    "birds": "birds sing early in the morning",
    "a map": "a map shows the roads of a town",
    "snow": "snow covers the ground in white",
    "a clock": "a clock tells the time of day",
    "the beach": "the beach is warm in the summer",
    "a dog": "a dog waits by the door for its owner",
    "a candle": "a candle gives a small warm light",
    "the market": "the market sells fruit and fish",
    "a bridge": "a bridge crosses the river",
    "homework": "homework takes most of the evening",
    "a phone": "a phone lets people talk across the world",
    "the wind": "the wind moves the leaves on the trees",
    "a school": "a school has many classrooms",
    "tea": "tea is made with hot water and leaves",
    "the desert": "the desert is dry and hot",
    "a painting": "a painting hangs on the museum wall",
    "the stars": "the stars shine far away in the sky",
    "a farm": "a farm has cows and fields of wheat",
    "the night": "the night is quiet and dark",
}
START_WORDS = ("Today", "Every", "Many", "Some", "Yesterday", "Often", "My", "Our", "This")
INCLUDE_WORDS = ("blue", "quiet", "old", "small", "bright", "happy", "slow", "green", "soft")
_NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}
#: where a reply to a free-form instruction ends, for every model alike (lm-eval's usual
#: few-shot stop "\n\n"; a base model's habit of adding an ``Answer:`` line or a new
#: ``# Question`` block after its reply)
REPLY_STOPS: tuple[str, ...] = ("\n\n", "\nAnswer:", "\n# ")


def _stable_bit(text: str, salt: str) -> int:
    return hashlib.sha256(f"{salt}:{text}".encode()).digest()[0] & 1


def topic_split(salt: str = "instructions-v1") -> tuple[list[str], list[str]]:
    """``(train_topics, heldout_topics)``: every list topic and subject on exactly one side,
    by a stable hash (about half each; the same on every machine and run)."""
    names = sorted(LIST_TOPICS) + sorted(SUBJECTS)
    train = [t for t in names if _stable_bit(t, salt) == 0]
    held = [t for t in names if _stable_bit(t, salt) == 1]
    return train, held


def _sentence(subject: str, *, start: str | None = None, end: str | None = None) -> str:
    body = SUBJECTS[subject]
    if start is not None:
        body = f"{start} {body}"
    if end is not None:
        body = f"{body} {end}"
    return body[0].upper() + body[1:] + "."


def _build(kind: str, rng: Random, lists: list[str], subjects: list[str]) -> tuple[str, str, dict]:
    params: dict[str, Any] = {}
    if kind in ("n_words", "n_items", "bullets", "json_list"):
        topic = rng.choice(lists)
        n = rng.randint(2, 5) if kind != "n_items" else rng.randint(3, 4)
        members = rng.sample(LIST_TOPICS[topic], n)
        w = _NUMBER_WORDS[n]
        params = {"n": n}
        if kind == "n_words":
            prompt = (
                f"Name exactly {w} {topic}, one word each, separated by spaces, and nothing else."
            )
            target = " ".join(members)
        elif kind == "n_items":
            prompt = f"List exactly {w} {topic} as comma-separated items and nothing else."
            target = ", ".join(members)
        elif kind == "bullets":
            prompt = (
                f"Write exactly {w} bullet points, each starting with '- ', naming {w} {topic}."
            )
            target = "\n".join(f"- {m}" for m in members)
        else:
            prompt = f"Reply with only a JSON list of {w} {topic}, as strings."
            target = "[" + ", ".join(f'"{m}"' for m in members) + "]"
        return prompt, target, {"format": f"if_{kind}", "format_params": params, "topic": topic}
    subject = rng.choice(subjects)
    if kind == "uppercase":
        prompt = f"Write one sentence about {subject} using only capital letters."
        target = _sentence(subject).upper()
    elif kind == "lowercase":
        prompt = f"Write one sentence about {subject} using only lowercase letters."
        target = _sentence(subject).lower()
    elif kind == "start_word":
        word = rng.choice(START_WORDS)
        params = {"word": word}
        prompt = f"Write one sentence about {subject} that begins with the word '{word}'."
        target = _sentence(subject, start=word)
    elif kind == "end_word":
        word = rng.choice(INCLUDE_WORDS)
        params = {"word": word}
        prompt = f"Write one sentence about {subject} whose last word is '{word}'."
        target = _sentence(subject, end=f"and it is {word}")
    elif kind == "include_word":
        word = rng.choice(INCLUDE_WORDS)
        params = {"word": word}
        prompt = f"Write one sentence about {subject} that uses the word '{word}'."
        target = _sentence(subject, end=f"and it is {word}")
    elif kind == "quoted":
        prompt = f"Write one sentence about {subject} and wrap it in double quotation marks."
        target = f'"{_sentence(subject)}"'
    else:  # n_sentences
        n = rng.randint(2, 3)
        params = {"n": n}
        prompt = f"Write exactly {_NUMBER_WORDS[n]} short sentences about {subject}."
        target = " ".join([_sentence(subject)] * n)
    return prompt, target, {"format": f"if_{kind}", "format_params": params, "topic": subject}


def instruction_following(
    kind: str,
    *,
    topics: Sequence[str] | None = None,
    name: str | None = None,
) -> Task:
    """One constraint kind as a generator task (category ``if_<kind>``).

    ``topics`` restricts the content to these list topics and subjects (see
    :func:`topic_split`); ``None`` uses all. A task name distinct per topic set gives
    distinct sample streams (``instructions_train.if_n_words`` vs the held-out suite's).

    Raises:
        TaskError: unknown kind, or ``topics`` leaves this kind no content.
    """
    if kind not in INSTRUCTION_KINDS:
        raise TaskError(
            f"instruction kind {kind!r} is unknown; use one of {list(INSTRUCTION_KINDS)}"
        )
    chosen = set(topics) if topics is not None else None
    unknown = sorted(chosen - set(LIST_TOPICS) - set(SUBJECTS)) if chosen else []
    if unknown:
        raise TaskError(f"unknown instruction topics {unknown}; see LIST_TOPICS and SUBJECTS")
    lists = sorted(t for t in LIST_TOPICS if chosen is None or t in chosen)
    subjects = sorted(s for s in SUBJECTS if chosen is None or s in chosen)
    needs_lists = kind in ("n_words", "n_items", "bullets", "json_list")
    if not (lists if needs_lists else subjects):
        raise TaskError(f"instruction kind {kind!r}: the given topics include none it can use")
    cat = f"if_{kind}"

    def build(rng: Random) -> tuple[str, str, dict[str, Any]]:
        return _build(kind, rng, lists, subjects)

    task = _make_task(
        name=name or cat,
        category=cat,
        family="instructions",
        validator_name="format",
        validator_args=None,
        difficulty={"kind": kind},
        build=build,
        description=f"explicit instruction: {kind}",
        answer_instruction=False,
    )
    return dataclasses.replace(task, stop=REPLY_STOPS)


def instruction_tasks(topics: Sequence[str] | None = None, prefix: str = "") -> list[Task]:
    """One task per kind (named ``<prefix>if_<kind>``), content limited to ``topics``."""
    return [
        instruction_following(k, topics=topics, name=f"{prefix}if_{k}") for k in INSTRUCTION_KINDS
    ]
