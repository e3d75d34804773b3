"""ConversationBrain: turn assembly, intent analysis, memory, policy, speaking answers back.

It never touches audio: the bridge hands it transcripts, key presses, tool calls, barge-ins
and hang-ups (``ConversationSink``); it answers through the call's provider
(``say`` / ``send_tool_result``) and reaches the agent through the shared ``GatewayClient``.

    brain = ConversationBrain.from_config(config, gateway)
    await brain.start()
    factory = AudioBridgeFactory(config, providers, conversation=brain)  # tools: brain.tools()
    ...
    await brain.close()
"""

from agentic_fast.brain.brain import ConversationBrain
from agentic_fast.brain.intent import (
    ACTION,
    CHAT,
    RUN_COMMAND,
    ChatModelClassifier,
    Intent,
    IntentClassifier,
    parse_classification,
    parse_tool_arguments,
    rule_intent,
    run_command_declaration,
)
from agentic_fast.brain.policy import CallerPolicy, PinCheck, PinResult, command_key
from agentic_fast.brain.speech import Phrases, speakable
from agentic_fast.brain.turns import ConversationMemory, MemoryTurn, TurnAssembler
from agentic_fast.core.errors import ClassifierError, InvalidClassificationError

__all__ = [
    "ACTION",
    "CHAT",
    "RUN_COMMAND",
    "CallerPolicy",
    "ChatModelClassifier",
    "ClassifierError",
    "ConversationBrain",
    "ConversationMemory",
    "Intent",
    "IntentClassifier",
    "InvalidClassificationError",
    "MemoryTurn",
    "Phrases",
    "PinCheck",
    "PinResult",
    "TurnAssembler",
    "command_key",
    "parse_classification",
    "parse_tool_arguments",
    "rule_intent",
    "run_command_declaration",
    "speakable",
]
