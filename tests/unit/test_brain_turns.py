"""Turn assembly and conversation memory (brain/turns.py): pure, clock passed in."""

from __future__ import annotations

import pytest

from agentic_fast.brain.turns import (
    ASSISTANT,
    CALLER,
    MAX_TURN_CHARS,
    ConversationMemory,
    MemoryTurn,
    TurnAssembler,
    normalise_role,
)


def test_a_piece_that_ends_a_sentence_is_a_whole_turn() -> None:
    asm = TurnAssembler(gap_s=0.6)
    assert asm.add("Text Sam that I'm late.", now=1.0) == "Text Sam that I'm late."
    assert not asm.pending and asm.due is None


@pytest.mark.parametrize("end", ["?", "!", "…", '."', ".)"])
def test_sentence_end_marks(end: str) -> None:
    assert TurnAssembler(0.6).add(f"Is it on{end}", now=0.0) == f"Is it on{end}"


def test_fragments_are_joined_until_the_sentence_ends() -> None:
    asm = TurnAssembler(gap_s=0.6)
    assert asm.add("Text Sam", now=1.0) is None
    assert asm.pending and asm.due == pytest.approx(1.6)
    assert asm.add("that I'm", now=1.2) is None
    assert asm.due == pytest.approx(1.8)  # every piece pushes the flush time back
    assert asm.add("late.", now=1.3) == "Text Sam that I'm late."
    assert not asm.pending


def test_fragments_with_their_own_spacing_are_not_double_spaced() -> None:
    asm = TurnAssembler(gap_s=0.6)
    for piece in ("Turn", " on the", " lights ", "please"):
        asm.add(piece, now=0.0)
    assert asm.flush() == "Turn on the lights please"


def test_flush_returns_the_open_turn_once() -> None:
    asm = TurnAssembler(gap_s=0.6)
    asm.add("  yes   do\nit ", now=0.0)
    assert asm.flush() == "yes do it"
    assert asm.flush() is None
    assert asm.due is None


def test_gap_zero_makes_every_piece_a_turn() -> None:
    asm = TurnAssembler(gap_s=0)
    assert asm.add("hello", now=0.0) == "hello"
    assert asm.add("there", now=0.0) == "there"


def test_blank_pieces_are_ignored() -> None:
    asm = TurnAssembler(gap_s=0.6)
    assert asm.add("   ", now=0.0) is None
    assert not asm.pending


def test_a_very_long_turn_is_flushed_and_bounded() -> None:
    asm = TurnAssembler(gap_s=0.6)
    turn = None
    while turn is None:
        turn = asm.add("word " * 100, now=0.0)
    assert len(turn) <= MAX_TURN_CHARS


def test_negative_gap_is_refused() -> None:
    with pytest.raises(ValueError):
        TurnAssembler(gap_s=-1)


@pytest.mark.parametrize(("role", "expected"), [
    ("user", CALLER), ("caller", CALLER), ("assistant", ASSISTANT), ("agent", ASSISTANT),
    ("model", ASSISTANT), ("USER", CALLER)])
def test_roles(role: str, expected: str) -> None:
    assert normalise_role(role) == expected


def test_unknown_role() -> None:
    with pytest.raises(ValueError, match="unknown transcript role"):
        normalise_role("narrator")


def test_memory_keeps_the_last_turns_of_both_sides() -> None:
    memory = ConversationMemory(max_turns=3)
    memory.add("user", "Hi.")
    memory.add("assistant", "Hello, how can I help?")
    memory.add("user", "Text Sam.")
    memory.add("assistant", "What should I say?")
    assert memory.recent() == (MemoryTurn(ASSISTANT, "Hello, how can I help?"),
                               MemoryTurn(CALLER, "Text Sam."),
                               MemoryTurn(ASSISTANT, "What should I say?"))
    assert len(memory) == 3


def test_memory_last_assistant_only_when_it_spoke_last() -> None:
    memory = ConversationMemory(max_turns=5)
    assert memory.last_assistant is None
    memory.add("assistant", "Shall I send it?")
    assert memory.last_assistant == "Shall I send it?"
    memory.add("user", "yes")
    assert memory.last_assistant is None


def test_memory_ignores_empty_turns_and_normalises_space() -> None:
    memory = ConversationMemory(max_turns=5)
    memory.add("user", "   ")
    memory.add("user", " a \n b ")
    assert memory.recent() == (MemoryTurn(CALLER, "a b"),)


def test_memory_needs_a_size() -> None:
    with pytest.raises(ValueError):
        ConversationMemory(0)
