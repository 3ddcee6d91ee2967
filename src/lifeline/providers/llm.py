"""Memories and action items from a transcript: one Protocol, a rule-based default, two LLM clients.

- :class:`RuleBasedExtractor` (default): deterministic patterns for plain English statements about
  the speaker ("I love hiking", "My sister Anna lives in Berlin", "Remind me to call the dentist
  by Friday"). No model, no network, the same answer every time. There is no embedded LLM: the
  small models that fit in a package produce nonsense (see ARCHITECTURE.md).
- :class:`OllamaExtractor`: ``POST /api/chat`` with ``format: json``.
- :class:`OpenAIExtractor`: ``POST /v1/chat/completions`` with ``response_format: json_object``.

LLM answers are parsed and validated (pydantic). A malformed answer (not JSON, or not the schema)
is usually a sampling accident, so the extractor asks again, at most ``max_attempts`` times in all,
telling the model what was wrong; if every answer is malformed it raises
:class:`~lifeline.providers._http.MalformedResponse`, a *transient* error: the queue retries the job
later with backoff and dead-letters it, with the reason, once its attempts are spent.
"""

from __future__ import annotations

import abc
import enum
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lifeline.providers._http import HttpProvider, MalformedResponse, base_url, bearer, json_body, request
from lifeline.providers.asr import Segment

LLM_TIMEOUT: Final = 120.0


class MemoryCategory(enum.StrEnum):
    PREFERENCE = "preference"
    RELATION = "relation"
    PLAN = "plan"
    FACT = "fact"


class ActionStatus(enum.StrEnum):
    OPEN = "open"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class Memory:
    """A durable fact about the user, as a short third-person statement."""

    text: str
    category: MemoryCategory

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "category": self.category.value}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Memory:
        return cls(text=str(data["text"]), category=MemoryCategory(data["category"]))


@dataclass(frozen=True, slots=True)
class ActionItem:
    """A task said in a recording. ``assignee`` is None for the speaker; ``due`` is as said."""

    text: str
    assignee: str | None = None
    due: str | None = None
    status: ActionStatus = ActionStatus.OPEN
    at_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "assignee": self.assignee,
            "due": self.due,
            "status": self.status.value,
            "at_seconds": self.at_seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActionItem:
        at = data.get("at_seconds")
        return cls(
            text=str(data["text"]),
            assignee=data.get("assignee"),
            due=data.get("due"),
            status=ActionStatus(data.get("status", "open")),
            at_seconds=float(at) if at is not None else None,
        )


@runtime_checkable
class Extractor(Protocol):
    """Memories from a transcript; action items from its timed segments."""

    name: str

    async def memories(self, transcript: str) -> list[Memory]: ...

    async def action_items(self, segments: Sequence[Segment]) -> list[ActionItem]: ...

    async def aclose(self) -> None: ...


# =============================================================================================
# The rule-based extractor

_FILLER = re.compile(
    r"^(?:(?:and|but|so|well|oh|okay|ok|also|actually|anyway|by the way|you know|um|uh|hey|yeah|right)"
    r"[\s,]+)+",
    re.IGNORECASE,
)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?;])\s+|\s*;\s*")
# A new clause about the speaker inside a sentence: ", my sister ...", " and I need to ..."
_CLAUSE_SPLIT = re.compile(
    r",\s+(?:and\s+|but\s+|so\s+)?(?=(?:i|i'm|i've|i'll|i'd|my|remind|don't|please)\b)"
    r"|\s+(?:and|but|so)\s+(?=(?:i|i'm|i've|i'll|i'd|my|remind|don't)\b)",
    re.IGNORECASE,
)

_RELATIONS = (
    "wife|husband|partner|spouse|girlfriend|boyfriend|fiancee|fiancée|fiance|fiancé|mother|mom|mum|father|dad|"
    "parents|sister|brother|siblings|son|daughter|kids|children|child|baby|twin|cousin|aunt|uncle|niece|nephew|"
    "grandmother|grandma|grandfather|grandpa|grandparents|grandson|granddaughter|friend|best friend|"
    "roommate|flatmate|neighbor|neighbour|boss|manager|colleague|coworker|co-worker|team lead|mentor|"
    "doctor|dentist|therapist|lawyer|landlord|dog|cat|puppy|kitten|pet"
)
_REL = rf"(?:(?:older|younger|little|big|elder|baby|step|ex-?)\s*)?(?:{_RELATIONS})s?"
_NAME = r"(?-i:[A-Z][a-z]+(?:\s[A-Z][a-z]+)?)"  # case-sensitive inside IGNORECASE patterns

