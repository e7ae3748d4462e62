// A Node.js client for Tessera: the tessera.v1.ImageGeneration service, loaded at run
// time from the repository's .proto by @grpc/proto-loader (no generated code to keep fresh).
//
//   const { TesseraClient } = require("./tessera");
//   const client = new TesseraClient("127.0.0.1:50051");
//   const result = await client.generate({ prompt: "a red circle", num_images: 2, seed: 7 });
//   fs.writeFileSync("best.png", result.images[0].png);   // best CLIP score first
//
// A server of several models: `await client.listModels()` names them (the first is what a
// request without `model` gets); `generate({ prompt, model: "mini" })`, `info("mini")`.
// An unknown name is a TesseraError with code NOT_FOUND, its message naming the models served.
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

  // The named model's ServerInfo ("" or none: the server's first model).
  info(model = "") {
    return new Promise((resolve, reject) => {
      this.stub.GetInfo({ model }, ...this._call(), (err, info) => (err ? reject(new TesseraError(err)) : resolve(info)));
    });
  }

  // Resolves to [{ name, version, model_kind, model_name, state, load_ms }], the first model first.
  // A server from before ListModels (UNIMPLEMENTED) serves one model: it is listed from GetInfo,
  // named "" (the name that asks for it).
  listModels() {
    return new Promise((resolve, reject) => {
      this.stub.ListModels({}, ...this._call(), (err, response) => {
        if (!err) return resolve(response.models);
        if (err.code !== grpc.status.UNIMPLEMENTED) return reject(new TesseraError(err));
        this.info().then((info) => resolve([{ name: "", version: info.version, model_kind: info.model_kind,
                                              model_name: info.model_name, state: "serving", load_ms: 0 }]), reject);
      });
    });
  }

  close() {
    this.stub.close();
  }
}

module.exports = { TesseraClient, TesseraError };
