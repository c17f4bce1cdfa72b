// The page: model picker, progress, prompt, streamed output. All Python runs in worker.js.
// URL options: ?model=NAME (bundled model to load first), ?weights=auto|f32|int8|stored,
// ?memory=MB (memory budget for "auto"), ?autoload=0, ?prompt=TEXT&run=1&chat=0&max=N&eot=0
// (generate at once; eot=0 runs to max tokens: the benchmark mode).
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// Read by tests and benchmarks/browser.py.
const state = {
  ready: false, busy: false, error: null, info: null, cached: null, timings: {}, text: "",
  pieces: 0, stats: null, done: 0, maxGapMs: 0, t0: 0,  // t0: navigation start (performance.now() origin)
};
window.edgert = state;

// The page must stay responsive while the worker computes: record the longest gap between
// ticks of a 50 ms timer (a busy main thread would stretch it).
let lastTick = performance.now();
setInterval(() => {
  const now = performance.now();
  if (state.busy) state.maxGapMs = Math.max(state.maxGapMs, now - lastTick);
  lastTick = now;
}, 50);

function showError(message) {
  state.error = message;
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setBusy(busy) {
  state.busy = busy;
  $("load").disabled = busy;
  $("generate").disabled = busy || !state.ready;
  $("stop").disabled = !busy || !state.ready;
  $("model").disabled = $("file").disabled = $("weights").disabled = busy;
}

let config;
try {
  config = await (await fetch("config.json")).json();
} catch (e) {
  showError(`cannot read config.json (${e.message}); serve the built site with an HTTP server`);
  throw e;
}
for (const m of config.models) {
  const o = document.createElement("option");
  o.value = m.name;
  o.textContent = `${m.name} (${(m.bytes / 1e6).toFixed(0)} MB)`;
  $("model").append(o);
}
if (!config.models.length) {
  const o = document.createElement("option");
  o.textContent = "no bundled model: open a .edge file";
  $("model").append(o);
  $("model").disabled = true;
}
if (params.get("model")) $("model").value = params.get("model");
if (params.get("weights")) $("weights").value = params.get("weights");
if (params.get("prompt")) $("prompt").value = params.get("prompt");
if (params.get("chat") === "0") $("chat").checked = false;
if (params.get("max")) $("max-tokens").value = params.get("max");
$("about").textContent = `Pyodide ${config.pyodide_version} from ${new URL(config.pyodide, location.href).href}`;

const worker = new Worker("worker.js");
worker.postMessage({ type: "config", config, memoryMb: Number(params.get("memory")) || null });

let genStart = 0, firstPiece = 0;

worker.onmessage = (ev) => {
  const msg = ev.data;
  if (msg.type === "progress") {
    $("progress").value = msg.value;
    $("status").textContent = msg.text;
  } else if (msg.type === "ready") {
    Object.assign(state, { ready: true, info: msg.info, cached: msg.cached });
    state.timings = { ...msg.timings, ready_s: (performance.now() - state.t0) / 1000 };
    $("progress").value = 1;
    const i = msg.info;
    $("status").textContent = `${i.name} ready: ${i.arch}, ${i.layers} layers, ${i.weights} weights ` +
      `(about ${i.resident_mb} MB), context ${i.context}${msg.cached ? ", model from the browser cache" : ""}`;
    $("chat").checked = i.chat_template && params.get("chat") !== "0";
    setBusy(false);
    if (params.get("run") === "1" && state.done === 0) generate();
  } else if (msg.type === "token") {
    const now = performance.now();
    if (!firstPiece) {
      firstPiece = now;
      if (state.timings.first_token_s === undefined) state.timings.first_token_s = (now - state.t0) / 1000;
    }
    state.text += msg.text;
    state.pieces = msg.pieces;
    $("output").append(msg.text);
    const rate = msg.pieces > 1 ? (msg.pieces - 1) / ((now - firstPiece) / 1000) : 0;
    $("stats").textContent = `${msg.pieces} pieces · ${rate.toFixed(1)} tok/s`;
  } else if (msg.type === "done") {
    const s = msg.stats;
    state.stats = s;
    state.done += 1;
    $("stats").textContent = `prefill ${s.prefill_tok_s.toFixed(1)} tok/s (${s.prompt_tokens} tokens) · ` +
      `decode ${s.decode_tok_s.toFixed(1)} tok/s (${s.generated_tokens} tokens` +
      `${msg.stopped ? ", stopped" : `, stop: ${s.stop}`})`;
    setBusy(false);
  } else if (msg.type === "error") {
    showError(msg.message);
    $("status").textContent = msg.during === "load" ? "Could not load the model." : "Generation failed.";
    if (msg.during === "load") state.ready = false;
    setBusy(false);
  }
};
worker.onerror = (e) => { showError(`the worker failed: ${e.message}`); setBusy(false); };

function load(what) {
  showError("");
  state.ready = false;
  setBusy(true);
  $("progress").value = 0;
  worker.postMessage({ type: "load", ...what, weights: $("weights").value });
}

function generate() {
  const prompt = $("prompt").value;
  if (!prompt.trim()) { showError("type a prompt first"); return; }
  showError("");
  state.text = "";
  state.pieces = 0;
  firstPiece = 0;
  genStart = performance.now();
  $("output").textContent = "";
  if (!$("chat").checked) {
    const p = document.createElement("span");
    p.className = "prompt";
    p.textContent = prompt;
    $("output").append(p);
  }
  $("stats").textContent = "prefill…";
  setBusy(true);
  worker.postMessage({
    type: "generate", prompt, chat: $("chat").checked, maxTokens: Number($("max-tokens").value) || 96,
    temperature: Number($("temperature").value) || 0, ignoreEot: params.get("eot") === "0",
  });
}

$("load").onclick = () => {
  const file = $("file").files[0];
  if (file) load({ file }); else if (config.models.length) load({ name: $("model").value });
  else showError("pick a .edge file first");
};
$("file").onchange = () => { if ($("file").files[0]) load({ file: $("file").files[0] }); };
$("generate").onclick = generate;
$("stop").onclick = () => worker.postMessage({ type: "stop" });
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !$("generate").disabled) generate();
});

setBusy(false);
if (config.models.length && params.get("autoload") !== "0") load({ name: $("model").value });
else $("status").textContent = config.models.length ? "Pick a model and press Load." : "Open a .edge file to start.";