_IRREGULAR_3RD = {"have": "has", "do": "does", "go": "goes", "be": "is", "can": "can", "will": "will"}
_PAST_OR_FIXED = {"grew", "was", "studied", "graduated", "used", "moved", "met", "married", "can't", "cannot"}

_PREPOSITION_DUE = r"(?:by|before|on|until|till|due|no later than|at the latest by)\s+"
_WEEKDAY = r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
_MONTH = (
    r"(?:january|february|march|april|may|june|july|august|september|october|november|december|"
    r"jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec)"
)
_PART_OF_DAY = r"(?:\s+(?:morning|afternoon|evening|night|noon|lunch(?:time)?))?"
_CLOCK = r"(?:\s+at\s+\d{1,2}(?::\d{2})?\s*(?:am|pm|a\.m\.|p\.m\.|o'clock)?|\s+at\s+noon)?"
_DATE = (
    r"(?:the day after tomorrow|today|tonight|tomorrow|"
    rf"(?:next|this|coming)\s+(?:{_WEEKDAY}|week(?:end)?|month|year|quarter)|"
    r"(?:the\s+)?end\s+of\s+(?:the\s+)?(?:day|week|month|year|quarter)|"
    rf"{_WEEKDAY}|"
    rf"{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?|"
    rf"(?:the\s+)?\d{{1,2}}(?:st|nd|rd|th)(?:\s+of\s+{_MONTH})?|"
    r"in\s+(?:a|an|one|two|three|four|five|six|\d+)\s+(?:days?|weeks?|months?|hours?)"
    rf"){_PART_OF_DAY}{_CLOCK}"
)
_DUE = re.compile(rf"(?:,?\s*)\b(?:{_PREPOSITION_DUE})?(?P<due>{_DATE})\b", re.IGNORECASE)
_DUE_WITH_PREPOSITION = re.compile(
    rf"\b(?:by|before|until|no later than)\s+(?P<due>{_DATE})\b", re.IGNORECASE
)

_NOT_A_DEADLINE = frozenset({"for", "of", "since", "from", "during", "after", "last", "every", "about"})
# Capitalised words that start a sentence but are not people: "This will be fun", "Friday is fine".
_NOT_A_NAME = re.compile(
    r"^(?:i|you|he|she|it|we|they|this|that|there|here|what|which|who|everyone|everybody|someone|"
    r"somebody|nobody|today|tomorrow|tonight|monday|tuesday|wednesday|thursday|friday|saturday|sunday|"
    r"and|but|so|then|also|maybe|perhaps|please|let|the|a|an|my|our|your|their|his|her|it's|that's)$",
    re.IGNORECASE,
)

