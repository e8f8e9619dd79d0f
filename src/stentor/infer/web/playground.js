"use strict";
// The stentor playground. It talks to one backend: the OpenAI-compatible endpoints of the
// server that sent this page (streamed as server-sent events), or, in a folder written by
// `stentor export web`, the model running in this tab (local.js sets window.stentorBackend to an
// object with the same methods). Settings come from playground/config.json. Output is appended as
// it arrives, never re-rendered.

const $ = (id) => document.getElementById(id);
const LOST = "The connection to the server was lost before the answer finished.";

// -- the server ------------------------------------------------------------------------------

async function refusal(response) {
  let message = "";
  try {
    message = (await response.json()).error.message;
  } catch (_) {
    message = `HTTP ${response.status}`;
  }
  if (response.status === 401) return "The server needs its API key: enter it under Sampling, then try again.";
  if (response.status === 503) return `The server is busy or shutting down (${message}). Try again in a moment.`;
  if (response.status === 413) return `The request is too large: ${message}.`;
  if (response.status >= 500) return `The server failed: ${message}.`;
  return `The server refused the request: ${message}.`;
}

// A server started with --api-key wants it on every API call; the page keeps it for this tab only.
function authorization() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

const server = {
  async config() {
    const response = await fetch("playground/config.json");
    if (!response.ok) throw new Error(`The server did not send its settings (HTTP ${response.status}).`);
    return response.json();
  },

  // Yields the chunks of a streamed completion; ends quietly when `signal` aborts.
  async *stream(path, body, signal) {
    let response;
    try {
      response = await fetch(path, {
        method: "POST",
        headers: { "Content-Type": "application/json", ...authorization() },
        body: JSON.stringify({ ...body, stream: true }),
        signal,
      });
    } catch (err) {
      if (signal.aborted) return;
      throw new Error("Cannot reach the server. Is `stentor serve` still running?");
    }
    if (!response.ok) throw new Error(await refusal(response));
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      let part;
      try {
        part = await reader.read();
      } catch (err) {
        if (signal.aborted) return;
        throw new Error(LOST);
      }
      if (part.done) throw new Error(LOST);
      buffer += part.value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") return;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(`The server stopped this answer: ${chunk.error.message}.`);
          yield chunk;
        }
      }
    }
  },
};

const backend = window.stentorBackend || server;

// -- tokens ----------------------------------------------------------------------------------

// How a token's text shows on a chip: whitespace made visible, control bytes as <0xNN>.
function visible(piece) {
  if (piece === "") return "\u2205"; // a token that writes nothing alone (e.g. a capcode marker)
  return piece.replace(/[\u0000-\u001f\u007f]/g, (ch) => {
    if (ch === "\n") return "\u21b5";
    if (ch === "\t") return "\u2192";
    return `<0x${ch.charCodeAt(0).toString(16).toUpperCase().padStart(2, "0")}>`;
  });
}

// One token of a streamed chunk, as {id, piece, logprob, top: [[piece, logprob]]}.
function tokensOf(choice, chat) {
  const lp = choice.logprobs;
  if (!lp) return [];
  if (chat) {
    return (lp.content || []).map((t) => ({
      id: t.id, piece: t.token, logprob: t.logprob,
      top: (t.top_logprobs || []).map((a) => [a.token, a.logprob]),
    }));
  }
  return lp.tokens.map((piece, k) => ({
    id: lp.token_ids[k], piece, logprob: lp.token_logprobs[k],
    top: Object.entries(lp.top_logprobs[k] || {}),
  }));
}

function chip(token) {
  const p = Math.exp(token.logprob);
  const el = document.createElement("span");
  el.className = "chip";
  if (/^(<0x[0-9A-F]{2}>)+$/.test(token.piece)) el.classList.add("byte");
  if (/^<\/?s>$|^<\|.*\|>$|^<(unk|pad)>$/.test(token.piece)) el.classList.add("special");
  el.textContent = visible(token.piece);
  el.style.setProperty("--p", p.toFixed(3));
  el.dataset.id = token.id;
  el.dataset.p = p.toFixed(4);
  el.tabIndex = 0;
  const alternatives = token.top.map(([piece, lp]) => `${JSON.stringify(piece)} ${(Math.exp(lp) * 100).toFixed(1)}%`);
  el.title = `id ${token.id} \u00b7 ${JSON.stringify(token.piece)} \u00b7 p = ${(p * 100).toFixed(1)}%` +
    (alternatives.length ? `\nlikeliest: ${alternatives.join(", ")}` : "");
  return el;
}

// -- the page --------------------------------------------------------------------------------

