// The demo's audio processors, run on the AudioWorklet's rendering thread.
//
// "capture": microphone -> /client. Down-mixes every input channel to mono, resamples from the
// AudioContext's rate (48 kHz, 44.1 kHz or anything else) to 16 kHz with a windowed-sinc
// low-pass, converts Float32 to Int16 little-endian with clipping, and posts one 20 ms frame
// (320 samples = 640 bytes) at a time to the page, which sends it as a binary WebSocket frame.
//
// "player": agent audio -> speakers. Takes PCM s16le 16 kHz chunks from the page, resamples
// them to the context's rate, and plays them through a small jitter buffer: playback starts once
// PREBUFFER_S of audio is queued (or the utterance is complete), runs without gaps while audio
// keeps coming, and drops everything at once on "clear" (barge-in). It counts what it played.

const TARGET_RATE = 16000;
const FRAME_SAMPLES = TARGET_RATE / 50; // 20 ms
const PREBUFFER_S = 0.06;
const STATS_EVERY = 8; // render quanta between stats messages (~21 ms at 48 kHz)

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

// The zeroth-order modified Bessel function of the first kind, for the Kaiser window.
function besselI0(x) {
  let sum = 1, term = 1;
  const q = (x * x) / 4;
  for (let k = 1; k < 50; k++) {
    term *= q / (k * k);
    sum += term;
    if (term < sum * 1e-12) break;
  }
  return sum;
}

// A streaming rational resampler: a Kaiser-windowed sinc low-pass evaluated as a polyphase
// table, one phase per output position between two input samples. The output step is M/L input
// samples, kept as an integer phase, so nothing drifts however long the call is. The filter's
// pass band ends at 90% of the lower rate's Nyquist frequency (7.2 kHz for 16 kHz) and its stop
// band (>= 70 dB) starts where aliases or images would fall into that pass band (8.8 kHz), so a
// downsampler removes what cannot be represented before decimating, and an upsampler removes the
// images. The state (the last input samples) is carried across calls.
class Resampler {
  constructor(inRate, outRate, attenuationDb = 70) {
    this.inRate = inRate;
    this.outRate = outRate;
    const g = gcd(Math.round(inRate), Math.round(outRate));
    let L = Math.round(outRate) / g, M = Math.round(inRate) / g;
    if (L > 2048) {
      // An odd rate: approximate the step with 1024 phases (a rate error below 0.05%).
      M = Math.round((inRate / outRate) * 1024);
      L = 1024;
    }
    this.L = L;
    this.M = M;
    const nyquist = Math.min(inRate, outRate) / 2;
    const pass = 0.9 * nyquist;
    const stop = 2 * nyquist - pass;
    const fc = (pass + stop) / 2 / inRate; // cut-off in cycles per input sample
    const transition = (stop - pass) / inRate;
    const taps = Math.ceil((attenuationDb - 8) / (2.285 * 2 * Math.PI * transition)) + 1;
    const K = Math.max(2, Math.ceil(taps / 2)); // half-width in input samples
    const beta = attenuationDb > 50 ? 0.1102 * (attenuationDb - 8.7)
      : 0.5842 * Math.pow(attenuationDb - 21, 0.4) + 0.07886 * (attenuationDb - 21);
    const i0beta = besselI0(beta);
    const width = 2 * K;
    this.K = K;
    this.width = width;
    this.table = new Float32Array(L * width);
    for (let p = 0; p < L; p++) {
      const frac = p / L;
      let sum = 0;
      for (let i = 0; i < width; i++) {
        const tau = frac + (K - 1) - i; // output time minus input sample time
        const x = 2 * fc * tau;
        const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
        const u = tau / K;
        const w = Math.abs(u) >= 1 ? 0 : besselI0(beta * Math.sqrt(1 - u * u)) / i0beta;
        const h = 2 * fc * sinc * w;
        this.table[p * width + i] = h;
        sum += h;
      }
      for (let i = 0; i < width; i++) this.table[p * width + i] /= sum; // unity gain at DC
    }
    this.reset();
  }

  reset() {
    // K - 1 zeros of history, so that the first output sits exactly on the first input sample.
    this.buf = new Float32Array(4096);
    this.len = this.K - 1;
    this.base = this.K - 1;
    this.phase = 0;
  }

