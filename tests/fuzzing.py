"""Mutations of spec text for the fuzz test and the fuzz benchmark."""

from __future__ import annotations

import random
import re

TOKENS = ["(", ")", "{", "}", ",", "=", "->", "-", "*", "/", "//", "**", "0", "1", "-1", "999999999", "1e308",
          "2.5", "same", "valid", "conv", "dense", "in", "x", "repeat", "block", "model", "input", "include",
          "\"lib/blocks.cnn\"", "\"missing.cnn\"", "train", "true", ";", "#", "\n", "\x00", "é", "add(x)",
          "if", "else", "for", "[", "]", "==", "<", "and", "not", "a, b =", "output a, b", "channels(in)",
          "make_divisible(", "range(", "[0]"]


def mutate(text: str, rng: random.Random) -> str:
    """Apply 1-4 random edits: byte flips, token insertions, deletions, swaps, duplications."""
    for _ in range(rng.randint(1, 4)):
        text = rng.choice(_EDITS)(text, rng)
    return text


def _flip_byte(text: str, rng: random.Random) -> str:
    if not text:
        return text
    i = rng.randrange(len(text))
    return text[:i] + chr(rng.randrange(32, 127)) + text[i + 1:]


def _insert_token(text: str, rng: random.Random) -> str:
    i = rng.randrange(len(text) + 1)
    return text[:i] + rng.choice(TOKENS) + text[i:]


def _delete_span(text: str, rng: random.Random) -> str:
    if not text:
        return text
    i = rng.randrange(len(text))
    return text[:i] + text[i + rng.randint(1, 12):]


def _swap_words(text: str, rng: random.Random) -> str:
    words = re.findall(r"\w+|\W", text)
    if len(words) < 2:
        return text
    i, j = rng.randrange(len(words)), rng.randrange(len(words))
    words[i], words[j] = words[j], words[i]
    return "".join(words)


def _duplicate_line(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    i = rng.randrange(len(lines))
    lines.insert(rng.randrange(len(lines) + 1), lines[i])
    return "\n".join(lines)


def _replace_number(text: str, rng: random.Random) -> str:
    numbers = list(re.finditer(r"\d+", text))
    if not numbers:
        return text
    match = rng.choice(numbers)
    return text[:match.start()] + rng.choice(["0", "1", "100000", "7", "64"]) + text[match.end():]


_EDITS = [_flip_byte, _insert_token, _delete_span, _swap_words, _duplicate_line, _replace_number]
