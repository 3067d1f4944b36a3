"""
The Voice Agent ``Settings`` schema: Deepgram's own SDK types, applied strictly.

There is no hand-written table any more (it drifted from the API, issue 16): `validate_settings`
is `gateway.codecs.deepgram_types.check_settings`, and the encodings are the values the SDK
lists. This module keeps the names that the settings plugin and the emulator import.
"""

from __future__ import annotations

import typing
from typing import Any, Mapping

from deepgram.agent.v1.types.agent_v1settings_audio_input_encoding import AgentV1SettingsAudioInputEncoding
from deepgram.agent.v1.types.agent_v1settings_audio_output_encoding import AgentV1SettingsAudioOutputEncoding

from gateway.codecs.deepgram_types import check_settings

__all__ = ["validate_settings", "INPUT_ENCODINGS", "OUTPUT_ENCODINGS"]


def _literals(ann: Any) -> tuple[str, ...]:
    return tuple(v for m in typing.get_args(ann) if typing.get_origin(m) is typing.Literal
                 for v in typing.get_args(m))


#: The encodings the SDK lists for ``audio.input`` and ``audio.output`` (it also lets others through).
INPUT_ENCODINGS = _literals(AgentV1SettingsAudioInputEncoding)
OUTPUT_ENCODINGS = _literals(AgentV1SettingsAudioOutputEncoding)


def validate_settings(settings: Mapping[str, Any], path: str = "Settings") -> None:
    """Raise `SettingsError` naming the first field of ``settings`` that Deepgram's types refuse."""
    check_settings(settings, path)
