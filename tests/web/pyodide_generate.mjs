// Runs edgert inside Pyodide in Node the way the page's worker does: Pyodide and numpy from a
// built site's local copy (SITE/pyodide), the wheels of SITE/config.json, the model written into
// Pyodide's in-memory file system, then edgert.web.glue; greedy decoding of each prompt (text or
// token ids) with each weight form. Prints one JSON line {runs: [{weights, prompt, tokens, text,
// stats, load_model_s, info}], pyodide_ready_s, total_s}; on failure the error's message on
// stderr and exit status 1.
//
//   node tests/web/pyodide_generate.mjs SITE MODEL.edge '{"prompts": ["...", [1, 2, 3]],
//        "max_tokens": 16, "weights": ["f32", "int8", "stored"], "context": 2048}'
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const RUN = `
import json, time
from edgert.web import glue
args = json.loads(args_json)
runs = []
for form in args.get("weights", ["f32"]):
    t0 = time.perf_counter()
    info = glue.open_model("/models/model.edge", weights=form, context=args.get("context", 2048))
    load_s = time.perf_counter() - t0
    m = glue.model()
    for prompt in args.get("prompts", ["The capital of France is"]):
        text = "".join(m.generate(prompt, max_tokens=args.get("max_tokens", 16), temperature=0.0, stop_at_eot=False))
        runs.append({"weights": form, "prompt": prompt, "tokens": m.last_tokens, "text": text, "stats": m.stats,
                     "load_model_s": load_s, "info": info})
json.dumps(runs)
`;

async function main() {
  const [site, modelPath, argJson] = process.argv.slice(2);
  const t0 = performance.now();
  const config = JSON.parse(fs.readFileSync(path.join(site, "config.json"), "utf8"));
  const pyodideDir = path.resolve(site, config.pyodide);
  const { loadPyodide } = await import(pathToFileURL(path.join(pyodideDir, "pyodide.mjs")).href);
  const py = await loadPyodide({ indexURL: pyodideDir + "/", stdout: () => {}, stderr: (s) => console.error(s) });
  await py.loadPackage("numpy", { messageCallback: () => {} });
  const sitePackages = py.runPython("import sysconfig; sysconfig.get_paths()['purelib']");
  for (const whl of config.wheels) {
    py.unpackArchive(new Uint8Array(fs.readFileSync(path.join(site, whl))), "wheel", { extractDir: sitePackages });
  }
  py.FS.mkdirTree("/models");
  py.FS.writeFile("/models/model.edge", new Uint8Array(fs.readFileSync(modelPath)));
  const tReady = performance.now();
  py.globals.set("args_json", argJson || "{}");
  const result = { runs: JSON.parse(py.runPython(RUN)) };
  result.pyodide_ready_s = (tReady - t0) / 1000;
  result.total_s = (performance.now() - t0) / 1000;
  console.log(JSON.stringify(result));
}

main().catch((e) => {
  console.error(String((e && e.message) || e));
  process.exit(1);
});