_ACTION_PATTERNS: tuple[tuple[re.Pattern[str], str | None], ...] = tuple(
    (re.compile(p, re.IGNORECASE), who)
    for p, who in (
        (r"\b(?:ask|tell|get)\s+(?P<who>(?-i:[A-Z][a-z]+))\s+to\s+(?P<task>.+)", "who"),
        (r"\bremind\s+me\s+(?:to|that\s+i\s+(?:need|have)\s+to)\s+(?P<task>.+)", None),
        (r"\b(?:don't|do\s+not)\s+(?:let\s+me\s+)?forget\s+(?:to\s+|about\s+)?(?P<task>.+)", None),
        (r"\b(?:remember|make\s+sure|be\s+sure)\s+to\s+(?P<task>.+)", None),
        (
            r"\b(?P<who>(?-i:[A-Z][a-z]+)|i|we)\s+(?:promised|agreed|offered|committed|volunteered)\s+to\s+"
            r"(?P<task>.+)",
            "who",
        ),
        (
            r"\b(?:i|we)\s+(?:really\s+|still\s+|also\s+|just\s+|definitely\s+)?"
            r"(?:need\s+to|have\s+to|have\s+got\s+to|'ve\s+got\s+to|got\s+to|gotta|must|ought\s+to|should)\s+"
            r"(?P<task>.+)",
            None,
        ),
        (r"\b(?:i'll|i\s+will|we'll|we\s+will)\s+(?:also\s+|definitely\s+)?(?P<task>.+)", None),
        (
            r"\b(?P<who>(?-i:[A-Z][a-z]+))\s+(?:will|needs\s+to|has\s+to|is\s+going\s+to|should)\s+(?P<task>.+)",
            "who",
        ),
    )
)
_DONE_PATTERN = re.compile(
    r"\b(?:i|we)(?:'ve|\s+have)?\s+(?:already|just|finally)\s+"
    r"(?P<task>(?:called|sent|paid|booked|bought|finished|submitted|emailed|e-mailed|done|did|fixed|ordered|"
    r"cancelled|canceled|renewed|returned|picked\s+up|signed|scheduled|written|wrote|replied\s+to|answered|"
    r"cleaned|made|filed|handed\s+in|completed)\b.+)",
    re.IGNORECASE,
)
_IMPERATIVE_WITH_DUE = re.compile(
    r"^(?:please\s+)?(?P<task>(?:send|call|email|e-mail|book|buy|pay|finish|submit|review|schedule|write|"
    r"prepare|fix|check|bring|pick\s+up|order|file|update|renew|cancel|sign|return|reply\s+to|"
    r"confirm|follow\s+up|set\s+up|clean|print|post|upload|share)\b.+)",
    re.IGNORECASE,
)
_NOT_A_TASK = re.compile(
    r"^(?:be\b|probably\b|never\b|always\b|see\s+you\b|talk\s+to\s+you\b|let\s+you\s+know\b|"
    r"think\s+about\s+it\b|try\b$)",
    re.IGNORECASE,
)

_Rule = tuple[re.Pattern[str], MemoryCategory, Callable[[re.Match[str]], str]]


def _third(verb: str) -> str:
    """``love`` -> ``loves``: the third person singular of a present-tense verb."""
    low = verb.lower()
    if low in _IRREGULAR_3RD:
        return _IRREGULAR_3RD[low]
    if low in _PAST_OR_FIXED or low.endswith("ed"):
        return low
    if re.search(r"(?:s|sh|ch|x|z|o)$", low):
        return low + "es"
    if re.search(r"[^aeiou]y$", low):
        return low[:-1] + "ies"
    return low + "s"


_REFLECT = (
    (re.compile(r"\bmyself\b", re.IGNORECASE), "themselves"),
    (re.compile(r"\bmine\b", re.IGNORECASE), "theirs"),
    (re.compile(r"\bmy\b", re.IGNORECASE), "their"),
    (re.compile(r"\bme\b", re.IGNORECASE), "them"),
    (re.compile(r"\bI'm\b"), "they're"),
    (re.compile(r"\bI\b"), "they"),
)


