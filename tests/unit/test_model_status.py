"""model_status's OpenAI tables agree with the installed openai SDK's deprecation markers.

The SDK marks deprecated model ids only in docstrings ("Deprecated values:" lists), which
Python drops at run time; these tests read them from the SDK's source with ``ast``. When the
SDK is upgraded and a marker changes, they fail: refresh the tables and OPENAI_SDK_VERSION.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import re
import typing
from datetime import date
from pathlib import Path

import openai
import pytest
from openai.types.realtime import AudioTranscription, RealtimeSessionCreateRequest
from openai.types.shared import ChatModel

from agentic_fast.core.config import Config
from agentic_fast.core.model_status import (
    GEMINI,
    OPENAI_CHAT,
    OPENAI_REALTIME,
    OPENAI_SDK_VERSION,
    OPENAI_TRANSCRIPTION,
    ModelNotice,
    model_notice,
)


def _docstring_after(body: list[ast.stmt], name: str) -> str:
    """The string literal right after the assignment to ``name`` (an attribute docstring)."""
    for node, after in itertools.pairwise(body):
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == name:
            assert isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            return str(after.value.value)
    raise LookupError(name)


def _sdk_markers(module: str, name: str, cls: str | None = None) -> dict[str, ModelNotice]:
    """``{model: notice}`` from the "Deprecated values:" list documenting ``[cls.]name``."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    body = ast.parse(Path(spec.origin).read_text(encoding="utf-8")).body
    if cls is not None:
        body = next(n for n in body if isinstance(n, ast.ClassDef) and n.name == cls).body
    _, found, text = _docstring_after(body, name).partition("Deprecated values:")
    assert found, f"{module}.{name}: no 'Deprecated values:' list any more"
    out: dict[str, ModelNotice] = {}
    source = f"openai SDK {OPENAI_SDK_VERSION}"
    for item in re.split(r"\n\s*- ", "\n" + text)[1:]:
        names, _, what = " ".join(item.split()).partition(": ")
        when = re.search(r"shutdown date: (\d{4}-\d{2}-\d{2})", what)
        if when:
            notice = ModelNotice("deprecated", date.fromisoformat(when.group(1)), source)
        else:
            assert "Not a supported model ID" in what, what
            notice = ModelNotice("unsupported", None, source)
        out.update(dict.fromkeys(re.findall(r'"([^"]+)"', names), notice))
    return out


def test_the_tables_name_the_installed_sdk_version() -> None:
    assert openai.__version__ == OPENAI_SDK_VERSION, (
        "openai was upgraded: re-read its deprecation markers into model_status")


@pytest.mark.parametrize(("table", "module", "name", "cls"), [
    (OPENAI_REALTIME, "openai.types.realtime.realtime_session_create_request", "model",
     "RealtimeSessionCreateRequest"),
    (OPENAI_TRANSCRIPTION, "openai.types.realtime.audio_transcription", "model",
     "AudioTranscription"),
    (OPENAI_CHAT, "openai.types.shared.chat_model", "ChatModel", None),
], ids=["realtime", "transcription", "chat"])
def test_openai_tables_agree_with_the_sdk_markers(table, module, name, cls) -> None:
    assert table == _sdk_markers(module, name, cls)


def _literals(tp: object) -> set[str]:
    """Every string Literal inside a (possibly nested) Union/Optional/Literal type."""
    if typing.get_origin(tp) is typing.Literal:
        return {a for a in typing.get_args(tp) if isinstance(a, str)}
    return set().union(*(_literals(a) for a in typing.get_args(tp)))


def test_openai_defaults_are_ids_the_sdk_knows_and_does_not_deprecate() -> None:
    realtime, classifier = Config().openai_realtime, Config().brain.classifier
    realtime_ids = _literals(RealtimeSessionCreateRequest.model_fields["model"].annotation)
    assert realtime.model in realtime_ids
    assert realtime.model not in OPENAI_REALTIME
    known = _literals(AudioTranscription.model_fields["model"].annotation)
    assert realtime.transcription_model in known
    assert realtime.transcription_model not in OPENAI_TRANSCRIPTION
    assert classifier.model in _literals(ChatModel) and classifier.model not in OPENAI_CHAT


def test_gemini_defaults_are_not_in_the_gemini_table() -> None:
    gemini = Config.from_text("brain: {classifier: {provider: gemini}}", env={})
    assert model_notice("gemini", gemini.gemini.model) is None
    assert model_notice("gemini", gemini.brain.classifier.model) is None
    assert model_notice("gemini", "models/gemini-2.0-flash-live-001") == GEMINI[
        "gemini-2.0-flash-live-001"]
