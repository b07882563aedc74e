"""LLaVA-format conversations: a good record becomes chat messages with the media at its placeholder's turn;
each kind of bad record is refused with its reason; the demo's conversations follow their own rules."""

import pytest
from eg_data.conversations import CONVERSATION_REASONS, ConversationError, parse_conversation, to_llava_turns

LLAVA_RECORD = [  # llava_instruct_150k.json's first record, shortened
    {"from": "human", "value": "What are the colors of the bus in the image?\n<image>"},
    {"from": "gpt", "value": "The bus in the image is white and red."},
    {"from": "human", "value": "What feature can be seen on the back of the bus?"},
    {"from": "gpt", "value": "The back of the bus features an advertisement."},
]


def test_a_llava_record_becomes_chat_messages_with_the_placeholder_taken_out() -> None:
    parsed = parse_conversation(LLAVA_RECORD, media=["image"])
    assert parsed == {
        "messages": [
            {"role": "user", "content": "What are the colors of the bus in the image?"},
            {"role": "assistant", "content": "The bus in the image is white and red."},
            {"role": "user", "content": "What feature can be seen on the back of the bus?"},
            {"role": "assistant", "content": "The back of the bus features an advertisement."},
        ],
        "media_turn": 0,
    }


def test_the_media_goes_at_the_turn_of_its_placeholder_and_first_without_one() -> None:
    turns = [dict(t) for t in LLAVA_RECORD]
    turns[0]["value"] = "hello"
    turns[2]["value"] = "<audio>\n<image>\nand now?"
    parsed = parse_conversation(turns, media=["image", "audio"])
    assert parsed["media_turn"] == 2
    assert parsed["messages"][2]["content"] == "and now?"
    plain = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    assert parse_conversation(plain, media=["image"])["media_turn"] == 0


def test_a_placeholder_of_a_medium_not_read_is_taken_out_unchecked() -> None:
    parsed = parse_conversation(LLAVA_RECORD, media=[], ignored=["image"])
    assert parsed["messages"][0]["content"] == "What are the colors of the bus in the image?"


def test_kinds_of_gpt_turns_are_kept_and_turns_round_trip() -> None:
    turns = [
        {"from": "human", "value": "<image>\nwhich digit?"},
        {"from": "gpt", "value": "7", "kind": "opening"},
    ]
    parsed = parse_conversation(turns, media=["image"])
    assert parsed["messages"][1] == {"role": "assistant", "content": "7", "kind": "opening"}
    assert to_llava_turns(parsed["messages"], "<image>\n") == turns


BAD = {
    "no_turns": [],
    "malformed_turn": [{"from": "human"}, {"from": "gpt", "value": "x"}],
    "unknown_role": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}],
    "turn_order": [
        {"from": "human", "value": "q"},
        {"from": "human", "value": "q2"},
        {"from": "gpt", "value": "a"},
    ],
    "empty_turn": [{"from": "human", "value": "<image>\n "}, {"from": "gpt", "value": "a"}],
    "placeholder_without_media": [{"from": "human", "value": "<audio> q"}, {"from": "gpt", "value": "a"}],
    "misplaced_placeholder": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "<image> a"}],
}


@pytest.mark.parametrize("reason", sorted(BAD))
def test_each_kind_of_bad_record_is_refused_with_its_reason(reason: str) -> None:
    with pytest.raises(ConversationError) as caught:
        parse_conversation(BAD[reason], media=["image"])
    assert caught.value.reason == reason
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("turns", "what"),
    [
        ([{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}], "gpt first"),
        ([{"from": "human", "value": "q"}], "a last human turn"),
        (
            [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}, {"from": "gpt", "value": "b"}],
            "two gpt",
        ),
        ("not a list", "no list"),
        ([{"from": "human", "value": "<image><image> q"}, {"from": "gpt", "value": "a"}], "twice"),
        (
            [
                {"from": "human", "value": "<image> q"},
                {"from": "gpt", "value": "a"},
                {"from": "human", "value": "<audio> q"},
                {"from": "gpt", "value": "a"},
            ],
            "apart",
        ),
    ],
)
def test_more_bad_orders_and_placeholders(turns: object, what: str) -> None:
    with pytest.raises(ConversationError) as caught:
        parse_conversation(turns, media=["image", "audio"])
    assert caught.value.reason in CONVERSATION_REASONS, what


def test_demo_conversations_need_their_history() -> None:
    """Every demo conversation: 2-4 exchanges, each answer computed from the digit and the number the user
    stated in an earlier human turn, earlier_fact turns only after that statement."""
    import numpy as np
    from eg_data.demo import demo_conversation

    kinds = set()
    for i in range(300):
        digit = i % 10
        turns = demo_conversation(digit, np.random.default_rng([0, 27, i]))
        parsed = parse_conversation(turns, media=["image", "audio"])
        messages = parsed["messages"]
        assert 2 <= len(messages) // 2 <= 4 and parsed["media_turn"] == 0
        stated = [j for j, m in enumerate(messages) if m["content"].startswith("my number is ")]
        assert len(stated) == 1 and stated[0] < len(messages) - 2
        number = int(messages[stated[0]]["content"].split()[3].rstrip("."))
        previous = None
        for j in range(1, len(messages), 2):
            question, answer, kind = messages[j - 1]["content"], messages[j]["content"], messages[j]["kind"]
            kinds.add(kind)
            question = question.split(". ", 1)[-1]
            expected = {
                "which digit is this?": str(digit),
                "is the digit odd or even?": "odd" if digit % 2 else "even",
                "what is the digit plus one?": str(digit + 1),
                "is the digit greater than five?": "yes" if digit > 5 else "no",
                "what is my number plus the digit?": str(number + digit),
                "what was my number?": str(number),
                "is my number greater than the digit?": "yes" if number > digit else "no",
            }
            if previous is not None and previous.isdigit():
                expected.update(
                    {
                        "and that plus one?": str(int(previous) + 1),
                        "is that odd or even?": "odd" if int(previous) % 2 else "even",
                        "is that greater than five?": "yes" if int(previous) > 5 else "no",
                    }
                )
            assert expected[question] == answer, (i, question)
            assert (kind == "earlier_fact") == ("my number" in question)
            assert kind != "earlier_fact" or j > stated[0]
            assert (kind == "earlier_answer") == question.startswith(("and that", "is that"))
            previous = answer
    assert kinds == {"opening", "image", "earlier_answer", "earlier_fact"}