def _reflect(text: str) -> str:
    """First person to third person inside a clause's object ("my dog" -> "their dog")."""
    for pattern, repl in _REFLECT:
        text = pattern.sub(repl, text)
    return text


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"[\s,;:.!]+$", "", text)
    text = re.sub(r"\s*,?\s*(?:please|okay|ok|right|alright|though|too)$", "", text, flags=re.IGNORECASE)
    return text.strip()


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def _memory_rules() -> tuple[_Rule, ...]:
    i_am = r"i(?:'m|\s+am)"
    adv = r"(?:really\s+|absolutely\s+|totally\s+|also\s+|just\s+|still\s+|do\s+|truly\s+|kind\s+of\s+)*"
    rules: list[tuple[str, MemoryCategory, Callable[[re.Match[str]], str]]] = [
        # -- preferences
        (
            r"^i\s+(?:really\s+|just\s+)?(?:don't|do\s+not|didn't)\s+(?P<v>like|enjoy|love)\s+(?P<o>.+)",
            MemoryCategory.PREFERENCE,
            lambda m: f"User doesn't {m['v'].lower()} {_reflect(m['o'])}",
        ),
        (
            rf"^i\s+{adv}(?P<v>love|like|enjoy|adore|prefer|hate|dislike|detest|loathe)\s+(?P<o>.+)",
            MemoryCategory.PREFERENCE,
            lambda m: f"User {_third(m['v'])} {_reflect(m['o'])}",
        ),
        (
            r"^i\s+(?:can't|cannot)\s+stand\s+(?P<o>.+)",
            MemoryCategory.PREFERENCE,
            lambda m: f"User can't stand {_reflect(m['o'])}",
        ),
        (
            rf"^{i_am}\s+(?:a\s+)?(?:big\s+|huge\s+|really\s+)?"
            r"(?P<v>fan\s+of|into|passionate\s+about|keen\s+on|crazy\s+about|obsessed\s+with)\s+(?P<o>.+)",
            MemoryCategory.PREFERENCE,
            lambda m: f"User is {'a fan of' if m['v'].startswith('fan') else m['v']} {_reflect(m['o'])}",
        ),
        (
            r"^my\s+(?:absolute\s+)?(?:favou?rite)\s+(?P<what>[\w\s]+?)\s+(?:is|are)\s+(?P<o>.+)",
            MemoryCategory.PREFERENCE,
            lambda m: f"User's favorite {m['what']} is {_reflect(m['o'])}",
        ),
        (
            rf"^{i_am}\s+(?:a\s+|an\s+)?(?P<o>vegetarian|vegan|pescatarian|teetotal|gluten[- ]free)"
            r"\b(?P<r>.*)",
            MemoryCategory.PREFERENCE,
            lambda m: f"User is {m['o']}{_reflect(m['r'])}",
        ),
        # -- relations
        (
            rf"^my\s+(?P<rel>{_REL})(?P<r>(?:'s|\s).+)",
            MemoryCategory.RELATION,
            lambda m: f"User's {m['rel']}{_reflect(m['r'])}",
        ),
        (
            rf"^(?P<name>{_NAME})\s+(?P<be>is|was|are)\s+my\s+(?P<rel>{_REL})\b(?P<r>.*)",
            MemoryCategory.RELATION,
            lambda m: f"{m['name']} {m['be']} User's {m['rel']}{_reflect(m['r'])}",
        ),
        (
            rf"^i\s+have\s+(?P<n>a|an|one|two|three|four|five|\d+)\s+(?P<rel>{_REL})\b(?P<r>.*)",
            MemoryCategory.RELATION,
            lambda m: f"User has {m['n']} {m['rel']}{_reflect(m['r'])}",
        ),
        (
            rf"^{i_am}\s+(?P<v>married\s+to|engaged\s+to|dating|seeing|divorced\s+from)\s+(?P<o>.+)",
            MemoryCategory.RELATION,
            lambda m: f"User is {m['v']} {_reflect(m['o'])}",
        ),
        # -- plans
        (
            rf"^(?:{i_am}|we're|we\s+are)\s+(?P<v>going|planning|hoping|about|thinking\s+about)\s+to\s+(?P<o>.+)",
            MemoryCategory.PLAN,
            lambda m: f"User is {m['v']} to {_reflect(m['o'])}",
        ),
        (
            rf"^(?:{i_am})\s+(?P<v>going|moving|flying|travell?ing|driving|heading|relocating)\s+"
            r"(?P<p>to|back\s+to|abroad|home)\b(?P<o>.*)",
            MemoryCategory.PLAN,
            lambda m: f"User is {m['v']} {m['p']}{_reflect(m['o'])}",
        ),
        (
            r"^i(?:'d|\s+would)\s+(?:really\s+)?(?:like|love)\s+to\s+(?P<o>.+)",
            MemoryCategory.PLAN,
            lambda m: f"User would like to {_reflect(m['o'])}",
        ),
        (
            r"^i\s+(?:really\s+)?(?P<v>plan|want|intend|hope|wish)\s+to\s+(?P<o>.+)",
            MemoryCategory.PLAN,
            lambda m: f"User {_third(m['v'])} to {_reflect(m['o'])}",
        ),
        (
            rf"^(?P<when>(?:next|this|in)\s+(?:week(?:end)?|month|year|summer|winter|spring|autumn|fall|"
            rf"{_MONTH}|{_WEEKDAY}))\s*,?\s*(?:{i_am}|i'll|i\s+will)\s+(?P<o>.+)",
            MemoryCategory.PLAN,
            lambda m: f"User will {_reflect(m['o'])} {m['when'].lower()}",
        ),
        (
            r"^(?:i'll|i\s+will)\s+(?P<v>be|go|visit|move|travel|fly|start|attend|spend)\s+(?P<o>.+)",
            MemoryCategory.PLAN,
            lambda m: f"User will {m['v']} {_reflect(m['o'])}",
        ),
        # -- facts
        (
            r"^my\s+name\s+is\s+(?P<o>.+)",
            MemoryCategory.FACT,
            lambda m: f"User's name is {m['o']}",
        ),
        (
            r"^my\s+(?P<what>birthday|address|phone\s+number|email(?:\s+address)?|job|company|employer|car|"
            r"home(?:town)?|house|apartment|flat|team|blood\s+type|native\s+language|first\s+language)\s+"
            r"(?P<be>is|are|was)\s+(?P<o>.+)",
            MemoryCategory.FACT,
            lambda m: f"User's {m['what']} {m['be']} {_reflect(m['o'])}",
        ),
        (
            rf"^{i_am}\s+(?P<o>\d+)\s+(?:years?\s+old|years?)\b",
            MemoryCategory.FACT,
            lambda m: f"User is {m['o']} years old",
        ),
        (
            rf"^{i_am}\s+(?P<v>from|allergic\s+to|based\s+in|originally\s+from|retired|studying|learning|"
            r"training\s+for|working\s+(?:on|at|as|for)|left[- ]handed|right[- ]handed)\b(?P<o>.*)",
            MemoryCategory.FACT,
            lambda m: f"User is {m['v']}{_reflect(m['o'])}",
        ),
        (
            rf"^{i_am}\s+(?P<a>a|an)\s+(?!bit\b|little\b|lot\b|mess\b|fan\b|big\s+fan\b)(?P<o>.+)",
            MemoryCategory.FACT,
            lambda m: f"User is {m['a']} {_reflect(m['o'])}",
        ),
        (
            r"^i\s+(?P<v>live|work|study|teach|grew\s+up|was\s+born|stay|volunteer)\s+"
            r"(?P<p>in|at|for|as|on|near|with|from)\s+(?P<o>.+)",
            MemoryCategory.FACT,
            lambda m: f"User {_third_phrase(m['v'])} {m['p']} {_reflect(m['o'])}",
        ),
        (
            r"^i\s+(?P<v>speak|drive|own|play|practice|practise|studied|graduated\s+from|used\s+to|"
            r"have\s+been|have)\s+(?!to\b|got\s+to\b)(?P<o>.+)",
            MemoryCategory.FACT,
            lambda m: f"User {_third_phrase(m['v'])} {_reflect(m['o'])}",
        ),
    ]
    return tuple((re.compile(p, re.IGNORECASE), c, f) for p, c, f in rules)


