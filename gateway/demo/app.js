// The browser client of the gateway's /client protocol (README: "The /client protocol").
//
// Call (the user gesture): create the AudioContext, fetch a short-lived token from the demo-only
// POST token endpoint, open ../client, send {"token": ...} first, then capture the microphone
// through the "capture" worklet (mono, 16 kHz, s16le, 20 ms frames) and play the agent's audio
// through the "player" worklet. Events and the conversation are shown as they come; a close
// shows its code and the gateway's JSON error in plain words.
//
// Handover (README: "Calls survive a rolling deploy"): the hello says "handover": true, so a
// draining gateway process sends {"type": "Handover", "url", "token", "expires_in",
// "retry_after_ms"} at a quiet point and closes with 1000 HANDED_OVER. The page then stops sending
// on that socket (microphone frames are kept meanwhile, at most HELD_FRAMES), opens the URL (or
// the same one when it is null), sends {"token": <the resume token>} and the kept frames, and goes
// on: the player keeps playing what it has queued, the conversation stays on screen. A refused
// reconnect is tried again a few times. The user notices only the gap.
//
// Query options, for testing and troubleshooting:
//   ?rate=44100       run the AudioContext at this rate (default: the device's)
//   ?processing=off   no echo cancellation / noise suppression / auto gain on the microphone
//   ?token=...        send this token instead of fetching one (e.g. to see a 4003)

const params = new URLSearchParams(location.search);

// What each close code means, in plain words (the README has the same table).
export const CLOSE_CODES = {
  1000: ["NORMAL", "The call ended normally."],
  1001: ["GOING_AWAY", "The gateway is restarting or draining; call again in a moment."],
  1006: ["ABNORMAL", "The connection dropped without a close frame (network, proxy or gateway gone)."],
  1009: ["TOO_BIG", "A message was larger than the gateway accepts (64 KiB)."],
  4001: ["AUTH_TIMEOUT", "The page did not send its token within 10 seconds of connecting."],
  4002: ["INVALID_AUTH", "The first message was not {\"token\": \"...\"}, so the gateway could not read a token."],
  4003: ["AUTH_FAILED", "The token was refused: it is invalid, expired (tokens last 5 minutes) or was minted with another GATEWAY_TOKEN_SECRET."],
  4408: ["CALLER_IDLE", "No microphone audio reached the gateway for too long."],
  4500: ["SESSION_SETUP_FAILED", "The gateway could not set up the Deepgram session (API key, settings, or Deepgram unreachable); the gateway's log names the diagnosis."],
  4501: ["UPSTREAM_ERROR", "Deepgram ended the session with an error during the call."],
  4502: ["PLUGIN_FAILED", "A gateway plugin failed during the call."],
};

const $ = (id) => document.getElementById(id);

// Microphone frames kept while the call moves to another gateway process (10 s of 20 ms frames).
const HELD_FRAMES = 500;
// Reconnect attempts after a Handover, and the wait between them (times the attempt number).
const RECONNECT_ATTEMPTS = 5;
const RECONNECT_BACKOFF_MS = 250;

const state = {
  status: "idle",
  sampleRate: null,
  framesSent: 0,
  bytesSent: 0,
  agentBytes: 0,
  events: [],
  conversation: [],
  lastError: null,
  close: null,
  capture: {},
  playback: {},
  // One entry per move to another gateway process: {at, url, openedAt, heldFrames, attempts}.
  handovers: [],
};

// For tests and the console: a copy of the page's state.
window.demo = { state, snapshot: () => JSON.parse(JSON.stringify(state)) };

let call = null;

function setStatus(text) {
  state.status = text;
  $("status").textContent = text;
}

function addEvent(message) {
  const t = call ? ((performance.now() - call.t0) / 1000).toFixed(2) : "0.00";
  state.events.push({ t: Number(t), type: message.type });
  const li = document.createElement("li");
  const detail = message.type === "Error" || message.type === "Warning"
    ? ` ${message.code || ""} ${message.message || message.description || ""}` : "";
  li.textContent = `${t} s  ${message.type}${detail}`;
  $("events").append(li);
  li.scrollIntoView({ block: "nearest" });
}

function addTurn(role, content) {
  state.conversation.push({ role, content });
  const li = document.createElement("li");
  li.className = role === "user" ? "user" : "agent";
  const who = document.createElement("strong");
  who.textContent = role === "user" ? "You: " : "Agent: ";
  li.append(who, document.createTextNode(content));
  $("conversation").append(li);
}

