"""Extractors: the rule-based default on a table of sentences, and the Ollama / OpenAI clients against
loopback peers (JSON validated, malformed answers retried a bounded number of times, faults mapped)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lifeline.domain import PermanentError, TransientError
from lifeline.providers._http import MalformedResponse, ServiceError, ServiceRejected
from lifeline.providers.asr import Segment
from lifeline.providers.llm import (
    ActionItem,
    ActionStatus,
    Memory,
    MemoryCategory,
    OllamaExtractor,
    OpenAIExtractor,
    RuleBasedExtractor,
    extract_action_items,
    extract_memories,
    parse_llm_json,
)
from peers.ollama import OllamaAPI
from peers.openai import OpenAIAPI
from peers.server import Fault, HTTPPeer

P, R, PL, F = MemoryCategory.PREFERENCE, MemoryCategory.RELATION, MemoryCategory.PLAN, MemoryCategory.FACT

MEMORY_TABLE: list[tuple[str, list[tuple[str, MemoryCategory]]]] = [
    ("I love hiking.", [("User loves hiking", P)]),
    ("I love hiking in the mountains.", [("User loves hiking in the mountains", P)]),
    ("I really enjoy cooking Italian food.", [("User enjoys cooking Italian food", P)]),
    ("I don't like horror movies.", [("User doesn't like horror movies", P)]),
    ("I hate waking up early.", [("User hates waking up early", P)]),
    ("I prefer tea to coffee.", [("User prefers tea to coffee", P)]),
    ("I can't stand loud music.", [("User can't stand loud music", P)]),
    ("I'm a huge fan of jazz.", [("User is a fan of jazz", P)]),
    ("My favorite color is blue.", [("User's favorite color is blue", P)]),
    ("I'm vegetarian.", [("User is vegetarian", P)]),
    ("I love my dog.", [("User loves their dog", P)]),
    ("My sister Anna lives in Berlin.", [("User's sister Anna lives in Berlin", R)]),
    ("My wife's name is Maria.", [("User's wife's name is Maria", R)]),
    ("My boss is very demanding.", [("User's boss is very demanding", R)]),
    ("Tom is my best friend.", [("Tom is User's best friend", R)]),
    ("I have two kids.", [("User has two kids", R)]),
    ("I have a dog named Rex.", [("User has a dog named Rex", R)]),
    ("I'm married to Sarah.", [("User is married to Sarah", R)]),
    ("I'm going to visit Japan next spring.", [("User is going to visit Japan next spring", PL)]),
    ("I'm planning to run a marathon.", [("User is planning to run a marathon", PL)]),
    ("I'm moving to Lisbon in March.", [("User is moving to Lisbon in March", PL)]),
    ("I want to learn the piano.", [("User wants to learn the piano", PL)]),
    ("I'd like to visit my grandmother.", [("User would like to visit their grandmother", PL)]),
    ("Next year I will start a business.", [("User will start a business next year", PL)]),
    ("My name is John.", [("User's name is John", F)]),
    ("I work at Google as a software engineer.", [("User works at Google as a software engineer", F)]),
    ("I live in Amsterdam.", [("User lives in Amsterdam", F)]),
    ("I grew up in Ohio.", [("User grew up in Ohio", F)]),
    ("I'm allergic to peanuts.", [("User is allergic to peanuts", F)]),
    ("I'm 34 years old.", [("User is 34 years old", F)]),
    ("I'm a nurse.", [("User is a nurse", F)]),
    ("I'm from Canada.", [("User is from Canada", F)]),
    ("I speak French and Spanish.", [("User speaks French and Spanish", F)]),
    ("My birthday is on June 3rd.", [("User's birthday is on June 3rd", F)]),
    # several statements in one breath, with fillers
    (
        "Well, I love hiking in the mountains, my sister lives in Berlin and I work as a teacher.",
        [
            ("User loves hiking in the mountains", P),
            ("User's sister lives in Berlin", R),
            ("User works as a teacher", F),
        ],
    ),
    # nothing durable
    ("The weather is nice today.", []),
    ("I'm a bit tired today.", []),
    ("Do you like pizza?", []),
    ("If I have time I'll go swimming.", []),
    ("Remind me to call the dentist by Friday.", []),
    ("", []),
]


@pytest.mark.parametrize(
    ("sentence", "expected"), MEMORY_TABLE, ids=[s[:40] or "empty" for s, _ in MEMORY_TABLE]
)
def test_rule_based_memories(sentence: str, expected: list[tuple[str, MemoryCategory]]) -> None:
    assert [(m.text, m.category) for m in extract_memories(sentence)] == expected


OPEN, DONE = ActionStatus.OPEN, ActionStatus.DONE
ACTION_TABLE: list[tuple[str, list[tuple[str, str | None, str | None, ActionStatus]]]] = [
    ("Remind me to call the dentist by Friday.", [("Call the dentist", None, "Friday", OPEN)]),
    ("I need to buy milk tomorrow.", [("Buy milk", None, "tomorrow", OPEN)]),
    ("I have to pay rent on the 1st.", [("Pay rent", None, "the 1st", OPEN)]),
    ("Don't forget to send the invoice to Sarah.", [("Send the invoice to Sarah", None, None, OPEN)]),
    ("I'll email the report by Monday.", [("Email the report", None, "Monday", OPEN)]),
    ("I promised to help Sam move on Saturday.", [("Help Sam move", None, "Saturday", OPEN)]),
    ("Tom promised to review the slides by Thursday.", [("Review the slides", "Tom", "Thursday", OPEN)]),
    ("Ask Maria to book the meeting room.", [("Book the meeting room", "Maria", None, OPEN)]),
    (
        "Peter will prepare the budget for next quarter.",
        [("Prepare the budget for next quarter", "Peter", None, OPEN)],
    ),
    ("I should call my mom tonight.", [("Call my mom", None, "tonight", OPEN)]),
    ("Make sure to water the plants.", [("Water the plants", None, None, OPEN)]),
    ("Send me the contract by next Wednesday.", [("Send me the contract", None, "next Wednesday", OPEN)]),
    (
        "Okay, so I need to renew my passport before the end of the month.",
        [("Renew my passport", None, "the end of the month", OPEN)],
    ),
    (
        "I need to finish the slides by tomorrow at 3 pm.",
        [("Finish the slides", None, "tomorrow at 3 pm", OPEN)],
    ),
    ("I already called the plumber.", [("Called the plumber", None, None, DONE)]),
    ("We've just booked the flights.", [("Booked the flights", None, None, DONE)]),
    # not tasks
    ("This will be fun.", []),
    ("The report will take a while.", []),
    ("the team promised to deliver on Monday.", []),
    ("The weather is nice today.", []),
    ("I love hiking.", []),
    ("Do I need to bring anything?", []),
    ("I'll be there.", []),
    ("I'll see you later.", []),
]


@pytest.mark.parametrize(("sentence", "expected"), ACTION_TABLE, ids=[s[:40] for s, _ in ACTION_TABLE])
def test_rule_based_action_items(
    sentence: str, expected: list[tuple[str, str | None, str | None, ActionStatus]]
) -> None:
    items = extract_action_items([Segment(10.0, 14.0, sentence)])
    assert [(a.text, a.assignee, a.due, a.status) for a in items] == expected


def test_action_items_carry_the_time_they_were_said() -> None:
    segments = [
        Segment(0.0, 4.0, "Good morning everyone."),
        Segment(4.0, 12.0, "The weather is lovely. Remind me to call the dentist by Friday."),
        Segment(12.0, 15.0, "Remind me to call the dentist by Friday."),  # said twice: one item
        Segment(15.0, 18.0, "And don't forget the milk."),
    ]
    items = extract_action_items(segments)
    assert [a.text for a in items] == ["Call the dentist", "The milk"]
    assert 4.0 < (items[0].at_seconds or 0) < 12.0  # inside its segment, after the first sentence
    assert items[0].at_seconds == pytest.approx(4.0 + 8.0 * 23 / 63, abs=0.01)
    assert items[1].at_seconds == pytest.approx(15.0 + 3 * 4 / 26, abs=0.01)


async def test_the_rule_based_extractor_is_deterministic() -> None:
    extractor = RuleBasedExtractor()
    text = " ".join(s for s, _ in MEMORY_TABLE)
    segments = [Segment(float(i), float(i + 1), s) for i, (s, _) in enumerate(ACTION_TABLE)]
    first = (await extractor.memories(text), await extractor.action_items(segments))
    second = (await extractor.memories(text), await extractor.action_items(segments))
    assert first == second
    assert len(first[0]) >= 30
    assert len(first[1]) >= 15
    await extractor.aclose()


def test_memory_and_action_item_dicts_round_trip() -> None:
    memory = Memory("User loves hiking", MemoryCategory.PREFERENCE)
    assert Memory.from_dict(memory.to_dict()) == memory
    item = ActionItem("Call the dentist", "Tom", "Friday", ActionStatus.DONE, 12.5)
    assert ActionItem.from_dict(item.to_dict()) == item
    assert ActionItem.from_dict({"text": "x"}) == ActionItem("x")


# ---------------------------------------------------------------------------------------------
# LLM answers: parsing and validation

MEMORIES_JSON = json.dumps(
    {
        "memories": [
            {"text": "User loves hiking", "category": "preference"},
            {"text": "User's sister Anna lives in Berlin", "category": "Relationship"},
            {"text": "User loves hiking", "category": "preference"},  # a duplicate
        ]
    }
)
ACTIONS_JSON = json.dumps(
    {
        "action_items": [
            {
                "text": "Call the dentist",
                "assignee": None,
                "due": "Friday",
                "status": "open",
                "at_seconds": 4.0,
            },
            {"text": "Send slides", "assignee": "Tom", "due": "", "status": "completed", "at_seconds": 99.0},
        ]
    }
)


def test_parse_llm_json_tolerates_fences_and_bare_lists() -> None:
    from lifeline.providers.llm import _MemoriesOut

    fenced = "```json\n" + MEMORIES_JSON + "\n```"
    assert len(parse_llm_json(fenced, _MemoriesOut, "memories").memories) == 3
    bare = json.dumps([{"text": "User is a nurse", "category": "fact"}])
    assert parse_llm_json(bare, _MemoriesOut, "memories").memories[0].text == "User is a nurse"
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_llm_json("Sure! Here are the memories: ...", _MemoriesOut, "memories")
    with pytest.raises(ValueError, match=r"does not match the schema: memories\.0\.category"):
        parse_llm_json('{"memories": [{"text": "x", "category": "colour"}]}', _MemoriesOut, "memories")
    with pytest.raises(ValueError, match=r"memories\.0\.text"):
        parse_llm_json('{"memories": [{"text": "", "category": "fact"}]}', _MemoriesOut, "memories")


def answers(*replies: str) -> Callable[[str], str]:
    """A model that gives ``replies`` in turn (the last one for ever after)."""
    queue: Iterator[str] = iter(replies)
    last = [replies[-1]]

    def reply(_prompt: str) -> str:
        last[0] = next(queue, last[0])
        return last[0]

    return reply


SEGMENTS = [Segment(0.0, 3.5, "Good morning."), Segment(3.5, 9.0, "Remind me to call the dentist by Friday.")]


def ollama(url: str, **kw: Any) -> OllamaExtractor:
    return OllamaExtractor(url=url, model="llama3.2", **kw)


def openai(url: str, **kw: Any) -> OpenAIExtractor:
    return OpenAIExtractor(url=url, model="gpt-4o-mini", api_key="sk-test", **kw)


def llm_peer(kind: str, reply: Callable[[str], str]) -> HTTPPeer:
    return HTTPPeer(OllamaAPI(reply=reply) if kind == "ollama" else OpenAIAPI(api_key="sk-test", reply=reply))


MAKERS = {"ollama": ollama, "openai": openai}
CHAT_PATH = {"ollama": "/api/chat", "openai": "/v1/chat/completions"}


@pytest.mark.parametrize("kind", ["ollama", "openai"])
async def test_llm_memories_and_action_items(kind: str) -> None:
    def reply(prompt: str) -> str:
        return ACTIONS_JSON if prompt.startswith("[") else MEMORIES_JSON

    with llm_peer(kind, reply) as peer:
        async with MAKERS[kind](peer.url) as extractor:
            memories = await extractor.memories("I love hiking. My sister Anna lives in Berlin.")
            items = await extractor.action_items(SEGMENTS)
            assert await extractor.memories("   ") == []  # nothing said: no call
            assert await extractor.action_items([]) == []
        sent = [r.json() for r in peer.requests_to(CHAT_PATH[kind])]

    assert memories == [
        Memory("User loves hiking", MemoryCategory.PREFERENCE),
        Memory("User's sister Anna lives in Berlin", MemoryCategory.RELATION),
    ]
    assert items == [
        ActionItem("Call the dentist", None, "Friday", ActionStatus.OPEN, 4.0),
        ActionItem("Send slides", "Tom", None, ActionStatus.DONE, None),  # 99 s is past the end
    ]
    assert len(sent) == 2
    memory_request, action_request = sent
    assert memory_request["model"] in ("llama3.2", "gpt-4o-mini")
    assert memory_request["messages"][0]["role"] == "system"
    assert '"memories"' in memory_request["messages"][0]["content"]
    assert memory_request["messages"][1]["content"] == "I love hiking. My sister Anna lives in Berlin."
    assert action_request["messages"][1]["content"] == (
        "[0.0] Good morning.\n[3.5] Remind me to call the dentist by Friday."
    )
    if kind == "ollama":
        assert memory_request["format"] == "json"
        assert memory_request["stream"] is False
        assert memory_request["options"] == {"temperature": 0}
    else:
        assert memory_request["response_format"] == {"type": "json_object"}
        assert memory_request["temperature"] == 0


@pytest.mark.parametrize("kind", ["ollama", "openai"])
async def test_a_malformed_answer_is_asked_again(kind: str) -> None:
    reply = answers(
        "Sure! The user loves hiking.", '{"memories": [{"text": "User loves hiking"}]}', MEMORIES_JSON
    )
    with llm_peer(kind, reply) as peer:
        async with MAKERS[kind](peer.url) as extractor:
            memories = await extractor.memories("I love hiking.")
        sent = [r.json() for r in peer.requests_to(CHAT_PATH[kind])]
    assert [m.text for m in memories] == ["User loves hiking", "User's sister Anna lives in Berlin"]
    assert len(sent) == 3
    correction = sent[1]["messages"]
    assert [m["role"] for m in correction] == ["system", "user", "assistant", "user"]
    assert correction[2]["content"] == "Sure! The user loves hiking."
    assert "not valid JSON" in correction[3]["content"]
    assert "memories.0.category" in sent[2]["messages"][3]["content"]


@pytest.mark.parametrize("kind", ["ollama", "openai"])
async def test_always_malformed_is_transient_after_bounded_attempts(kind: str) -> None:
    with llm_peer(kind, answers("I cannot do that.")) as peer:
        async with MAKERS[kind](peer.url, max_attempts=3) as extractor:
            with pytest.raises(
                MalformedResponse, match="no valid answer in 3 attempts: not valid JSON"
            ) as caught:
                await extractor.action_items(SEGMENTS)
        assert len(peer.requests_to(CHAT_PATH[kind])) == 3
    assert isinstance(caught.value, TransientError)


LLM_FAULTS: list[tuple[Fault, type[Exception], str]] = [
    (Fault.REFUSE, ServiceError, "cannot reach"),
    (Fault.HANG, ServiceError, "no answer in time"),
    (Fault.ERROR_500, ServiceError, "HTTP 500"),
    (Fault.RATE_LIMIT, ServiceError, "HTTP 429"),
    (Fault.BAD_REQUEST, ServiceRejected, "HTTP 400"),
]


@pytest.mark.parametrize(("fault", "error", "message"), LLM_FAULTS, ids=[f.value for f, _, _ in LLM_FAULTS])
@pytest.mark.parametrize("kind", ["ollama", "openai"])
async def test_llm_faults(kind: str, fault: Fault, error: type[Exception], message: str) -> None:
    with llm_peer(kind, answers(MEMORIES_JSON)) as peer:
        peer.set_fault(fault)
        try:
            async with MAKERS[kind](peer.url, timeout_seconds=0.5) as extractor:
                with pytest.raises(error, match=message) as caught:
                    await extractor.memories("I love hiking.")
        finally:
            peer.ok()
        async with MAKERS[kind](peer.url) as extractor:
            assert await extractor.memories("I love hiking.")
    assert isinstance(caught.value, TransientError) is (fault is not Fault.BAD_REQUEST)
    assert isinstance(caught.value, PermanentError) is (fault is Fault.BAD_REQUEST)
    assert caught.value.service == "llm"  # type: ignore[attr-defined]


async def test_unknown_model_and_bad_key_are_permanent(ollama_server: HTTPPeer) -> None:
    async with OllamaExtractor(url=ollama_server.url, model="mistral") as extractor:
        with pytest.raises(ServiceRejected, match=r"HTTP 404.*model .{1,2}mistral.{1,2} not found"):
            await extractor.memories("I love hiking.")
    with llm_peer("openai", answers(MEMORIES_JSON)) as peer:
        async with OpenAIExtractor(url=peer.url, api_key="sk-wrong") as extractor:
            with pytest.raises(ServiceRejected, match="HTTP 401") as caught:
                await extractor.memories("I love hiking.")
    assert "sk-wrong" not in str(caught.value)


def test_max_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        OllamaExtractor(max_attempts=0)