def _third_phrase(verb_phrase: str) -> str:
    words = verb_phrase.split()
    return " ".join([_third(words[0]), *words[1:]])


_MEMORY_RULES: Final = _memory_rules()


@dataclass(frozen=True, slots=True)
class _Clause:
    text: str
    offset: int  # character offset in the text it came from


def _clauses(text: str) -> list[_Clause]:
    """Sentences, then clauses about the speaker, each with where it starts in ``text``."""
    out: list[_Clause] = []
    for sentence in _split_with_offsets(_SENTENCE_SPLIT, text, 0):
        for clause in _split_with_offsets(_CLAUSE_SPLIT, sentence.text, sentence.offset):
            stripped = clause.text.strip()
            filler = _FILLER.match(stripped)
            lead = len(clause.text) - len(clause.text.lstrip())
            if filler:
                lead += filler.end()
                stripped = stripped[filler.end() :]
            if stripped:
                out.append(_Clause(stripped, clause.offset + lead))
    return out


def _split_with_offsets(pattern: re.Pattern[str], text: str, base: int) -> list[_Clause]:
    parts: list[_Clause] = []
    start = 0
    for m in pattern.finditer(text):
        parts.append(_Clause(text[start : m.start()], base + start))
        start = m.end()
    parts.append(_Clause(text[start:], base + start))
    return [p for p in parts if p.text.strip()]