const state = { config: null, mode: "complete", controller: null, messages: [] };

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(text) {
  $("status").textContent = text;
}

function describeModel(config) {
  const millions = (config.parameters / 1e6).toFixed(config.parameters < 1e7 ? 2 : 1);
  $("model-info").textContent =
    `${config.model} \u00b7 ${millions}M parameters \u00b7 vocabulary ${config.vocab_size.toLocaleString("en")}` +
    ` \u00b7 context ${config.context.toLocaleString("en")} tokens`;
}

function checkRange(field) {
  const name = field.dataset.name;
  const range = state.config && state.config.ranges[name];
  if (!range) return;
  const value = parseFloat(field.querySelector("input").value);
  const warn = field.querySelector(".warn");
  let text = "";
  if (value < range.low && range.below) text = `Card: ${range.below}.`;
  if (value > range.high && range.above) text = `Card: ${range.above}.`;
  warn.textContent = text;
  warn.hidden = !text;
}

function resetSettings() {
  const d = state.config.defaults;
  for (const name of ["temperature", "top_p", "repetition_penalty", "max_tokens"]) $(name).value = d[name];
  $("top_k").value = 0;
  $("seed").value = "";
  $("suppress").checked = false;
  document.querySelectorAll(".field[data-name]").forEach(checkRange);
}

// The request's sampling fields. Values go as typed, so the server's own checks decide, and
// its refusal is shown in plain words.
function settings() {
  const number = (id) => {
    const text = $(id).value.trim();
    return text === "" ? undefined : Number(text);
  };
  const body = {
    temperature: number("temperature"),
    top_p: number("top_p"),
    repetition_penalty: number("repetition_penalty"),
    top_k: number("top_k"),
    max_tokens: number("max_tokens"),
    seed: number("seed"),
    suppress_replacement_tokens: $("suppress").checked,
  };
  for (const [key, value] of Object.entries(body)) if (value === undefined) delete body[key];
  return body;
}

function setMode(mode) {
  state.mode = mode;
  $("mode-complete").setAttribute("aria-selected", String(mode === "complete"));
  $("mode-chat").setAttribute("aria-selected", String(mode === "chat"));
  $("complete-pane").hidden = mode !== "complete";
  $("chat-pane").hidden = mode !== "chat";
  showError("");
}

function addMessage(role, text) {
  const el = document.createElement("div");
  el.className = `message ${role}`;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role === "user" ? "you" : "model";
  el.append(label, document.createTextNode(text));
  $("transcript").append(el);
  el.scrollIntoView({ block: "nearest" });
  return el;
}

function figures(tokens, started, first) {
  const now = performance.now();
  $("fig-tokens").textContent = String(tokens);
  $("fig-ttft").textContent = first === null ? "\u2013" : `${Math.round(first - started)} ms`;
  const seconds = first === null ? 0 : (now - first) / 1000;
  $("fig-rate").textContent = tokens > 1 && seconds > 0 ? ((tokens - 1) / seconds).toFixed(1) : "\u2013";
}

