// Tessera's web page: the same JSON API any client uses (GET /v1/models, GET /v1/info?model=,
// POST /v1/generate:stream). Seeds are uint64 and travel as strings; they are never turned
// into JS numbers.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("form"), promptBox = $("prompt"), button = $("generate");
let info = null;       // the chosen model's ServerInfo
let infoAsked = 0;     // the latest /v1/info asked: an older answer arriving late is dropped
const CANDIDATES = $("num-candidates").value;  // the page's own default, for a model that reranks

function setState(state) { document.body.dataset.state = state; }

function headers() {
  const h = { "content-type": "application/json" };
  const token = $("token").value.trim();
  if (token) h.authorization = "Bearer " + token;
  return h;
}

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

// A failed response as one sentence: the server's own message when it sent one.
async function failure(response) {
  let message = "";
  try { message = (await response.json()).message || ""; } catch (_) { /* not JSON */ }
  if (response.status === 401) {
    $("auth").open = true;
    return "The server needs an access token: " + (message || "enter it under Access token.");
  }
  if (response.status === 429) return "The server is busy right now; try again in a moment. (" + message + ")";
  if (response.status === 503) return "The server is not taking requests (" + (message || "unavailable") + ").";
  if (response.status === 504) return "That took longer than the deadline allows: " + message;
  return message ? capitalize(message) + "." : "The server answered " + response.status + ".";
}

function capitalize(s) { return s.charAt(0).toUpperCase() + s.slice(1).replace(/\.$/, ""); }

function isChinese(text) { return /[\u3400-\u9fff]/.test(text); }

// The models the server serves fill the selector, the first (what a request naming none
// gets) first; it shows only when there is a choice. A server from before /v1/models (404)
// serves one model: the page asks /v1/info for it and names no model.
async function loadModels() {
  let models = [];
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    if (response.ok) models = (await response.json()).models || [];
  } catch (_) { /* loadInfo says what went wrong */ }
  const select = $("models");
  select.replaceChildren(...models.map((m) => {
    const option = document.createElement("option");
    option.value = m.name;
    option.textContent = m.name + (m.version ? ` (version ${m.version})` : "");
    option.title = [m.modelName, m.modelKind].filter(Boolean).join(", ");
    return option;
  }));
  $("model-choice").hidden = models.length < 2;
  await loadInfo();
}

function chosenModel() { return $("models").value || ""; }

function setMax(input, max) {
  if (!max) { input.removeAttribute("max"); return; }
  input.max = max;
  if (input.value && Number(input.value) > max) input.value = max;
}

async function loadInfo() {
  const model = chosenModel(), asked = ++infoAsked;
  let answer;
  try {
    const response = await fetch("/v1/info" + (model ? "?model=" + encodeURIComponent(model) : ""),
                                 { headers: headers() });
    if (!response.ok) throw new Error(await failure(response));
    answer = await response.json();
  } catch (e) {
    if (asked !== infoAsked) return;
    $("terms").replaceChildren();
    $("vocabulary-note").textContent = "Could not ask the server what it can draw: " + e.message;
    return;
  }
  if (asked !== infoAsked) return;  // the selector moved on while this answer travelled
  info = answer;
  // Only what the server says it serves: a pipeline without a model has no tokens or reranker.
  const parts = [info.modelName + (info.modelKind && info.modelKind !== "tessera" ? ` (${info.modelKind})` : "")];
  if (info.imageWidth) parts.push(`${info.imageWidth}×${info.imageHeight} images`);
  if (info.textContext) parts.push(`prompts up to ${info.textContext} tokens` + (info.tokenizer ? `, ${info.tokenizer}` : ""));
  else if (info.tokenizer) parts.push(`prompts read as ${info.tokenizer}`);
  if (info.rerank) parts.push(`reranked by ${info.reranker || "CLIP"}`);
  else if (info.modelKind) parts.push("no reranker: images in sampling order");
  $("model").textContent = parts.join(" · ");
  // The shapes family's own words; a server from before `shapes` (or a pipeline's own word
  // list) sends only the deprecated top-level vocabulary.
  const vocabulary = (info.shapes && info.shapes.vocabulary) || info.vocabulary;
  const terms = Object.values(vocabulary || {}).flat();
  const chinese = terms.some((term) => term && term.zh);
  $("prompt-hint").textContent = chinese ? "English or 中文" : info.modelKind ? "English" : "";
  const candidates = $("num-candidates");
  if (!info.rerank) {
    // Without a reranker every candidate past the images asked for is computed and thrown
    // away: leave Candidates empty, which asks for as many as Images (the server's default).
    candidates.value = "";
    candidates.placeholder = "= images";
    $("candidates-hint").textContent = "no reranker: one per image";
  } else if (candidates.placeholder) {  // back from a model without a reranker
    candidates.value = CANDIDATES;
    candidates.placeholder = "";
    $("candidates-hint").textContent = "";
  }
  const limits = info.limits || {};
  setMax($("num-images"), limits.maxNumImages);
  setMax(candidates, limits.maxNumCandidates);
  if (limits.maxPromptChars) promptBox.maxLength = limits.maxPromptChars;
  else promptBox.removeAttribute("maxlength");
  const guidance = (info.defaults || {}).guidanceScale;
  $("guidance").placeholder = guidance ? `default ${guidance}` : "default";
  showVocabulary(vocabulary);
}