def _is_question_or_hypothetical(clause: str) -> bool:
    return clause.rstrip().endswith("?") or bool(
        re.match(
            r"^(?:if|when|whether|do\s+you|does|did\s+you|would\s+you|can\s+you)\b", clause, re.IGNORECASE
        )
    )


def extract_memories(transcript: str) -> list[Memory]:
    """The rule-based memories of ``transcript`` (deterministic; duplicates removed)."""
    found: list[Memory] = []
    seen: set[str] = set()
    for clause in _clauses(transcript):
        if _is_question_or_hypothetical(clause.text):
            continue
        body = _tidy(clause.text)
        for pattern, category, render in _MEMORY_RULES:
            m = pattern.match(body)
            if m is None:
                continue
            text = _tidy(render(m))
            if len(text.split()) < 3:
                continue
            key = text.lower()
            if key not in seen:
                seen.add(key)
                found.append(Memory(text=text, category=category))
            break
    return found


def _split_due(task: str, *, anywhere: bool = True) -> tuple[str, str | None]:
    """Take the due date out of ``task``: ("call the dentist by Friday") -> ("call the dentist", "Friday")."""
    pattern = _DUE if anywhere else _DUE_WITH_PREPOSITION
    m = None
    for candidate in pattern.finditer(task):  # the last date mentioned is the deadline
        before = task[: candidate.start()].split()
        if before and before[-1].lower() in _NOT_A_DEADLINE:
            continue  # "the budget for next quarter", "since Monday": a date, not a deadline
        m = candidate
    if m is None:
        return task, None
    due = re.sub(r"\s+", " ", m["due"]).strip()
    due = re.sub(rf"\b{_WEEKDAY}\b|\b{_MONTH}\b", lambda w: w[0].capitalize(), due, flags=re.IGNORECASE)
    rest = (task[: m.start()] + task[m.end() :]).strip()
    return rest, due


def _action_from_clause(clause: str) -> ActionItem | None:
    body = _tidy(clause)
    if not body or _is_question_or_hypothetical(clause):
        return None
    done = _DONE_PATTERN.search(body)
    if done:
        task, due = _split_due(done["task"])
        return ActionItem(text=_capitalise(_tidy(task)), due=due, status=ActionStatus.DONE)
    for pattern, who_group in _ACTION_PATTERNS:
        m = pattern.search(body)
        if m is None:
            continue
        assignee: str | None = None
        if who_group is not None:
            who = m[who_group]
            if _NOT_A_NAME.match(who):
                if who.lower() not in ("i", "we"):
                    continue  # "This will be fun": not a person
            else:
                assignee = who
        task, due = _split_due(m["task"])
        task = _tidy(task)
        if not task or _NOT_A_TASK.match(task) or (len(task.split()) < 2 and due is None):
            continue
        return ActionItem(text=_capitalise(task), assignee=assignee, due=due)
    imperative = _IMPERATIVE_WITH_DUE.match(body)
    if imperative and _DUE_WITH_PREPOSITION.search(body):
        task, due = _split_due(imperative["task"], anywhere=False)
        return ActionItem(text=_capitalise(_tidy(task)), due=due)
    return None


def extract_action_items(segments: Sequence[Segment]) -> list[ActionItem]:
    """The rule-based action items of timed ``segments`` (deterministic; duplicates removed).

    ``at_seconds`` is where the item's clause starts, interpolated inside its segment by characters.
    """
    found: list[ActionItem] = []
    seen: set[str] = set()
    for segment in segments:
        length = max(len(segment.text), 1)
        span = max(segment.end - segment.start, 0.0)
        for clause in _clauses(segment.text):
            item = _action_from_clause(clause.text)
            if item is None:
                continue
            key = item.text.lower()
            if key in seen:
                continue
            seen.add(key)
            at = round(segment.start + span * clause.offset / length, 2)
            found.append(
                ActionItem(
                    text=item.text, assignee=item.assignee, due=item.due, status=item.status, at_seconds=at
                )
            )
    return found


class RuleBasedExtractor:
    """The embedded default: patterns, no model. Same input, same output, no I/O."""

    name = "embedded"

    async def memories(self, transcript: str) -> list[Memory]:
        return extract_memories(transcript)

    async def action_items(self, segments: Sequence[Segment]) -> list[ActionItem]:
        return extract_action_items(segments)

    async def aclose(self) -> None:
        return None


