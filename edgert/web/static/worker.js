// edgert's Web Worker: Pyodide + NumPy + the edgert wheel, the model download (kept in the
// browser's Cache API), weight expansion and generation -- all off the page's thread.
// In:  {type: "config", config, memoryMb}  {type: "load", name | file, weights}
//      {type: "generate", prompt, chat, maxTokens, temperature, ignoreEot}  {type: "stop"}
// Out: {type: "progress", value 0..1, text}  {type: "ready", info, timings}
//      {type: "token", text, pieces}  {type: "done", stats, stopped}  {type: "error", message}
"use strict";

const CONTEXT = 2048;        // KV cache length (tokens)
const CACHE_NAME = "edgert-models";
// Share of the progress bar per stage: [start, end].
const STAGES = { pyodide: [0, 0.15], numpy: [0.15, 0.22], wheels: [0.22, 0.25], model: [0.25, 0.85], weights: [0.85, 1] };

let config = null, memoryMb = null, py = null, glue = null, stopRequested = false;

class UserError extends Error {}

function progress(stage, frac, text) {
  const [a, b] = STAGES[stage];
  postMessage({ type: "progress", value: a + (b - a) * Math.max(0, Math.min(1, frac)), text });
}

const mb = (n) => (n / 1e6).toFixed(1);
const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");

// Let queued messages (a "stop") run between tokens without the 4 ms clamp of nested timers.
const channel = new MessageChannel();
let wake = null;
channel.port1.onmessage = () => wake && wake();
const yieldToEvents = () => new Promise((resolve) => { wake = resolve; channel.port2.postMessage(0); });

async function startPython() {
  if (py) return;
  const base = new URL(config.pyodide, self.location.href).href;
  progress("pyodide", 0.05, `Loading Pyodide ${config.pyodide_version} from ${base}`);
  importScripts(base + "pyodide.js");
  const runtime = await loadPyodide({ indexURL: base, stdout: () => {}, stderr: (s) => console.warn(s) });
  progress("numpy", 0, "Loading NumPy");
  await runtime.loadPackage("numpy", { messageCallback: () => {}, errorCallback: (s) => console.warn(s) });
  progress("wheels", 0, "Installing edgert");
  const sitePackages = runtime.runPython("import sysconfig; sysconfig.get_paths()['purelib']");
  for (const whl of config.wheels) {
    const r = await fetch(new URL(whl, self.location.href));
    if (!r.ok) throw new UserError(`cannot fetch ${whl}: HTTP ${r.status}`);
    runtime.unpackArchive(await r.arrayBuffer(), "wheel", { extractDir: sitePackages });
  }
  glue = runtime.pyimport("edgert.web.glue");
  py = runtime;
}

// The bundled model's bytes: from the Cache API when an entry with the same sha256 is there,
// else downloaded with progress, checked against config.json's sha256 and cached.
async function bundledModel(entry) {
  const url = new URL(entry.file, self.location.href).href;
  const key = `${url}?sha256=${entry.sha256}`;
  let cache = null;
  try { cache = await caches.open(CACHE_NAME); } catch (e) { /* no Cache API here (not a secure context) */ }
  const hit = cache && (await cache.match(key));
  if (hit) {
    progress("model", 1, `${entry.name}: from the browser cache`);
    return { bytes: new Uint8Array(await hit.arrayBuffer()), cached: true };
  }
  const r = await fetch(url);
  if (!r.ok) throw new UserError(`cannot download ${entry.file}: HTTP ${r.status}`);
  const total = entry.bytes;
  const bytes = new Uint8Array(total);
  const reader = r.body.getReader();
  let got = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (got + value.length > total) throw new UserError(`${entry.file} is larger than the site's config.json says`);
    bytes.set(value, got);
    got += value.length;
    progress("model", got / total, `Downloading ${entry.name}: ${mb(got)} / ${mb(total)} MB`);
  }
  if (got !== total) throw new UserError(`${entry.file}: received ${got} of ${total} bytes (download cut short)`);
  if (self.crypto && crypto.subtle) {
    progress("model", 1, `Checking ${entry.name}`);
    if (hex(await crypto.subtle.digest("SHA-256", bytes)) !== entry.sha256) {
      throw new UserError(`${entry.file} is damaged: its sha256 differs from the site's config.json`);
    }
  }
  if (cache) {
    try {
      for (const old of await cache.keys()) if (old.url.startsWith(url + "?") && old.url !== key) await cache.delete(old);
      await cache.put(key, new Response(bytes, { headers: { "content-type": "application/octet-stream" } }));
    } catch (e) {
      console.warn("edgert: could not cache the model", e);
    }
  }
  return { bytes, cached: false };
}

