"""Multi-turn conversations in LLaVA's data format: checking a record's turns and turning them into chat
messages.

A sample's json may carry `conversations: [{"from": "human" | "gpt", "value": str}, ...]`, LLaVA's schema
(llava_instruct_150k.json, llava_v1_5_mix665k.json). A placeholder in a human turn, `<image>` or `<audio>`,
marks where the media prefix goes; as LLaVA's own preprocessing does, the placeholder is taken out of the
text and the media goes at the start of that turn (the first human turn when there is no placeholder).

`parse_conversation` checks the turns and returns the conversation as chat messages, the format chat
templates take (`{"role": "user" | "assistant", "content": str}`), with `media_turn`, the index of the
message the media prefix precedes. A gpt turn may carry a `kind` (the demo data tags its follow-ups); it
is kept on the assistant message. A record that breaks a rule raises `ConversationError` with its reason
(one of CONVERSATION_REASONS), which the loader and the importer count.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from eg_data.errors import DataError

ROLES = {"human": "user", "gpt": "assistant"}  # LLaVA's roles -> chat-template roles
PLACEHOLDERS = {"image": "<image>", "audio": "<audio>"}  # media name -> its placeholder
CONVERSATION_REASONS = (
    "no_turns",  # conversations missing, not a list, or empty
    "malformed_turn",  # a turn that is not {"from": str, "value": str}
    "unknown_role",  # a turn from someone other than human or gpt
    "turn_order",  # not human, gpt, human, gpt, ...: two turns of one role in a row, a gpt turn first, a human last
    "empty_turn",  # a turn with no text once its placeholders are taken out
    "placeholder_without_media",  # <image> (or <audio>) in a record without that medium
    "misplaced_placeholder",  # a placeholder in a gpt turn, twice, or <image> and <audio> in different turns
)


class ConversationError(DataError):
    """A record whose turns break a rule; `reason` is one of CONVERSATION_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in CONVERSATION_REASONS, reason
        super().__init__(message)
        self.reason = reason


def parse_conversation(turns: Any, media: Collection[str], ignored: Collection[str] = ()) -> dict[str, Any]:
    """LLaVA turns -> {"messages": [{"role", "content"(, "kind")}, ...], "media_turn": int}.

    `media`: the media the record has (of image, audio); a placeholder of one it lacks is an error.
    `ignored`: media the reader does not load: their placeholders are taken out without a check (the
    model sees no such medium). ConversationError (with its reason) for a record that breaks a rule.
    """
    if not isinstance(turns, list) or not turns:
        raise ConversationError("no_turns", "conversations is missing, not a list, or empty")
    messages: list[dict[str, Any]] = []
    media_turn: int | None = None
    seen: set[str] = set()
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or "from" not in turn:
            raise ConversationError(
                "malformed_turn", f"turn {i} is not an object with 'from' and a 'value' string"
            )
        role = ROLES.get(turn["from"]) if isinstance(turn["from"], str) else None
        if role is None:
            raise ConversationError(
                "unknown_role", f"turn {i} is from {turn['from']!r}; LLaVA's roles are human and gpt"
            )
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise ConversationError(
                "turn_order",
                f"turn {i} is from {turn['from']!r} but a {'human' if expected == 'user' else 'gpt'} turn was "
                "due (the turns alternate, from human to gpt)",
            )
        text = turn["value"]
        for name, placeholder in PLACEHOLDERS.items():
            count = text.count(placeholder)
            if not count:
                continue
            if role == "assistant" or count > 1 or name in seen:
                raise ConversationError(
                    "misplaced_placeholder",
                    f"turn {i} holds {placeholder} {'in a gpt turn' if role == 'assistant' else 'again'}; "
                    "each medium has one placeholder, in a human turn",
                )
            text = text.replace(placeholder, "")
            if name in ignored:
                continue
            if name not in media:
                raise ConversationError(
                    "placeholder_without_media", f"turn {i} holds {placeholder} but the record has no {name}"
                )
            seen.add(name)
            if media_turn is not None and media_turn != len(messages):
                raise ConversationError(
                    "misplaced_placeholder",
                    f"turn {i} holds {placeholder} but another placeholder is in turn {2 * media_turn}; "
                    "the media prefix goes in one place",
                )
            media_turn = len(messages)
        text = text.strip()
        if not text:
            raise ConversationError("empty_turn", f"turn {i} has no text")
        message: dict[str, Any] = {"role": role, "content": text}
        if role == "assistant" and isinstance(turn.get("kind"), str):
            message["kind"] = turn["kind"]
        messages.append(message)
    if messages[-1]["role"] != "assistant":
        raise ConversationError(
            "turn_order", f"the last turn ({len(turns) - 1}) is a human turn that no gpt turn answers"
        )
    return {"messages": messages, "media_turn": media_turn or 0}


def decode_conversation(
    meta: dict[str, Any], has: Collection[str], modalities: Collection[str], required: Collection[str]
) -> tuple[dict[str, Any] | None, str]:
    """A loader's view of a sample's `conversations`: (the parsed conversation or None, "" or the reason the
    sample is bad: "missing_conversation" when required and absent, "bad_conversation" when its turns break
    a rule). `has`: the media the sample has among those the loader reads (`modalities`); placeholders of
    media the loader does not read are taken out unchecked."""
    turns = meta.get("conversations")
    if turns is None:
        return None, "missing_conversation" if "conversation" in required else ""
    try:
        media = [m for m in PLACEHOLDERS if m in has]
        return parse_conversation(turns, media, ignored=[m for m in PLACEHOLDERS if m not in modalities]), ""
    except ConversationError:
        return None, "bad_conversation"


def to_llava_turns(messages: list[dict[str, Any]], placeholders: str = "") -> list[dict[str, Any]]:
    """Chat messages back to LLaVA turns, `placeholders` (e.g. "<image>\\n") put before the first human
    turn's text; an assistant message's `kind` is kept."""
    turns = []
    for i, message in enumerate(messages):
        role = "human" if message["role"] == "user" else "gpt"
        text = (placeholders if i == 0 else "") + message["content"]
        turn = {"from": role, "value": text}
        if "kind" in message:
            turn["kind"] = message["kind"]
        turns.append(turn)
    return turns