# =============================================================================================
# LLM extractors

MEMORY_PROMPT: Final = """\
You extract durable facts about the speaker from a transcript of their own speech.
Keep only facts likely to stay true for weeks or longer: preferences, relationships (people and \
pets in their life), plans, and facts about them (work, home, health, skills). Skip small talk, \
passing moods and anything said about other topics.
Write each memory as one short third-person sentence that starts with "User" (e.g. "User loves \
hiking", "User's sister Anna lives in Berlin").
Answer with one JSON object and nothing else:
{"memories": [{"text": "...", "category": "preference" | "relation" | "plan" | "fact"}]}
If there is nothing durable, answer {"memories": []}."""

ACTION_PROMPT: Final = """\
You extract action items (tasks someone committed to or was asked to do) from a transcript. \
Each line starts with the time in seconds at which it was said, in brackets.
For each task give: "text" (a short imperative, e.g. "Call the dentist"), "assignee" (the person \
who should do it, by name, or null when it is the speaker), "due" (the deadline exactly as said, \
e.g. "Friday", or null), "status" ("done" if the speaker says it is already done, else "open"), \
and "at_seconds" (the time of the line where it was said).
Answer with one JSON object and nothing else:
{"action_items": [{"text": "...", "assignee": null, "due": null, "status": "open", "at_seconds": 0.0}]}
If there are none, answer {"action_items": []}."""

_CATEGORY_SYNONYMS = {
    "preferences": "preference",
    "like": "preference",
    "likes": "preference",
    "relations": "relation",
    "relationship": "relation",
    "relationships": "relation",
    "person": "relation",
    "people": "relation",
    "plans": "plan",
    "goal": "plan",
    "goals": "plan",
    "facts": "fact",
    "personal": "fact",
    "biographical": "fact",
}