function showStats() {
  const c = state.capture, p = state.playback;
  const rows = [
    ["AudioContext rate", state.sampleRate ? `${state.sampleRate} Hz` : "-"],
    ["microphone frames sent (20 ms)", state.framesSent],
    ["samples clipped", c.clipped ?? 0],
    ["resampler", c.taps ? `${c.taps} taps x ${c.phases} phases` : "-"],
    ["agent audio received", `${((p.receivedSamples ?? 0) / 16000).toFixed(2)} s`],
    ["agent audio played", p.outputRate ? `${(p.playedSamples / p.outputRate).toFixed(2)} s` : "0.00 s"],
    ["queued", p.outputRate ? `${(p.queuedSamples / p.outputRate * 1000).toFixed(0)} ms` : "0 ms"],
    ["gaps (underruns)", p.underruns ?? 0],
    ["barge-ins", p.clears ?? 0],
  ];
  const dl = $("stats");
  dl.replaceChildren();
  for (const [name, value] of rows) {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = name;
    dd.textContent = String(value);
    dl.append(dt, dd);
  }
}

function explainClose(code, reason) {
  const known = CLOSE_CODES[code];
  const name = known ? known[0] : "";
  const words = known ? known[1] : "An unexpected close code.";
  const box = $("close");
  box.hidden = false;
  box.className = code === 1000 ? "ok" : "bad";
  box.replaceChildren();
  const head = document.createElement("p");
  head.innerHTML = "";
  const strong = document.createElement("strong");
  strong.textContent = `Closed: ${code}${name ? " " + name : ""}`;
  head.append(strong, document.createTextNode(` - ${words}`));
  box.append(head);
  if (state.lastError) {
    const p = document.createElement("p");
    p.textContent = `The gateway said: ${state.lastError.code}: ${state.lastError.message}`;
    const pre = document.createElement("pre");
    pre.textContent = JSON.stringify(state.lastError);
    box.append(p, pre);
  } else if (reason) {
    const p = document.createElement("p");
    p.textContent = `Reason: ${reason}`;
    box.append(p);
  }
}

async function getToken() {
  if (params.has("token")) return params.get("token");
  const response = await fetch("token", { method: "POST" });
  if (!response.ok) throw new Error(`token endpoint answered ${response.status}`);
  return (await response.json()).token;
}

function clientURL() {
  const url = new URL("../client", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  url.hash = "";
  return url.href;
}

async function startCall() {
  $("call").disabled = true;
  $("close").hidden = true;
  state.lastError = null;
  state.close = null;
  // Created inside the click handler: the user gesture lets it start (autoplay policy).
  const rate = Number(params.get("rate")) || undefined;
  const ctx = new AudioContext({ latencyHint: "interactive", ...(rate ? { sampleRate: rate } : {}) });
  call = { ctx, t0: performance.now(), ws: null, stream: null, nodes: [] };
  const current = call;
  state.sampleRate = ctx.sampleRate;
  try {
    setStatus("loading audio worklet");
    await ctx.audioWorklet.addModule(new URL("worklet.js", import.meta.url));
    await ctx.resume();
    setStatus("getting a token");
    const token = await getToken();
    setStatus("connecting");
    const player = new AudioWorkletNode(ctx, "player", { numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1] });
    player.connect(ctx.destination);
    player.port.onmessage = (e) => { state.playback = e.data; showStats(); };
    current.nodes.push(player);
    current.player = player;
    connect(current, clientURL(), { token, handover: true });
  } catch (err) {
    setStatus(`could not start: ${err.message}`);
    stopMicrophone(current);
    $("call").disabled = false;
  }
}

