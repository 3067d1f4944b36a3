"""
Deepgram's official Python SDK (``deepgram-sdk``) driving one endpoint of the emulator: run as a
script by tests/test_sdk_emulator.py, in a subprocess (the SDK's socket clients are synchronous
or asyncio; the emulator runs on the test's Twisted reactor).

    python tests/sdk_flows.py HTTP_URL KEY FLOW AUDIO_FILE

``FLOW`` is ``agent``, ``listen`` or ``flux``. The flow uses only the SDK's public API (its
clients, its send methods, its pydantic models) and prints one JSON object: what the SDK parsed
from each server message (the model's class name and ``type``), plus flow-specific facts. Every
wait is bounded; an alarm ends a stuck flow.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import Any


def _client(http_url: str, key: str, access_token: str | None = None) -> Any:
    from deepgram import DeepgramClient
    from deepgram.environment import DeepgramClientEnvironment

    ws_url = "ws" + http_url[len("http"):]
    environment = DeepgramClientEnvironment(base=http_url, production=ws_url, agent=ws_url, agent_rest=http_url)
    if access_token is not None:
        return DeepgramClient(access_token=access_token, environment=environment)
    return DeepgramClient(api_key=key, environment=environment)


def _record(seen: list[dict[str, Any]], message: Any) -> Any:
    if isinstance(message, bytes):
        seen.append({"class": "bytes", "type": "audio", "bytes": len(message)})
    else:
        seen.append({"class": type(message).__name__, "type": getattr(message, "type", None),
                     "fields": message.dict() if hasattr(message, "dict") else message})
    return message


def _until(socket: Any, seen: list[dict[str, Any]], kind: str, limit: int = 400) -> Any:
    for _ in range(limit):
        message = _record(seen, socket.recv())
        if getattr(message, "type", None) == kind:
            return message
    raise AssertionError(f"no {kind} in {limit} messages")


def agent(http_url: str, key: str, audio: bytes) -> dict[str, Any]:
    from deepgram.agent.v1.types.agent_v1inject_agent_message import AgentV1InjectAgentMessage
    from deepgram.agent.v1.types.agent_v1settings import AgentV1Settings
    from deepgram.agent.v1.types.agent_v1update_prompt import AgentV1UpdatePrompt

    client = _client(http_url, key)
    grant = client.auth.v1.tokens.grant(ttl_seconds=120)
    seen: list[dict[str, Any]] = []
    settings = AgentV1Settings(
        audio={"input": {"encoding": "mulaw", "sample_rate": 8000},
               "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"}},
        agent={"listen": {"provider": {"type": "deepgram", "model": "nova-3"}},
               "think": {"provider": {"type": "open_ai", "model": "gpt-4o-mini"}, "prompt": "Be brief."},
               "speak": {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}},
               "greeting": "Hello from the emulator."},
    )
    with _client(http_url, key, grant.access_token).agent.v1.connect() as socket:
        _until(socket, seen, "Welcome")
        socket.send_settings(settings)
        _until(socket, seen, "SettingsApplied")
        _until(socket, seen, "AgentAudioDone")
        socket.send_update_prompt(AgentV1UpdatePrompt(prompt="You are terse."))
        _until(socket, seen, "PromptUpdated")
        socket.send_inject_agent_message(AgentV1InjectAgentMessage(message="One moment.", behavior="queue"))
        _until(socket, seen, "AgentAudioDone")
        for i in range(0, len(audio), 1600):
            socket.send_media(audio[i:i + 1600])
        socket.send_media(b"\xff" * 8000)
        _until(socket, seen, "ConversationText")
        socket.send_keep_alive()
        socket.send_force_end_turn()
        _until(socket, seen, "AgentAudioDone")
    return {"seen": seen, "expires_in": grant.expires_in}


def listen(http_url: str, key: str, audio: bytes) -> dict[str, Any]:
    from deepgram.listen.v1.types.listen_v1configure import ListenV1Configure

    seen: list[dict[str, Any]] = []
    with _client(http_url, key).listen.v1.connect(model="nova-3", encoding="mulaw", sample_rate=8000,
                                                  interim_results="true", vad_events="true",
                                                  utterance_end_ms="1000", keyterm=["order", "status"]) as socket:
        socket.send_configure(ListenV1Configure(keyterms=["refund"]))
        _until(socket, seen, "ConfigureSuccess")
        for i in range(0, len(audio), 1600):
            socket.send_media(audio[i:i + 1600])
        socket.send_media(b"\xff" * 8000)
        socket.send_keep_alive()
        socket.send_finalize()
        socket.send_close_stream()
        _until(socket, seen, "Metadata")
    return {"seen": seen}


def flux(http_url: str, key: str, audio: bytes) -> dict[str, Any]:
    from deepgram.listen.v2.types.listen_v2configure import ListenV2Configure

    seen: list[dict[str, Any]] = []
    with _client(http_url, key).listen.v2.connect(model="flux-general-en", encoding="mulaw", sample_rate=8000,
                                                  eot_threshold="0.7", eager_eot_threshold="0.5",
                                                  keyterm=["order"]) as socket:
        _until(socket, seen, "Connected")
        socket.send_configure(ListenV2Configure(thresholds={"eot_threshold": 0.8}, keyterms=["refund"]))
        _until(socket, seen, "ConfigureSuccess")
        for i in range(0, len(audio), 1600):
            socket.send_media(audio[i:i + 1600])
        socket.send_media(b"\xff" * 8000)
        while True:
            message = _until(socket, seen, "TurnInfo")
            if message.event == "EndOfTurn":
                break
        socket.send_force_end_turn()
        socket.send_close_stream()
        try:
            while True:
                _record(seen, socket.recv())
        except Exception as e:  # noqa: BLE001 - the close ends the loop, as the SDK reports it
            closed = type(e).__name__
    return {"seen": seen, "closed": closed}


def main(argv: list[str]) -> int:
    http_url, key, flow, audio_path = argv[1:5]
    signal.alarm(60)
    with open(audio_path, "rb") as f:
        audio = f.read()
    started = time.monotonic()
    result = {"agent": agent, "listen": listen, "flux": flux}[flow](http_url, key, audio)
    result["seconds"] = round(time.monotonic() - started, 2)
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