class _MemoryOut(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    text: str = Field(min_length=1, max_length=1000)
    category: MemoryCategory

    @field_validator("category", mode="before")
    @classmethod
    def _category(cls, value: object) -> object:
        if isinstance(value, str):
            low = value.strip().lower()
            return _CATEGORY_SYNONYMS.get(low, low)
        return value


class _MemoriesOut(BaseModel):
    model_config = ConfigDict(extra="ignore")

    memories: list[_MemoryOut]


class _ActionOut(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    text: str = Field(min_length=1, max_length=1000)
    assignee: str | None = None
    due: str | None = None
    status: ActionStatus = ActionStatus.OPEN
    at_seconds: float | None = None

    @field_validator("assignee", "due", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("", "null", "none", "n/a", "me", "speaker"):
            return None
        return value

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: object) -> object:
        if value is None:
            return ActionStatus.OPEN
        if isinstance(value, str):
            low = value.strip().lower()
            return {"completed": "done", "complete": "done", "todo": "open", "pending": "open"}.get(low, low)
        return value


class _ActionsOut(BaseModel):
    model_config = ConfigDict(extra="ignore")

    action_items: list[_ActionOut]


_Out = TypeVar("_Out", bound=BaseModel)


def parse_llm_json(content: str, model: type[_Out], key: str) -> _Out:
    """Parse and validate an LLM's JSON answer; ``ValueError`` says what is wrong with it.

    Tolerates what models commonly add around valid JSON: Markdown fences, and a bare list where
    an object holding the list under ``key`` was asked for.
    """
    text = content.strip()
    fenced = re.match(r"^```(?:json)?\s*(.*?)\s*```$", text, re.DOTALL)
    if fenced:
        text = fenced.group(1)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at position {e.pos})") from e
    if isinstance(data, list):
        data = {key: data}
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ValueError(f"JSON does not match the schema: {where}: {first.get('msg')}") from e


class _LLMExtractor(HttpProvider, abc.ABC):
    """Shared by the LLM clients: prompts, validation, and the bounded retry of malformed answers."""

    name = "llm"
    service = "llm"
    default_url: str
    default_model: str

    def __init__(
        self,
        *,
        url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        timeout_seconds: float = LLM_TIMEOUT,
        max_attempts: int = 3,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(timeout_seconds=timeout_seconds, client=client)
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.url = base_url(url or self.default_url)
        self.model = model or self.default_model
        self.api_key = api_key
        self.max_attempts = max_attempts

    @abc.abstractmethod
    async def _chat(self, messages: list[dict[str, str]]) -> str:
        """One chat round trip; each server speaks its own API."""

    async def _ask(self, system: str, user: str, model: type[_Out], key: str) -> _Out:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        problem = ""
        for _attempt in range(self.max_attempts):
            content = await self._chat(messages)
            try:
                return parse_llm_json(content, model, key)
            except ValueError as e:
                problem = str(e)
                messages = [
                    *messages[:2],
                    {"role": "assistant", "content": content[:4000]},
                    {
                        "role": "user",
                        "content": f"That answer was not usable: {problem}. "
                        "Answer again with only the JSON object described above.",
                    },
                ]
        raise MalformedResponse(
            self.service, f"{self.model} gave no valid answer in {self.max_attempts} attempts: {problem}"
        )

    async def memories(self, transcript: str) -> list[Memory]:
        if not transcript.strip():
            return []
        out = await self._ask(MEMORY_PROMPT, transcript.strip(), _MemoriesOut, "memories")
        seen: set[str] = set()
        result = []
        for m in out.memories:
            if m.text.lower() not in seen:
                seen.add(m.text.lower())
                result.append(Memory(text=m.text, category=m.category))
        return result

    async def action_items(self, segments: Sequence[Segment]) -> list[ActionItem]:
        lines = [f"[{s.start:.1f}] {s.text.strip()}" for s in segments if s.text.strip()]
        if not lines:
            return []
        out = await self._ask(ACTION_PROMPT, "\n".join(lines), _ActionsOut, "action_items")
        end = max(s.end for s in segments)
        return [
            ActionItem(
                text=a.text,
                assignee=a.assignee,
                due=a.due,
                status=a.status,
                at_seconds=a.at_seconds
                if a.at_seconds is not None and 0 <= a.at_seconds <= end + 1
                else None,
            )
            for a in out.action_items
        ]


class _OllamaMessage(BaseModel):
    content: str


class _OllamaChat(BaseModel):
    message: _OllamaMessage


class OllamaExtractor(_LLMExtractor):
    """An Ollama server: ``POST {url}/api/chat`` with ``format: json`` and temperature 0."""

    name = "ollama"
    default_url = "http://localhost:11434"
    default_model = "llama3.2"

    async def _chat(self, messages: list[dict[str, str]]) -> str:
        response = await request(
            self.client,
            self.service,
            "POST",
            f"{self.url}/api/chat",
            json={
                "model": self.model,
                "messages": messages,
                "format": "json",
                "stream": False,
                "options": {"temperature": 0},
            },
            headers=bearer(self.api_key),
        )
        try:
            return _OllamaChat.model_validate(json_body(self.service, response)).message.content
        except ValidationError as e:
            raise MalformedResponse(self.service, f"unexpected Ollama answer: {e.errors()[0]['msg']}") from e


class _OpenAIMessage(BaseModel):
    content: str | None = None


class _OpenAIChoice(BaseModel):
    message: _OpenAIMessage


class _OpenAIChat(BaseModel):
    choices: list[_OpenAIChoice] = Field(min_length=1)


class OpenAIExtractor(_LLMExtractor):
    """An OpenAI-compatible server: ``POST {url}/v1/chat/completions`` in JSON mode, temperature 0."""

    name = "openai"
    default_url = "https://api.openai.com"
    default_model = "gpt-4o-mini"

    async def _chat(self, messages: list[dict[str, str]]) -> str:
        response = await request(
            self.client,
            self.service,
            "POST",
            f"{self.url}/v1/chat/completions",
            json={
                "model": self.model,
                "messages": messages,
                "response_format": {"type": "json_object"},
                "temperature": 0,
            },
            headers=bearer(self.api_key),
        )
        try:
            chat = _OpenAIChat.model_validate(json_body(self.service, response))
        except ValidationError as e:
            raise MalformedResponse(self.service, f"unexpected chat answer: {e.errors()[0]['msg']}") from e
        return chat.choices[0].message.content or ""
