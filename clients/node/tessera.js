// A Node.js client for Tessera: the tessera.v1.ImageGeneration service, loaded at run
// time from the repository's .proto by @grpc/proto-loader (no generated code to keep fresh).
//
//   const { TesseraClient } = require("./tessera");
//   const client = new TesseraClient("127.0.0.1:50051");
//   const result = await client.generate({ prompt: "a red circle", num_images: 2, seed: 7 });
//   fs.writeFileSync("best.png", result.images[0].png);   // best CLIP score first
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO = path.resolve(__dirname, "..", "..", "protos", "tessera", "v1", "image_generation.proto");

const definition = protoLoader.loadSync(PROTO, {
  keepCase: true,   // the proto's own field names: num_images, clip_score, preview_png
  longs: String,    // uint64 seeds as exact decimal strings
  defaults: true,
  oneofs: true,
});
const { ImageGeneration } = grpc.loadPackageDefinition(definition).tessera.v1;

class TesseraError extends Error {
  // A failed call: `code` is the gRPC status name, `details` the server's message.
  constructor(err) {
    const code = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code) || String(err.code);
    super(`${code}: ${err.details}`);
    this.code = code;
    this.details = err.details;
  }
}

class TesseraClient {
  constructor(target = "127.0.0.1:50051", { token = null, timeoutMs = 300000 } = {}) {
    if (token !== null && !/^[\x21-\x7e]+$/.test(token)) {
      // gRPC metadata values are printable ASCII; anything else fails inside the transport.
      throw new TypeError("token must be printable ASCII without spaces");
    }
    this.token = token;
    this.timeoutMs = timeoutMs;
    this.stub = new ImageGeneration(target, grpc.credentials.createInsecure());
  }

  _call() {
    const metadata = new grpc.Metadata();
    if (this.token) metadata.set("authorization", `Bearer ${this.token}`);
    return [metadata, { deadline: new Date(Date.now() + this.timeoutMs) }];
  }

  // Resolves to the GenerateResponse: { request_id, images: [{ png (Buffer), clip_score, seed, ... }], timings, total_ms }.
  generate(request) {
    return new Promise((resolve, reject) => {
      this.stub.Generate(request, ...this._call(), (err, response) =>
        err ? reject(new TesseraError(err)) : resolve(response));
    });
  }

  // Calls onProgress({ stage, completed, total, preview_png }) for each progress event; resolves to the result.
  generateStream(request, onProgress = () => {}) {
    return new Promise((resolve, reject) => {
      let result = null;
      const call = this.stub.GenerateStream(request, ...this._call());
      call.on("data", (event) => {
        if (event.event === "progress") onProgress(event.progress);
        else result = event.result;
      });
      call.on("error", (err) => reject(new TesseraError(err)));
      call.on("end", () => (result ? resolve(result) : reject(new Error("the stream ended without a result"))));
    });
  }

  info() {
    return new Promise((resolve, reject) => {
      this.stub.GetInfo({}, ...this._call(), (err, info) => (err ? reject(new TesseraError(err)) : resolve(info)));
    });
  }

  close() {
    this.stub.close();
  }
}

module.exports = { TesseraClient, TesseraError };