function memoryBudgetMb() {
  if (memoryMb) return memoryMb;
  const gb = self.navigator && navigator.deviceMemory;  // Chromium only, capped at 8
  return gb ? Math.min(2600, gb * 1024 * 0.6) : 2048;
}

async function load(msg) {
  const t0 = performance.now();
  await startPython();
  const tPython = performance.now();
  let bytes, cached = false, label, fileName;
  if (msg.file) {
    label = fileName = msg.file.name;
    progress("model", 0, `Reading ${fileName}`);
    bytes = new Uint8Array(await msg.file.arrayBuffer());
    progress("model", 1, `Read ${fileName}: ${mb(bytes.length)} MB`);
  } else {
    const entry = config.models.find((m) => m.name === msg.name);
    if (!entry) throw new UserError(`no bundled model named ${msg.name}`);
    ({ bytes, cached } = await bundledModel(entry));
    label = entry.name;
    fileName = entry.file.split("/").pop();
  }
  const tModel = performance.now();
  if (glue) glue.close();
  // Written into the in-memory file system's working directory, so that messages about a bad
  // file name it as the user knows it. The runtime maps (copies) it into its own memory, so the
  // file is removed again at once.
  const path = "/home/pyodide/" + fileName;
  py.FS.writeFile(path, bytes);
  bytes = null;
  progress("weights", 0, "Expanding weights");
  let info;
  try {
    info = glue.open_model.callKwargs(fileName, {
      weights: msg.weights || "auto", context: CONTEXT, memory_mb: memoryBudgetMb(), name: label,
      progress: (done, total) => progress("weights", done / total, `Expanding weights: ${done} / ${total} tensors`),
    });
  } finally {
    if (py) py.FS.unlink(path);
  }
  const tReady = performance.now();
  postMessage({
    type: "ready", info: info.toJs({ dict_converter: Object.fromEntries }), cached,
    timings: { python_s: (tPython - t0) / 1000, model_s: (tModel - tPython) / 1000, weights_s: (tReady - tModel) / 1000 },
  });
  info.destroy();
}

async function generate(msg) {
  stopRequested = false;
  const gen = glue.generate.callKwargs(msg.prompt, {
    chat: !!msg.chat, max_tokens: msg.maxTokens, temperature: msg.temperature, ignore_eot: !!msg.ignoreEot,
  });
  let pieces = 0;
  try {
    for (;;) {
      const r = gen.next();
      if (r.done) break;
      pieces += 1;
      postMessage({ type: "token", text: r.value, pieces });
      await yieldToEvents();
      if (stopRequested) {
        gen.return(undefined);  // runs the generator's finally: its timings are kept
        break;
      }
    }
  } finally {
    gen.destroy();
  }
  const stats = glue.stats();
  postMessage({ type: "done", stats: stats.toJs({ dict_converter: Object.fromEntries }), stopped: stopRequested });
  stats.destroy();
}

const MEMORY_HINT = "close other tabs, pick int8 weights or a smaller model, then reload the page";

function describe(e) {
  if (e && e.pyodide_fatal_error) {
    py = glue = null;  // the runtime is gone; the next load starts a fresh one
    return `The Python runtime stopped (most likely out of memory): ${MEMORY_HINT}.`;
  }
  if (e instanceof RangeError || /out of memory|allocation failed|Cannot enlarge memory/i.test(String(e && e.message))) {
    return `This browser tab ran out of memory: ${MEMORY_HINT}.`;
  }
  if (e instanceof UserError) return e.message;
  if (e && e.type) {  // a Python exception: its last line, e.g. "edgert.errors.EdgeError: ..."
    const last = String(e.message).trim().split("\n").pop();
    if (e.type === "MemoryError") return `Not enough memory: ${MEMORY_HINT}.`;
    if (e.type === "EdgeError") return last.replace(/^[\w.]*EdgeError:\s*/, "");
    return `internal error: ${last}`;
  }
  return String((e && e.message) || e);
}

let queue = Promise.resolve();
self.onmessage = (ev) => {
  const msg = ev.data;
  if (msg.type === "stop") { stopRequested = true; return; }
  if (msg.type === "config") { config = msg.config; memoryMb = msg.memoryMb || null; return; }
  const job = msg.type === "load" ? load : msg.type === "generate" ? generate : null;
  if (!job) return;
  queue = queue.then(() => job(msg)).catch((e) => {
    if (!(e instanceof UserError || (e && e.type === "EdgeError"))) console.error(e);
    postMessage({ type: "error", message: describe(e), during: msg.type });
  });
};
