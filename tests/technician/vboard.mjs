// The far end of a virtual board: the real MicroPython VM (the pinned WebAssembly port) driven by
// its own event-driven REPL, one byte at a time, exactly as a UART would feed it. Bytes come in on
// stdin and the REPL's output goes to stdout; tests/technician/vboard.py puts a pseudo-terminal in
// front, so mpremote, esptool-style probes and the technician tools open it like /dev/ttyUSB0.
//
// Raw-paste mode (Ctrl-E A Ctrl-A) is answered "R\x00", "not supported": this port's
// event-driven raw-paste reads stdin blocking, which a JS event loop cannot do, and it would hang.
// mpremote then sends the code through the plain raw REPL, as it does with older firmware.
//
// Ctrl-D on an empty line (friendly or raw REPL) is a soft reset, as on a board: a fresh VM (new
// heap, no modules loaded) with the file system kept, announced by "MPY: soft reboot"; a board in
// raw REPL mode stays in it.
//
// argv[2]: a JSON file {"heapsize": n, "files": {"/path": "base64"}} with the board's first files.

import { readFileSync } from "node:fs";

import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

console.log = (...args) => console.error(...args);
const setup = JSON.parse(readFileSync(process.argv[2], "utf8"));
let muted = false;
const write = (bytes) => {
  if (!muted) process.stdout.write(Buffer.from(bytes));
};

function mkdirs(FS, path) {
  let current = "";
  for (const part of path.split("/").filter(Boolean)) {
    current += "/" + part;
    try {
      FS.mkdir(current);
    } catch (err) {
      // exists
    }
  }
}

function snapshot(FS, dir, out) {
  for (const name of FS.readdir(dir)) {
    if (name === "." || name === "..") continue;
    const path = (dir === "/" ? "" : dir) + "/" + name;
    if (path === "/dev" || path === "/proc") continue;
    const mode = FS.stat(path).mode;
    if (FS.isDir(mode)) {
      out.push([path, null]);
      snapshot(FS, path, out);
    } else if (FS.isFile(mode)) {
      out.push([path, FS.readFile(path)]);
    }
  }
  return out;
}

async function boot(files) {
  const mp = await loadMicroPython({ stdout: write, linebuffer: false, heapsize: setup.heapsize });
  for (const [path, data] of files) {
    if (data === null) mkdirs(mp.FS, path);
    else {
      mkdirs(mp.FS, path.slice(0, path.lastIndexOf("/")));
      mp.FS.writeFile(path, data);
    }
  }
  mp.runPython("import os\nos.chdir('/')\ndel os\n");
  return mp;
}

const initial = Object.entries(setup.files).map(([p, b64]) => [p, Buffer.from(b64, "base64")]);
let mp = await boot(initial);
mp.replInit();
let raw = false;
const pending = [];
let busy = false;
let held = []; // a possible raw-paste request being recognised

async function feed(byte) {
  if (byte === 0x01) raw = true;
  else if (byte === 0x02) raw = false;
  const exit = await mp.replProcessCharWithAsyncify(byte);
  if (exit) {
    write(Buffer.from("MPY: soft reboot\r\n"));
    mp = await boot(snapshot(mp.FS, "/", []));
    muted = raw; // a board in raw REPL mode prints no banner
    mp.replInit();
    muted = false;
    if (raw) await mp.replProcessCharWithAsyncify(0x01);
  }
}

async function drain() {
  if (busy) return;
  busy = true;
  while (pending.length) {
    const byte = pending.shift();
    const expected = [0x05, 0x41, 0x01][held.length];
    if (raw && byte === expected) {
      held.push(byte);
      if (held.length === 3) {
        held = [];
        write(Buffer.from("R\x00"));
      }
      continue;
    }
    for (const b of held) await feed(b);
    held = [];
    await feed(byte);
  }
  busy = false;
}

process.stdin.on("data", (data) => {
  for (const byte of data) pending.push(byte);
  drain();
});
process.stdin.on("end", () => process.exit(0));
