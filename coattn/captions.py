"""Compositional rewrites of captions: the same events in the reverse order, or one count changed.

    reverse_order("A dog barks, then a car passes.")   -> "A car passes, then a dog barks."
    change_count("A bell rings twice after a beep.")    -> "A bell rings three times after a beep."

They serve the compositional probe (``coattn probe``; CompA, Ghosh et al., ICLR 2024, swaps the
events around "then / followed by / before / after" the same way) and the training negatives
that teach the cascade order (``coattn.loss.RetrievalLoss``: ``order_negatives``).

How ``reverse_order`` works, without a parser: a caption is cut at temporal connectives
(``CONNECTIVES``: then, followed by, before, after, later, next, finally, afterwards...) into
event spans; each span loses the order words at its edges (first, then, you hear, follows,
at the end...), the event phrases are put back in reverse order and the skeleton is kept. A
skeleton word that already states order ("first", "finally") keeps its place, so the time order
of the events flips whatever the connective's direction ("B after A" -> "A after B"). Captions
with fewer than two spans, or with only simultaneity ("while", "as", "with"), give None: the
probe reports how many captions of a split it applies to.

``change_count`` moves one explicit count (two..five, once, twice, three times...) up or down by
one, in the same form ("two dogs" -> "three dogs"; "one dog" is left alone, it would need a
singular); None if the caption has no count.
"""
from __future__ import annotations

import random
import re

# Temporal connectives between two events, longest first (regex alternation order matters).
CONNECTIVES = (
    r",? and then,?", r",? and afterwards,?", r",? and after that,?", r",? and later,?", r",? and finally,?",
    r",? and lastly,?", r",? and next,?", r",? and subsequently,?", r",? followed by", r",? then,?",
    r",? afterwards,?", r",? after that,?", r",? later,?", r",? next,?", r",? finally,?", r",? lastly,?",
    r",? subsequently,?", r",? before", r",? after", r",? until", r",? and eventually,?", r",? eventually,?",
    r"\. then,?", r"\. after that,?", r"\. afterwards,?", r"\. later,?", r"\. next,?", r"\. finally,?",
)
_CONNECTIVE = re.compile(r"(?<=\w)(" + "|".join(CONNECTIVES) + r")\s+", re.IGNORECASE)
# ", and" separates events only when the caption states order elsewhere ("first A, and B follows").
_AND = re.compile(r"(?<=\w)(, and)\s+", re.IGNORECASE)
# Order words at the edges of a span: they belong to the skeleton, not to the event.
_LEAD = re.compile(r"^((?:at )?first(?: comes| of all| there is| there's)?,?|in the beginning,?|you hear|"
                   r"one hears|it starts with|starting with|initially,?)\s+", re.IGNORECASE)
_TRAIL = re.compile(r"\s+(follows|comes next|is heard next|comes after|can be heard|is heard|are heard|"
                    r"at the end|at last|in the end|afterwards|last|next)(?=[.!,;]?\s*$)", re.IGNORECASE)
_ORDER_CUE = re.compile(r"\b(first|then|followed|follows|after|afterwards|before|later|next|finally|lastly|"
                        r"subsequently|eventually|until|begins?|starts?|ends?|at the end)\b", re.IGNORECASE)

_COUNT_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
_TIMES_WORDS = {"once": 1, "twice": 2, "three times": 3, "four times": 4, "five times": 5}
_COUNT = re.compile(r"\b(three times|four times|five times|once|twice|one|two|three|four|five)\b(?!-)", re.IGNORECASE)
# "After a bell rings, a crowd cheers." / "Before X, Y": the event order is in the sentence's frame
_LEADING = re.compile(r"^(after|before|once|when)\s+([^,]+),\s+(.+?)([.!]?)\s*$", re.IGNORECASE)
# scene descriptions that belong to the whole caption, not to its last event ("... over faint noise")
_SCENE = re.compile(r"\s+((?:over|with|in|amid|against|under)\s+[^,;]*\b(?:background|noise|room|distance|"
                    r"environment|ambience|outside|indoors|outdoors)\b[^,;]*)$", re.IGNORECASE)


def has_order_cue(caption: str) -> bool:
    """Whether a caption says anything about order (a cheap lexicon test, no parse)."""
    return bool(_ORDER_CUE.search(caption))


# idioms whose "after"/"then" does not join two events; a span ending in these words is no event
_IDIOM = re.compile(r"\b(one after (?:the )?(?:other|another)|after all|before long|then again|every now and then|"
                    r"now and then|after a while|before that)\b", re.IGNORECASE)
_DANGLING = re.compile(r"\b(who|which|that|is|are|was|were|and|it|then|to|of|the|a|an)$", re.IGNORECASE)


def _spans(caption: str) -> tuple[list[str], list[str]] | None:
    """(event spans, separators) such that caption = s0 + sep0 + s1 + sep1 + ...; None if < 2 spans."""
    body = caption.strip()
    if _IDIOM.search(body):
        return None
    parts = _CONNECTIVE.split(body)
    spans, seps = parts[0::2], [p + " " for p in parts[1::2]]
    if has_order_cue(body):  # "A before B, and C at the end": ", and" separates events here too
        split_spans, split_seps = [], []
        for i, span in enumerate(spans):
            sub = _AND.split(span)
            split_spans += sub[0::2]
            split_seps += [p + " " for p in sub[1::2]] + (seps[i:i + 1])
        spans, seps = split_spans, split_seps
    if len(spans) < 2 or any(_DANGLING.search(s.strip()) for s in spans[:-1]):
        return None  # "girls who | then speak": the cut is inside a clause, not between events
    return spans, seps