function showVocabulary(vocabulary) {
  const note = $("vocabulary-note"), terms = $("terms");
  const kinds = vocabulary ? Object.entries(vocabulary).filter(([, list]) => list && list.length) : [];
  terms.replaceChildren();
  if (!kinds.length) {
    note.textContent = info && info.modelKind
      ? "This model reads any English text: describe the picture you want."
      : "This pipeline lists no words; see what its prompt takes in its documentation.";
    return;
  }
  note.textContent = "Tap a word to add it to the prompt.";
  for (const [kind, list] of kinds) {
    const heading = document.createElement("h3");
    heading.textContent = kind;
    const row = document.createElement("div");
    row.className = "terms";
    for (const term of list) {
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "term";
      chip.textContent = term.zh ? `${term.en} · ${term.zh}` : term.en;
      chip.addEventListener("click", () => addWord(term));
      row.append(chip);
    }
    terms.append(heading, row);
  }
}

function addWord(term) {
  const text = promptBox.value;
  const word = isChinese(text) && term.zh ? term.zh : term.en;
  const joiner = !text || /\s$/.test(text) || isChinese(word) ? "" : " ";
  promptBox.value = text + joiner + word;
  promptBox.focus();
}

function numberOrError(id, name) {
  const raw = $(id).value.trim();
  if (raw === "") return undefined;
  const value = Number(raw);
  if (!Number.isFinite(value)) throw new Error(`${name} must be a number.`);
  return value;
}

function requestFromForm() {
  const prompt = promptBox.value.trim();
  if (!prompt) throw new Error("Describe the image first, e.g. \u201ca red circle\u201d.");
  const body = { prompt, previewEvery: 8 };
  if (chosenModel()) body.model = chosenModel();
  const images = numberOrError("num-images", "Images"), candidates = numberOrError("num-candidates", "Candidates");
  if (images !== undefined) body.numImages = images;
  if (candidates !== undefined) body.numCandidates = candidates;
  const guidance = numberOrError("guidance", "Guidance");
  if (guidance !== undefined) body.guidanceScale = guidance;
  const seed = $("seed").value.trim();
  if (seed && !/^[0-9]+$/.test(seed)) throw new Error("The seed is a whole number (or empty for a random one).");
  if (seed) body.seed = seed;
  return body;
}

// POST a GenerateRequest to the SSE endpoint; call onEvent(kind, data) per event.
async function stream(body, onEvent) {
  const response = await fetch("/v1/generate:stream", { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!response.ok) throw new Error(await failure(response));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) kind = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (data) onEvent(kind, JSON.parse(data));
    }
  }
}

const STAGES = { tokenize: "reading the prompt", clip_text: "reading the prompt", sample: "drawing",
                 decode: "decoding pixels", rerank: "ranking with CLIP" };

function onProgress(p) {
  const bar = $("bar");
  if (p.stage === "sample" && p.total) {
    bar.max = p.total;
    bar.value = p.completed || 0;
  }
  $("stage").textContent = `${STAGES[p.stage] || p.stage}` + (p.total > 1 ? ` (${p.completed || 0}/${p.total})` : "");
  if (p.previewPng) $("preview").src = "data:image/png;base64," + p.previewPng;
}