async function generate() {
  if (state.controller) return;
  showError("");
  const chat = state.mode === "chat";
  let path, body, target;
  if (chat) {
    const text = $("message").value;
    if (!text.trim()) return showError("Type a message first.");
    state.messages.push({ role: "user", content: text });
    addMessage("user", text);
    $("message").value = "";
    target = addMessage("assistant", "");
    path = "v1/chat/completions";
    body = { ...settings(), messages: state.messages, logprobs: true, top_logprobs: 5 };
  } else {
    const prompt = $("prompt").value;
    if (!prompt) return showError("Type a prompt first, or pick an example.");
    target = $("completion");
    target.textContent = "";
    path = "v1/completions";
    body = { ...settings(), prompt, logprobs: 5 };
  }
  const tokenBox = $("tokens");
  tokenBox.textContent = "";
  $("fig-draft").textContent = "\u2013";
  const controller = new AbortController();
  state.controller = controller;
  $("generate").disabled = true;
  $("stop").disabled = false;
  setStatus("generating\u2026");
  const started = performance.now();
  let first = null;
  let count = 0;
  let reply = "";
  let finish = null;
  // Tokens arrive far faster than frames: they are buffered and drawn once per frame, into one text node,
  // so a long answer costs one layout per frame rather than one per token (which froze the page).
  const shown = document.createTextNode("");
  target.append(shown);
  const scroller = chat ? $("transcript") : target;
  let textDue = "";
  let chipsDue = [];
  let frame = 0;
  const draw = () => {
    frame = 0;
    if (textDue) {
      const following = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 8;
      shown.appendData(textDue);
      textDue = "";
      if (following) scroller.scrollTop = scroller.scrollHeight; // unless the reader scrolled up
    }
    if (chipsDue.length) {
      const fragment = document.createDocumentFragment();
      for (const token of chipsDue) fragment.append(chip(token));
      tokenBox.append(fragment);
      chipsDue = [];
    }
    figures(count, started, first);
  };
  try {
    for await (const chunk of backend.stream(path, body, controller.signal)) {
      const choice = chunk.choices[0];
      const text = chat ? (choice.delta && choice.delta.content) || "" : choice.text || "";
      const tokens = tokensOf(choice, chat);
      if (tokens.length && first === null) first = performance.now();
      reply += text;
      textDue += text;
      chipsDue.push(...tokens);
      count += tokens.length;
      if (choice.finish_reason) finish = choice.finish_reason;
      if (choice.speculative) {
        const s = choice.speculative;
        $("fig-draft").textContent = `${(s.acceptance_rate * 100).toFixed(1)}% (${s.accepted}/${s.proposed})`;
      }
      if (!frame) frame = requestAnimationFrame(draw);
    }
    if (controller.signal.aborted) setStatus(`stopped after ${count} tokens`);
    else setStatus(finish === "stop" ? "the model ended its text" : finish === "length" ? "reached max new tokens" : "done");
  } catch (err) {
    showError(err.message);
    setStatus("");
  } finally {
    if (chat && (reply || controller.signal.aborted)) state.messages.push({ role: "assistant", content: reply });
    else if (chat && !reply) {
      target.remove();
      state.messages.pop();
    }
    if (frame) cancelAnimationFrame(frame);
    draw(); // what is still buffered (frames do not run in a hidden tab)
    state.controller = null;
    $("generate").disabled = false;
    $("stop").disabled = true;
    document.body.dataset.runs = String(Number(document.body.dataset.runs || 0) + 1); // for scripts driving the page
  }
}

function stop() {
  if (state.controller) state.controller.abort();
}

async function start() {
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", stop);
  $("mode-complete").addEventListener("click", () => setMode("complete"));
  $("mode-chat").addEventListener("click", () => setMode("chat"));
  $("show-tokens").addEventListener("change", (e) => ($("token-panel").hidden = !e.target.checked));
  $("new-chat").addEventListener("click", () => {
    state.messages = [];
    $("transcript").textContent = "";
  });
  $("reset").addEventListener("click", resetSettings);
  document.querySelectorAll(".field[data-name] input").forEach((input) =>
    input.addEventListener("input", () => checkRange(input.closest(".field"))));
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      generate();
    } else if (e.key === "Escape") {
      stop();
    }
  });
  try {
    state.config = await backend.config();
  } catch (err) {
    showError(err.message);
    return;
  }
  const config = state.config;
  describeModel(config);
  if (backend.load) {
    try {
      const info = await backend.load(setStatus);
      const threads = info.threads ? `, ${info.threads} thread${info.threads > 1 ? "s" : ""}` : "";
      $("model-info").textContent += ` \u00b7 in this tab: ${info.backend}${threads}, ${info.dtype}`;
      setStatus(`model ready in ${(info.load_ms / 1000).toFixed(1)} s`);
    } catch (err) {
      showError(err.message);
      setStatus("");
      return;
    }
  }
  for (const [name, range] of Object.entries(config.ranges)) {
    document.querySelector(`.field[data-name="${name}"] .range`).textContent =
      `card's range ${range.low}\u2013${range.high}, default ${config.defaults[name]}`;
  }
  $("max_tokens").max = config.max_tokens;
  $("max-tokens-range").textContent = config.local ? `at most ${config.max_tokens} (the context)`
    : `at most ${config.max_tokens} on this server`;
  $("suppress").closest("label").hidden = Boolean(config.local); // the server's UTF-8 guard has no browser port
  for (const example of config.examples) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = example.title;
    button.title = example.prompt;
    button.addEventListener("click", () => {
      setMode("complete");
      $("prompt").value = example.prompt;
      generate();
    });
    $("examples").append(button);
  }
  $("fig-draft-box").hidden = !config.draft;
  $("api-key-field").hidden = !config.needs_key;
  $("api-key").value = sessionStorage.getItem("stentor-api-key") || "";
  $("api-key").addEventListener("input", () => sessionStorage.setItem("stentor-api-key", $("api-key").value));
  if (!config.chat) {
    $("mode-chat").disabled = true;
    $("mode-chat").title = "this model's tokenizer has no chat template";
  }
  resetSettings();
  document.body.dataset.ready = "true";
}

start();
