// Drives the built demo page in headless Chromium (Debian's /usr/bin/chromium through
// playwright-core) and prints one JSON line of what happened; exit status 1 on failure.
//
//   NODE_PATH=DIR/node_modules node tests/web/chromium_page.mjs '{"url": "http://127.0.0.1:PORT/",
//       "mode": "e2e" | "bench", "screenshot": "shot.png", "prompt": "...", "max_tokens": 32,
//       "weights": "f32", "timeout_s": 300}'
//
// e2e: load the page (the first bundled model loads by itself), check its main thread stays
// responsive, type a prompt, press Generate, wait for text, screenshot; stop a long generation
// with the Stop button; reload and check the model came from the browser cache without a
// second download; open a bad file and read the error shown. bench: ?run=1 with greedy decoding to max_tokens, report the page's timings.
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");

const CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--no-first-run", "--disable-sync"];

const opts = JSON.parse(process.argv[2] || "{}");
const timeout = (opts.timeout_s || 300) * 1000;
const out = { console_errors: [], model_requests: [], external_requests: [] };

async function waitFor(page, expr) {
  await page.waitForFunction(expr, null, { timeout, polling: 200 });
}

async function loaded(page) {
  await waitFor(page, "window.edgert && (window.edgert.ready || window.edgert.error)");
  return page.evaluate(() => ({ ready: edgert.ready, error: edgert.error, info: edgert.info, cached: edgert.cached,
    timings: edgert.timings }));
}

async function main() {
  const browser = await chromium.launch({ executablePath: opts.chromium || "/usr/bin/chromium", args: CHROMIUM_ARGS });
  try {
    const context = await browser.newContext({ viewport: { width: 1000, height: 760 } });
    const page = await context.newPage();
    const origin = new URL(opts.url).origin;
    page.on("console", (m) => { if (m.type() === "error") out.console_errors.push(m.text()); });
    page.on("pageerror", (e) => out.console_errors.push(String(e)));
    context.on("request", (r) => {
      if (!r.url().startsWith(origin)) out.external_requests.push(r.url());
      if (r.url().includes("/models/")) out.model_requests.push(r.url());
    });
    const query = new URLSearchParams();
    if (opts.weights) query.set("weights", opts.weights);
    if (opts.mode === "bench") {
      Object.entries({ run: "1", chat: "0", eot: "0", prompt: opts.prompt || "The history of the sea",
        max: String(opts.max_tokens || 64) }).forEach(([k, v]) => query.set(k, v));
    }
    await page.goto(`${opts.url}?${query}`);
    out.first_load = await loaded(page);
    if (!out.first_load.ready) return;
    if (opts.mode === "bench") {
      await waitFor(page, "window.edgert.done >= 1 || window.edgert.error");
      Object.assign(out, await page.evaluate(() => ({ stats: edgert.stats, timings: edgert.timings, error: edgert.error,
        max_gap_ms: edgert.maxGapMs, text: edgert.text })));
      return;
    }
    await page.fill("#prompt", opts.prompt || "Write one sentence about the sea.");
    if (opts.chat === false) await page.uncheck("#chat");
    await page.fill("#max-tokens", String(opts.max_tokens || 24));
    await page.click("#generate");
    await waitFor(page, "window.edgert.done >= 1 || window.edgert.error");
    Object.assign(out, await page.evaluate(() => ({ text: edgert.text, stats: edgert.stats, error: edgert.error,
      max_gap_ms: edgert.maxGapMs, output_text: document.getElementById("output").textContent,
      status_text: document.getElementById("status").textContent,
      stats_text: document.getElementById("stats").textContent })));
    if (opts.screenshot) await page.screenshot({ path: opts.screenshot, fullPage: true });
    // Stop: a long generation ends early when the button is pressed.
    await page.fill("#max-tokens", "400");
    await page.click("#generate");
    await waitFor(page, "window.edgert.pieces >= 2");
    await page.click("#stop");
    await waitFor(page, "window.edgert.done >= 2 || window.edgert.error");
    out.stopped = await page.evaluate(() => ({ stats: edgert.stats, error: edgert.error,
      stats_text: document.getElementById("stats").textContent }));
    // Reload: the model must come from the browser's cache.
    const before = out.model_requests.length;
    await page.reload();
    out.reload = await loaded(page);
    out.reload.model_requests = out.model_requests.length - before;
    // A bad file gives a clear message.
    await page.setInputFiles("#file", { name: "broken.edge", mimeType: "application/octet-stream",
      buffer: Buffer.from("this is not a model file, only some text".repeat(4)) });
    await waitFor(page, "window.edgert.error");
    out.bad_file = await page.evaluate(() => ({ error: edgert.error, shown: document.getElementById("error").textContent,
      visible: !document.getElementById("error").hidden }));
  } finally {
    await browser.close();
  }
}

main().then(() => console.log(JSON.stringify(out))).catch((e) => {
  console.error(String((e && e.stack) || e));
  console.log(JSON.stringify({ ...out, failure: String((e && e.message) || e) }));
  process.exit(1);
});