def _core(span: str) -> tuple[str, str, str]:
    """(leading order words, the event phrase, trailing order words / punctuation) of a span."""
    lead = _LEAD.match(span)
    head = lead.group(0) if lead else ""
    rest = span[len(head):]
    end = re.search(r"[.!;]*\s*$", rest)
    punct = rest[end.start():] if end else ""
    rest = rest[: len(rest) - len(punct)]
    trail = _TRAIL.search(rest)
    tail = rest[trail.start():] if trail else ""
    return head, rest[: len(rest) - len(tail)], tail + punct


def _match_case(text: str, like: str) -> str:
    if not text or not like:
        return text
    return (text[0].upper() if like[0].isupper() else text[0].lower()) + text[1:]


def reverse_order(caption: str) -> str | None:
    """The caption with its events in reverse time order (module docstring), or None."""
    lead = _LEADING.match(caption.strip())
    if lead:  # "After X, Y." -> "After Y, X."
        word, first, second, punct = lead.groups()
        return f"{word} {second[0].lower()}{second[1:]}, {first}{punct}"
    scene = ""
    body = caption.strip()
    end = re.search(r"[.!]*$", body)
    punct, body = body[end.start():], body[: end.start()]
    found = _SCENE.search(body)
    if found and _spans(body[: found.start()]) is not None:  # keep the scene phrase at the end
        scene, body = " " + found.group(1), body[: found.start()]
    cut = _spans(body)
    if cut is None:
        return None
    spans, seps = cut
    cores = [_core(s) for s in spans]
    events = [c[1].strip() for c in cores]
    if any(not e for e in events) or len(set(e.lower() for e in events)) < 2:
        return None
    out = []
    for i, ((head, was, tail), event) in enumerate(zip(cores, reversed(events))):
        # the event takes the case of the one it replaces ("A dog" at the start, "a dog" inside)
        event = event[0].lower() + event[1:] if head else _match_case(event, was.strip())
        out.append(f"{head}{event}{tail}")
        if i < len(seps):
            out.append(seps[i])
    text = "".join(out) + scene + punct
    return _match_case(text, caption.strip()) if text != caption.strip() else None


def change_count(caption: str, rng: random.Random | None = None) -> str | None:
    """The caption with one explicit count changed to another value of the same form, or None."""
    found = list(_COUNT.finditer(caption))
    if not found:
        return None
    rng = rng or random.Random(0)
    m = found[rng.randrange(len(found))]
    word = m.group(0).lower()
    table = _TIMES_WORDS if word in _TIMES_WORDS else _COUNT_WORDS
    value = table[word]
    # one more or one less, of the same form; numerals stay plural ("two dogs" -> "three dogs", never "one")
    others = [w for w, v in table.items() if abs(v - value) == 1 and (table is _TIMES_WORDS or v > 1)]
    if not others:
        return None
    new = rng.choice(sorted(others))
    new = _match_case(new, m.group(0))
    return caption[: m.start()] + new + caption[m.end():]


def add_count(caption: str, phrases: list[tuple[int, int, int]], counts: dict[int, int],
              rng: random.Random | None = None) -> str | None:
    """The caption with a count added to an event heard once: " twice" after the words naming it
    (``phrases``: (event, char start, char end) per word, from a scene's metadata, ``coattn.scenes.phrase_spans``;
    neighbouring words of one event are one name: "a vacuum cleaner twice", not "a vacuum twice cleaner";
    ``counts``: occurrences per event). A text rewrite alone cannot make this variant (nothing marks a bare
    "a cuckoo" as one occurrence); the event timings can. None when no named event is heard exactly once, or
    its name is already followed by a count word."""
    runs: list[list[int]] = []
    for e, a, z in sorted((e, a, z) for e, a, z in phrases if 0 <= a < z <= len(caption)):
        if runs and runs[-1][0] == e and caption[runs[-1][2]:a].strip(" -") == "":
            runs[-1][2] = z
        else:
            runs.append([e, a, z])
    once = [(a, z) for e, a, z in runs if counts.get(e) == 1 and not _COUNT.match(caption[z:].lstrip())]
    if not once:
        return None
    _, z = (rng or random.Random(0)).choice(sorted(once))
    return caption[:z] + " twice" + caption[z:]


def carry_phrases(old: str, new: str, phrases: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """The phrase spans (event, char start, char end) of ``old`` carried to ``new``, a rewrite of it by one edit
    (``change_count``, ``add_count``): the edit is what lies between the longest common prefix and suffix; spans
    before it stay, spans after it move by the change in length, a span it touches is dropped."""
    n = min(len(old), len(new))
    p = 0
    while p < n and old[p] == new[p]:
        p += 1
    s = 0
    while s < n - p and old[-1 - s] == new[-1 - s]:
        s += 1
    end, shift = len(old) - s, len(new) - len(old)
    return [(e, a, z) if z <= p else (e, a + shift, z + shift) for e, a, z in phrases if z <= p or a >= end]
