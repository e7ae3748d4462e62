#!/usr/bin/env node
// Generate images through a running Tessera server and write them as PNGs, best first.
//
//   node generate.js "a small red circle in the top left on a blue background" --num-images 2 --seed 7 --out out
//   node generate.js "a red circle" --model mini   # a server of several models: which one draws
"use strict";

const fs = require("fs");
const path = require("path");
const { parseArgs } = require("util");
const { TesseraClient } = require("./tessera");

const USAGE = `usage: node generate.js PROMPT [--server HOST:PORT] [--num-images N] [--candidates N] [--seed N] [--model NAME, default the server's first] [--priority=N, lower is sooner, default 0] [--out DIR, default ./tessera-out]`;

async function main() {
  let parsed;
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: {
        server: { type: "string", default: process.env.TESSERA_SERVER || "127.0.0.1:50051" },
        "num-images": { type: "string", default: "1" },
        candidates: { type: "string", default: "0" },
        seed: { type: "string", default: "0" },
        model: { type: "string", default: "" },
        priority: { type: "string", default: "0" },
        out: { type: "string", default: "tessera-out" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (err) {  // an unknown option, a value missing (a negative number needs --priority=-2)
    console.error(`generate.js: ${err.message}\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help || positionals.length !== 1) {
    console.error(USAGE);
    return values.help ? 0 : 2;
  }
  if (!/^-?\d+$/.test(values.priority)) {
    console.error(`generate.js: --priority needs an integer, not ${JSON.stringify(values.priority)}\n${USAGE}`);
    return 2;
  }
  const client = new TesseraClient(values.server);
  try {
    const result = await client.generateStream(
      {
        prompt: positionals[0],
        num_images: Number(values["num-images"]),
        num_candidates: Number(values.candidates),
        seed: values.seed,  // a decimal string: uint64 seeds survive intact
        model: values.model,  // "": the server's first model
        priority: Number(values.priority),  // lower is served sooner; the server bounds it
      },
      (p) => process.stderr.isTTY && process.stderr.write(`\r${p.stage} ${p.completed}/${p.total}`),
    );
    if (process.stderr.isTTY) process.stderr.write("\n");
    fs.mkdirSync(values.out, { recursive: true });
    result.images.forEach((im, rank) => {
      // "node_": the C++ and Python clients write to the same default folder under their own names
      const file = path.join(values.out, `node_${String(rank).padStart(2, "0")}_seed${im.seed}.png`);
      fs.writeFileSync(file, im.png);
      console.log(`${file}  clip_score=${im.clip_score.toFixed(3)} seed=${im.seed}`);
    });
    return 0;
  } catch (err) {
    console.error(`generate.js: ${err.message}`);
    return 1;
  } finally {
    client.close();
  }
}

main().then((code) => { process.exitCode = code; });