// Open the call's socket to `url` and send `hello` first. The first socket starts the microphone;
// a later one (after a Handover) sends the frames kept meanwhile and the call goes on.
function connect(current, url, hello) {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  current.ws = ws;
  let opened = false;
  ws.onopen = () => {
    opened = true;
    ws.send(JSON.stringify(hello));
    const move = current.moving;
    if (!move) {
      setStatus("connected: speak");
      $("hangup").disabled = false;
      startMicrophone(current).catch((err) => {
        setStatus(`microphone unavailable: ${err.message}`);
        ws.close(1000, "no microphone");
      });
      return;
    }
    current.moving = null;
    move.entry.openedAt = Number(((performance.now() - current.t0) / 1000).toFixed(2));
    for (const frame of move.held) sendFrame(current, frame);
    move.entry.heldFrames = move.held.length;
    setStatus("connected: speak (the call moved to another gateway process)");
  };
  ws.onmessage = (e) => {
    if (current.ws !== ws) return;
    if (typeof e.data !== "string") {
      state.agentBytes += e.data.byteLength;
      current.player.port.postMessage({ type: "audio", pcm: e.data }, [e.data]);
      return;
    }
    let message;
    try { message = JSON.parse(e.data); } catch { return; }
    if (message.type === "Handover") {
      addEvent({ type: "Handover" });
      handoverOffered(current, message);
      return;
    }
    addEvent(message);
    if (message.type === "Error") state.lastError = message;
    if (message.type === "ConversationText") addTurn(message.role, message.content);
    if (message.type === "UserStartedSpeaking") current.player.port.postMessage({ type: "clear" });
    if (message.type === "AgentAudioDone") current.player.port.postMessage({ type: "flush" });
  };
  ws.onclose = (e) => {
    const move = current.moving;
    if (move && move.offer && e.code === 1000) {
      // The gateway handed the call over: this socket is done, the call is not.
      const offer = move.offer;
      move.offer = null;
      move.url = offer.url || url;
      setStatus("moving the call to another gateway process");
      setTimeout(() => connect(current, move.url, { token: offer.token }), offer.retry_after_ms || 0);
      return;
    }
    if (move && !move.offer && !opened && move.entry.attempts < RECONNECT_ATTEMPTS) {
      move.entry.attempts++;
      setTimeout(() => connect(current, move.url, { token: move.token }), RECONNECT_BACKOFF_MS * move.entry.attempts);
      return;
    }
    current.moving = null;
    state.close = { code: e.code, reason: e.reason, error: state.lastError };
    setStatus(`closed (${e.code})`);
    explainClose(e.code, e.reason);
    stopMicrophone(current);
    $("hangup").disabled = true;
    $("call").disabled = false;
  };
}

// A Handover message: stop sending on this socket; its close starts the move.
function handoverOffered(current, message) {
  const url = message.url;
  if (typeof message.token !== "string" || !(url === null || /^wss?:\/\//.test(url))) return;
  const entry = { at: Number(((performance.now() - current.t0) / 1000).toFixed(2)), url, openedAt: null,
                  heldFrames: 0, attempts: 0 };
  state.handovers.push(entry);
  current.moving = { offer: message, token: message.token, url: null, held: [], entry };
}

function sendFrame(current, pcm) {
  current.ws.send(pcm);
  state.framesSent++;
  state.bytesSent += pcm.byteLength;
}

async function startMicrophone(current) {
  const processing = $("processing").checked;
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: processing, noiseSuppression: processing, autoGainControl: processing },
  });
  current.stream = stream;
  if (!current.ws || current.ws.readyState !== WebSocket.OPEN) {
    stopMicrophone(current);
    return;
  }
  const ctx = current.ctx;
  const source = ctx.createMediaStreamSource(stream);
  const capture = new AudioWorkletNode(ctx, "capture", { numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1] });
  // A muted path to the destination keeps the capture node pulled by the rendering graph.
  const mute = new GainNode(ctx, { gain: 0 });
  source.connect(capture).connect(mute).connect(ctx.destination);
  current.nodes.push(source, capture, mute);
  current.capture = capture;
  capture.port.onmessage = (e) => {
    if (e.data.type === "frame") {
      if (current.moving) {
        // Between sockets: keep what the user says (bounded) for the next one.
        if (current.moving.held.length < HELD_FRAMES) current.moving.held.push(e.data.pcm);
      } else if (current.ws.readyState === WebSocket.OPEN) {
        sendFrame(current, e.data.pcm);
      }
    } else if (e.data.type === "stats") {
      state.capture = e.data;
      showStats();
    }
  };
}

function stopMicrophone(current) {
  if (!current) return;
  if (current.capture) current.capture.port.postMessage({ type: "stop" });
  if (current.stream) for (const track of current.stream.getTracks()) track.stop();
  for (const node of current.nodes) if (node !== current.nodes[0]) node.disconnect();
}

function hangUp() {
  if (call && call.ws && call.ws.readyState === WebSocket.OPEN) {
    call.moving = null;
    call.ws.close(1000, "hang up");
  }
}

function fillCloseTable() {
  const body = $("codes");
  for (const [code, [name, words]] of Object.entries(CLOSE_CODES)) {
    const tr = document.createElement("tr");
    for (const text of [code, name, words]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    body.append(tr);
  }
}

if (params.get("processing") === "off") $("processing").checked = false;
$("call").addEventListener("click", startCall);
$("hangup").addEventListener("click", hangUp);
fillCloseTable();
showStats();
setStatus("idle: press Call");
