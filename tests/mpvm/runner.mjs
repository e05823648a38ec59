// Serves MicroPython runs for tests/mpvm/__init__.py over stdin/stdout, one JSON object per line.
//
// Every request gets a brand-new VM from the pinned official WebAssembly port (a fresh VM costs a few
// milliseconds), so runs cannot leak modules, globals, heap or files into each other. Timers left
// behind by a finished run (asyncio tasks it never awaited) are dropped, so they cannot run later.
//
// Request:  {"id", "code", "files": [[vmPath, "host"|"text"|"base64", data]], "heapsize", "pystack",
//            "cwd", "asyncioRunShim"}
// Response: {"id", "ok", "stdout", "stderr", "error": {"type", "traceback"} | null, "loadMs", "runMs"}
// Only responses go to stdout; anything the runtime logs goes to stderr.

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { createInterface } from "node:readline";

import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const PACKAGE = "@micropython/micropython-webassembly-pyscript";

// Keep stdout for the protocol only.
console.log = (...args) => console.error(...args);
console.info = (...args) => console.error(...args);

// The VM's asyncio schedules itself with globalThis.setTimeout. Tag each timer with the run that set
// it and drop it if that run is over.
const realSetTimeout = globalThis.setTimeout;
let generation = 0;
globalThis.setTimeout = (callback, ms, ...args) => {
  const owner = generation;
  return realSetTimeout(() => {
    if (owner === generation) callback(...args);
  }, ms);
};

// The port keeps one VM per process: its JS glue reaches the VM through globalThis.Module, and the
// FinalizationRegistry it creates frees proxy references through that global too. A registry left by
// an earlier VM would free references in the current VM (random crashes), so finalizers of earlier
// runs are ignored: their VM is garbage anyway.
const RealFinalizationRegistry = globalThis.FinalizationRegistry;
globalThis.FinalizationRegistry = class extends RealFinalizationRegistry {
  constructor(cleanup) {
    const owner = generation;
    super((held) => {
      if (owner === generation) cleanup(held);
    });
  }
};

// Installed only when asked: MicroPython's `asyncio.run(main())` blocks until main() returns; this
// port has no blocking loop, so the shim starts main() as a task and the runner awaits every such
// task after the run's code has finished (code after asyncio.run() therefore runs before main()).
const ASYNCIO_RUN_SHIM = `
import asyncio as _mpvm_asyncio
_mpvm_tasks = []
def _mpvm_run(coro):
    _mpvm_tasks.append(_mpvm_asyncio.create_task(coro))
_mpvm_asyncio.run = _mpvm_run
del _mpvm_run
`;
const ASYNCIO_RUN_DRAIN = `
for _mpvm_task in _mpvm_tasks:
    await _mpvm_task
`;

function mkdirs(FS, path) {
  let current = "";
  for (const part of path.split("/").filter(Boolean)) {
    current += "/" + part;
    try {
      FS.mkdir(current);
    } catch (err) {
      // EEXIST is fine; anything else shows up when the file is written.
    }
  }
}

function writeFiles(FS, files) {
  for (const [vmPath, kind, data] of files) {
    const dir = vmPath.slice(0, vmPath.lastIndexOf("/"));
    if (dir) mkdirs(FS, dir);
    let bytes;
    if (kind === "host") bytes = readFileSync(data);
    else if (kind === "base64") bytes = Buffer.from(data, "base64");
    else bytes = data;
    FS.writeFile(vmPath, bytes);
  }
}

function describe(err) {
  if (err && err.name === "PythonError") return { type: err.type, traceback: err.message };
  const text = err && err.stack ? String(err.stack) : String(err);
  return { type: "JavaScriptError", traceback: text };
}

async function run(req) {
  generation += 1;
  const stdout = [];
  const stderr = [];
  const t0 = performance.now();
  let loadMs = 0;
  let error = null;
  try {
    const options = {
      stdout: (b) => stdout.push(...b),
      stderr: (b) => stderr.push(...b),
      linebuffer: false,
    };
    if (req.heapsize) options.heapsize = req.heapsize;
    if (req.pystack) options.pystack = req.pystack;
    const mp = await loadMicroPython(options);
    writeFiles(mp.FS, req.files || []);
    mp.runPython(`import os\nos.chdir(${JSON.stringify(req.cwd || "/")})\ndel os\n`);
    if (req.asyncioRunShim) mp.runPython(ASYNCIO_RUN_SHIM);
    loadMs = performance.now() - t0;
    // runPythonAsync runs plain code exactly like runPython and also allows top-level `await`.
    await mp.runPythonAsync(req.code);
    if (req.asyncioRunShim) await mp.runPythonAsync(ASYNCIO_RUN_DRAIN);
  } catch (err) {
    error = describe(err);
  } finally {
    generation += 1;
  }
  return {
    id: req.id,
    ok: error === null,
    stdout: Buffer.from(stdout).toString("utf8"),
    stderr: Buffer.from(stderr).toString("utf8"),
    error,
    loadMs,
    runMs: performance.now() - t0 - loadMs,
  };
}

function send(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

process.on("unhandledRejection", (reason) => {
  console.error("mpvm runner: unhandled rejection:", reason);
});
// Print the error itself, not Node's echo of the (minified, 100 kB) source line it came from.
process.on("uncaughtException", (err) => {
  console.error("mpvm runner: uncaught exception:", err && err.stack ? err.stack : err);
  process.exit(70);
});

// createRequire works on Node 18 too (import.meta.resolve needs Node 20.6+).
const require = createRequire(import.meta.url);
const pkg = JSON.parse(readFileSync(require.resolve(`${PACKAGE}/package.json`), "utf8"));

let queue = Promise.resolve();
const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
lines.on("line", (line) => {
  if (!line.trim()) return;
  queue = queue.then(async () => {
    let req;
    try {
      req = JSON.parse(line);
    } catch (err) {
      send({ id: null, ok: false, error: { type: "ProtocolError", traceback: String(err) } });
      return;
    }
    send(await run(req));
  });
});
lines.on("close", () => {
  queue.then(() => process.exit(0));
});

send({ ready: true, package: PACKAGE, version: pkg.version, node: process.version });