  // Feed input samples; returns the output samples they complete.
  process(input) {
    if (this.len + input.length > this.buf.length) {
      const bigger = new Float32Array(Math.max(this.buf.length * 2, this.len + input.length));
      bigger.set(this.buf.subarray(0, this.len));
      this.buf = bigger;
    }
    this.buf.set(input, this.len);
    this.len += input.length;
    const { K, L, M, width, table, buf } = this;
    const count = Math.max(0, Math.ceil(((this.len - K - this.base) * L - this.phase) / M));
    const out = new Float32Array(count);
    let n = 0, base = this.base, phase = this.phase;
    while (base + K < this.len) {
      const start = base - K + 1;
      const row = phase * width;
      let acc = 0;
      for (let i = 0; i < width; i++) acc += buf[start + i] * table[row + i];
      out[n++] = acc;
      phase += M;
      base += Math.floor(phase / L);
      phase %= L;
    }
    const drop = base - K + 1;
    if (drop > 0) {
      buf.copyWithin(0, drop, this.len);
      this.len -= drop;
      base -= drop;
    }
    this.base = base;
    this.phase = phase;
    return n === count ? out : out.subarray(0, n);
  }
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new Resampler(sampleRate, TARGET_RATE);
    this.newFrame();
    this.frames = 0;
    this.clipped = 0;
    this.inputSamples = 0;
    this.quanta = 0;
    this.peak = 0;
    this.stopped = false;
    this.mono = new Float32Array(128);
    this.port.onmessage = (e) => {
      if (e.data && e.data.type === "stop") this.stopped = true;
    };
  }

  newFrame() {
    this.frame = new ArrayBuffer(FRAME_SAMPLES * 2);
    this.view = new DataView(this.frame);
    this.fill = 0;
  }

  process(inputs) {
    if (this.stopped) return false;
    const channels = inputs[0];
    if (channels && channels.length > 0) {
      const n = channels[0].length;
      if (this.mono.length !== n) this.mono = new Float32Array(n);
      const mono = this.mono;
      mono.set(channels[0]);
      for (let c = 1; c < channels.length; c++) {
        const ch = channels[c];
        for (let i = 0; i < n; i++) mono[i] += ch[i];
      }
      if (channels.length > 1) {
        const scale = 1 / channels.length;
        for (let i = 0; i < n; i++) mono[i] *= scale;
      }
      this.inputSamples += n;
      const out = this.resampler.process(mono);
      for (let i = 0; i < out.length; i++) {
        let s = Math.round(out[i] * 32768);
        if (s > 32767) { s = 32767; this.clipped++; }
        else if (s < -32768) { s = -32768; this.clipped++; }
        const a = s < 0 ? -s : s;
        if (a > this.peak) this.peak = a;
        this.view.setInt16(this.fill * 2, s, true); // little-endian, whatever the platform
        if (++this.fill === FRAME_SAMPLES) {
          this.frames++;
          this.port.postMessage({ type: "frame", pcm: this.frame }, [this.frame]);
          this.newFrame();
        }
      }
    }
    if (++this.quanta % STATS_EVERY === 0) {
      this.port.postMessage({
        type: "stats", frames: this.frames, clipped: this.clipped,
        inputSamples: this.inputSamples, inputRate: sampleRate, peak: this.peak,
        taps: this.resampler.width, phases: this.resampler.L,
      });
      this.peak = 0;
    }
    return true;
  }
}

class PlayerProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new Resampler(TARGET_RATE, sampleRate);
    this.queue = [];
    this.head = 0; // read position in queue[0]
    this.queued = 0; // samples at the context's rate
    this.prebuffer = Math.round(PREBUFFER_S * sampleRate);
    this.playing = false;
    this.complete = false; // the current utterance has all its audio (AgentAudioDone)
    this.receivedSamples = 0; // 16 kHz samples received
    this.playedSamples = 0; // context-rate samples of agent audio played
    this.underruns = 0;
    this.clears = 0;
    this.droppedSamples = 0;
    this.quanta = 0;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(message) {
    if (message.type === "audio") {
      const view = new DataView(message.pcm);
      const n = view.byteLength >> 1;
      const samples = new Float32Array(n);
      for (let i = 0; i < n; i++) samples[i] = view.getInt16(i * 2, true) / 32768;
      this.receivedSamples += n;
      this.complete = false;
      this.push(this.resampler.process(samples));
    } else if (message.type === "flush") {
      // The utterance is complete: push the resampler's look-ahead out and play to the end.
      this.push(this.resampler.process(new Float32Array(this.resampler.K + 1)));
      this.resampler.reset();
      this.complete = true;
    } else if (message.type === "clear") {
      // Barge-in: stop at once, dropping everything queued.
      this.clears++;
      this.droppedSamples += this.queued;
      this.queue = [];
      this.head = 0;
      this.queued = 0;
      this.playing = false;
      this.resampler.reset();
    }
  }

  push(samples) {
    if (samples.length === 0) return;
    this.queue.push(samples);
    this.queued += samples.length;
  }

  process(inputs, outputs) {
    const out = outputs[0];
    const first = out[0];
    const n = first.length;
    first.fill(0);
    if (!this.playing && this.queued > 0 && (this.queued >= this.prebuffer || this.complete)) {
      this.playing = true;
    }
    if (this.playing) {
      let written = 0;
      while (written < n && this.queue.length > 0) {
        const chunk = this.queue[0];
        const take = Math.min(n - written, chunk.length - this.head);
        first.set(chunk.subarray(this.head, this.head + take), written);
        written += take;
        this.head += take;
        if (this.head === chunk.length) {
          this.queue.shift();
          this.head = 0;
        }
      }
      this.queued -= written;
      this.playedSamples += written;
      if (this.queued === 0) {
        this.playing = false;
        // Ran dry in the middle of an utterance: a gap. Prebuffer again before resuming.
        if (!this.complete) this.underruns++;
      }
    }
    for (let c = 1; c < out.length; c++) out[c].set(first);
    if (++this.quanta % STATS_EVERY === 0) this.report();
    return true;
  }

  report() {
    this.port.postMessage({
      type: "stats", receivedSamples: this.receivedSamples, playedSamples: this.playedSamples,
      outputRate: sampleRate, queuedSamples: this.queued, underruns: this.underruns,
      clears: this.clears, droppedSamples: this.droppedSamples, playing: this.playing,
    });
  }
}

registerProcessor("capture", CaptureProcessor);
registerProcessor("player", PlayerProcessor);