// One image of a result; `model` and `reranked` are the request's, so that Regenerate asks the
// model that drew it, whichever the selector shows now.
function card(image, rank, prompt, model = chosenModel(), reranked = !(info && info.rerank === false)) {
  const item = document.createElement("figure");
  item.className = "result";
  item.dataset.seed = image.seed;
  const img = document.createElement("img");
  img.src = "data:image/png;base64," + image.png;
  img.alt = `${prompt} (seed ${image.seed})`;
  img.width = image.width || 64;
  img.height = image.height || 64;
  const meta = document.createElement("figcaption");
  meta.className = "meta";
  meta.innerHTML = '<span class="rank"></span><span class="score"></span>';
  meta.querySelector(".rank").textContent = `#${rank}`;
  meta.querySelector(".score").textContent = !reranked ? "not reranked"
    : `CLIP ${(image.clipScore || 0).toFixed(3)}`;
  const seed = document.createElement("div");
  seed.className = "meta seed";
  seed.innerHTML = '<span class="label">seed</span> <span class="value"></span>';
  seed.querySelector(".value").textContent = image.seed;
  const status = document.createElement("div");
  status.className = "status";
  status.setAttribute("role", "status");
  const actions = document.createElement("div");
  actions.className = "actions";
  const again = document.createElement("button");
  again.type = "button";
  again.className = "small regenerate";
  again.textContent = "Regenerate";
  again.title = "Sample this image again from its seed";
  again.addEventListener("click", () => regenerate(item, again, prompt, image.seed, model));
  const keep = document.createElement("button");
  keep.type = "button";
  keep.className = "small";
  keep.textContent = "Use seed";
  keep.addEventListener("click", () => { $("seed").value = image.seed; $("num-candidates").value = 1; $("num-images").value = 1; });
  actions.append(again, keep);
  item.append(img, meta, seed, actions, status);
  return item;
}

// The notice belongs to the prompt it was about: editing the prompt or generating again clears it.
function showUnknown(words, prompt) {
  const box = $("unknown");
  box.hidden = !(words && words.length);
  box.dataset.prompt = box.hidden ? "" : prompt;
  if (!box.hidden) box.textContent = `The model never learned: ${words.join(", ")}. The images cannot follow those words.`;
}

async function run(body, onResult) {
  showError("");
  setState("running");
  button.disabled = true;
  $("progress").hidden = false;
  $("bar").value = 0;
  $("preview").removeAttribute("src");
  let result = null;
  try {
    await stream(body, (kind, data) => {
      if (kind === "progress") onProgress(data.progress);
      else if (kind === "result") result = data.result;
      else if (kind === "error") throw new Error(capitalize(data.message) + ".");
    });
    if (!result) throw new Error("The server closed the stream before the result arrived.");
    onResult(result);
    setState("done");
  } catch (e) {
    showError(e instanceof TypeError ? "Could not reach the server: " + e.message : e.message);
    setState("error");
  } finally {
    button.disabled = false;
    $("progress").hidden = true;
  }
}

// The card itself shows the work: dimmed with a spinner while it samples, then a line saying
// what came back (the same seed gives the same picture, so the image alone may not change).
async function regenerate(item, again, prompt, seed, model) {
  const status = item.querySelector(".status"), img = item.querySelector("img");
  item.classList.remove("fresh");
  item.classList.add("busy");
  item.setAttribute("aria-busy", "true");
  again.disabled = true;
  again.textContent = "Regenerating…";
  status.textContent = `Sampling again from seed ${seed}…`;
  let done = false;
  const body = { prompt, seed, numImages: 1, numCandidates: 1, previewEvery: 8 };
  if (model) body.model = model;
  await run(body, (result) => {
    const src = "data:image/png;base64," + result.images[0].png;
    const same = src === img.src;
    img.src = src;
    item.classList.add("regenerated");
    status.textContent = `Regenerated at ${new Date().toLocaleTimeString()}: ` +
      (same ? "the same image, as its seed promises." : "a new image.");
    done = true;
  });
  item.classList.remove("busy");
  item.removeAttribute("aria-busy");
  again.disabled = false;
  again.textContent = "Regenerate";
  if (done) {
    void item.offsetWidth;  // restart the highlight on a second regeneration
    item.classList.add("fresh");
  } else {
    status.textContent = "Could not regenerate: see the message above.";
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  let body;
  try { body = requestFromForm(); } catch (e) { showError(e.message); setState("error"); return; }
  showUnknown([]);
  run(body, (result) => {
    showUnknown(result.unknownWords, body.prompt);
    const list = $("results");
    // proto3 JSON leaves a false `reranked` out
    list.replaceChildren(...result.images.map((im, i) => card(im, i + 1, body.prompt, body.model || "",
                                                              result.reranked === true)));
  });
});

promptBox.addEventListener("input", () => {
  const box = $("unknown");
  if (!box.hidden && promptBox.value.trim() !== box.dataset.prompt) showUnknown([]);
});

promptBox.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
});

$("models").addEventListener("change", () => loadInfo());

loadModels();
