// The playground page. It calls the public API exactly as any client would and builds
// every element with createElement/textContent: model text and error details are never
// parsed as HTML (the CSP also requires Trusted Types, so an innerHTML sink would throw).
"use strict";

const KEY_STORAGE = "fashion-florence.api-key";
const BATCH_CHUNK = 16; // under the service's default FF_MAX_BATCH_ITEMS (32)
const MAX_ATTEMPTS = 4; // one try plus three queue_full retries
const MAX_RETRY_WAIT_S = 30;
const SWATCHES = new Set([
  "black", "white", "gray", "beige", "brown", "blue", "navy", "green", "yellow", "orange",
  "red", "pink", "purple", "metallic", "multi", "unknown",
]);

const $ = (id) => document.getElementById(id);

function el(tag, options = {}, children = []) {
  const node = document.createElement(tag);
  if (options.className) node.className = options.className;
  if (options.text !== undefined) node.textContent = String(options.text);
  for (const [name, value] of Object.entries(options.attrs || {})) {
    node.setAttribute(name, String(value));
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function setStatus(text) {
  $("status").textContent = text;
}

// --- API key: asked for only when the server answers 401, kept for this tab only ---

let pendingKey = null;

function askForKey(detail) {
  if (pendingKey) return pendingKey;
  const form = $("key-form");
  $("key-message").textContent = sessionStorage.getItem(KEY_STORAGE)
    ? "The API key was refused: " + detail
    : "This service needs an API key.";
  sessionStorage.removeItem(KEY_STORAGE);
  form.hidden = false;
  $("key-input").focus();
  pendingKey = new Promise((resolve) => {
    form.addEventListener("submit", function onSubmit(event) {
      event.preventDefault();
      sessionStorage.setItem(KEY_STORAGE, $("key-input").value.trim());
      $("key-input").value = "";
      form.hidden = true;
      form.removeEventListener("submit", onSubmit);
      pendingKey = null;
      resolve();
    });
  });
  return pendingKey;
}

// --- Calling the API ---

function retryAfterSeconds(response) {
  const header = response.headers.get("Retry-After") || "";
  let seconds = Number.parseFloat(header);
  if (!Number.isFinite(seconds)) {
    const date = Date.parse(header);
    seconds = Number.isNaN(date) ? 1 : (date - Date.now()) / 1000;
  }
  return Math.min(MAX_RETRY_WAIT_S, Math.max(1, seconds));
}

async function readProblem(response) {
  try {
    const body = await response.json();
    if (body && typeof body.code === "string") return body;
  } catch (_) {
    // not JSON: described below
  }
  return { code: "unexpected_response", status: response.status, detail: response.statusText };
}

// One call with the stored key; asks for a key on 401, and on 503 queue_full waits as long
// as Retry-After says before trying again. Resolves to {response, body, problem, elapsedMs}.
async function callApi(path, init, onWait) {
  const started = performance.now();
  for (let attempt = 1; ; attempt += 1) {
    const headers = new Headers(init.headers || {});
    const key = sessionStorage.getItem(KEY_STORAGE);
    if (key) headers.set("Authorization", "Bearer " + key);
    let response;
    try {
      response = await fetch(path, { ...init, headers });
    } catch (error) {
      const problem = { code: "network_error", status: 0, detail: String(error.message || error) };
      return { response: null, body: null, problem, elapsedMs: performance.now() - started };
    }
    if (response.ok) {
      const body = await response.json();
      return { response, body, problem: null, elapsedMs: performance.now() - started };
    }
    const problem = await readProblem(response);
    if (response.status === 401) {
      await askForKey(problem.detail || "");
      continue;
    }
    if (problem.code === "queue_full" && attempt < MAX_ATTEMPTS) {
      const wait = retryAfterSeconds(response);
      if (onWait) onWait(wait, attempt);
      await new Promise((resolve) => setTimeout(resolve, wait * 1000));
      continue;
    }
    return { response, body: null, problem, elapsedMs: performance.now() - started };
  }
}

// --- The model card in the header ---

async function loadModel() {
  const { body, problem } = await callApi("v1/model", {});
  if (problem) {
    $("model-name").textContent = "unavailable (" + problem.code + ")";
    return;
  }
  const profile = body.manifest && body.manifest.profile;
  $("model-name").textContent = body.name;
  $("model-revision").textContent = body.revision;
  $("model-profile").textContent = (profile && profile.name) || "fashion-florence";
  $("model-device").textContent = body.device + " · " + body.dtype;
}

// --- Cards ---

function percent(value) {
  return Math.round(value * 100) + "%";
}

function confidenceMeter(label, value) {
  if (typeof value !== "number") return el("span", { className: "conf-na", text: "n/a" });
  const meter = el("meter", {
    attrs: { min: 0, max: 1, low: 0.4, high: 0.7, optimum: 1, value, "aria-label": label },
  });
  return el("span", { className: "conf" }, [meter, el("span", { text: percent(value) })]);
}

function fieldRow(name, valueNode, confidence) {
  return el("div", { className: "field" }, [
    el("dt", { text: name }),
    el("dd", {}, [valueNode, confidenceMeter(name + " confidence", confidence)]),
  ]);
}

function colourValue(colour) {
  const swatch = el("span", { className: "swatch", attrs: { "aria-hidden": "true" } });
  if (SWATCHES.has(colour)) swatch.classList.add("swatch-" + colour);
  return el("span", { className: "value" }, [swatch, el("span", { text: colour })]);
}

function tagGroup(title, tags, confidences) {
  const chips = tags.map((tag, i) => {
    const value = confidences ? confidences[i] : null;
    const chip = el("li", { className: "chip" }, [el("span", { text: tag })]);
    if (typeof value === "number") {
      chip.dataset.confidence = String(value);
      chip.append(el("span", { className: "chip-conf", text: percent(value) }));
    }
    return chip;
  });
  const list = el("ul", { className: "chips", attrs: { "aria-label": title } }, chips);
  if (tags.length === 0) list.append(el("li", { className: "chip empty", text: "none" }));
  return el("div", { className: "tag-group" }, [
    el("h4", { text: title }), list, el("p", { className: "hidden-count" }),
  ]);
}

function newCard(title, preview) {
  const figure = el("figure", { className: "thumb" });
  if (preview.src) {
    figure.append(el("img", { attrs: { src: preview.src, alt: preview.alt } }));
  } else {
    // A URL's image is fetched by the service, never by the page (the CSP allows no
    // outside origin), so the card shows a labelled placeholder instead.
    figure.append(el("div", {
      className: "placeholder", text: "URL", attrs: { role: "img", "aria-label": preview.alt },
    }));
  }
  const body = el("div", { className: "card-body" }, [
    el("h3", { className: "card-title", text: title, attrs: { title } }),
    el("p", { className: "card-state", text: "waiting for the service…" }),
  ]);
  const card = el("article", { className: "card pending" }, [figure, body]);
  $("results").prepend(card);
  return card;
}

function setCardState(card, text) {
  card.querySelector(".card-state").textContent = text;
}

function requestIdCode(id) {
  return el("code", { className: "request-id", text: id, attrs: { title: id } });
}

function rawJson(value) {
  const details = el("details", { className: "raw" }, [
    el("summary", { text: "Raw JSON" }),
    el("pre", { text: JSON.stringify(value, null, 2) }),
  ]);
  return details;
}

function fillResult(card, result, meta, raw) {
  const { attributes: a, confidence: c } = result;
  const conf = c || {};
  card.classList.remove("pending");
  card.classList.add("ok");
  const body = card.querySelector(".card-body");
  body.querySelector(".card-state").remove();
  const category = el("span", { className: "value category", text: a.category });
  const material = el("span", { className: "value", text: a.material === null ? "none" : a.material });
  body.append(
    el("dl", { className: "fields" }, [
      fieldRow("category", category, conf.category),
      fieldRow("colour", colourValue(a.primary_color), conf.primary_color),
      fieldRow("material", material, conf.material),
    ]),
    tagGroup("style", a.style_tags, conf.style_tags),
    tagGroup("occasion", a.occasion_tags, conf.occasion_tags),
    el("p", { className: "meta", text: meta.timing }),
    el("p", { className: "meta" }, [
      el("span", { text: "request " }), requestIdCode(meta.requestId),
    ]),
    rawJson(raw),
  );
  applyTagFilter(card);
}

function fillError(card, problem, requestId, where) {
  card.classList.remove("pending");
  card.classList.add("error");
  const body = card.querySelector(".card-body");
  body.querySelector(".card-state").remove();
  const status = where || (problem.status ? "HTTP " + problem.status : "no answer");
  body.append(
    el("p", { className: "error-head" }, [
      el("code", { className: "error-code", text: problem.code }),
      el("span", { className: "error-status", text: status }),
    ]),
    el("p", { className: "error-detail", text: problem.detail || problem.title || "" }),
  );
  if (requestId) {
    body.append(el("p", { className: "meta" }, [
      el("span", { text: "request " }), requestIdCode(requestId),
    ]));
  }
  body.append(rawJson(problem));
}

// --- The min_tag_confidence slider: re-filters what is shown, sends nothing ---

function threshold() {
  return Number.parseFloat($("min-tag-confidence").value);
}

function applyTagFilter(root) {
  const min = threshold();
  for (const group of root.querySelectorAll(".tag-group")) {
    let hidden = 0;
    for (const chip of group.querySelectorAll(".chip[data-confidence]")) {
      chip.hidden = Number.parseFloat(chip.dataset.confidence) < min;
      if (chip.hidden) hidden += 1;
    }
    group.querySelector(".hidden-count").textContent =
      hidden ? hidden + " below " + min.toFixed(2) + " hidden" : "";
  }
}

// --- Sending photos and URLs ---

function waitNote(cards) {
  return (seconds, attempt) => {
    for (const card of cards) {
      setCardState(card, "service busy (queue_full): retry " + attempt + " in " + seconds + " s");
    }
  };
}

function requestIdOf(outcome) {
  if (outcome.body && outcome.body.request_id) return outcome.body.request_id;
  return outcome.response ? outcome.response.headers.get("X-Request-ID") : null;
}

async function extractOne(card, init) {
  const outcome = await callApi("v1/extract", init, waitNote([card]));
  if (outcome.problem) {
    fillError(card, outcome.problem, requestIdOf(outcome));
    return;
  }
  const t = outcome.body.timing_ms;
  const timing = `queue ${t.queue.toFixed(1)} ms · inference ${t.inference.toFixed(1)} ms · ` +
    `total ${t.total.toFixed(1)} ms`;
  fillResult(card, outcome.body, { timing, requestId: outcome.body.request_id }, outcome.body);
}

async function extractBatch(cards, files) {
  const form = new FormData();
  for (const file of files) form.append("image", file, file.name);
  const outcome = await callApi("v1/extract/batch", { method: "POST", body: form }, waitNote(cards));
  const requestId = requestIdOf(outcome);
  if (outcome.problem) {
    for (const card of cards) fillError(card, outcome.problem, requestId);
    return;
  }
  const timing = `batch of ${files.length} · round trip ${outcome.elapsedMs.toFixed(0)} ms`;
  outcome.body.results.forEach((item, i) => {
    if (item.error) fillError(cards[i], item.error, requestId, "batch item");
    else fillResult(cards[i], item, { timing, requestId }, item);
  });
}

function fileCard(file) {
  return newCard(file.name, { src: URL.createObjectURL(file), alt: "Uploaded photo " + file.name });
}

async function sendFiles(fileList) {
  const files = Array.from(fileList);
  if (files.length === 0) return;
  setStatus(`Sending ${files.length} photo${files.length > 1 ? "s" : ""}…`);
  const jobs = [];
  if (files.length === 1) {
    const form = new FormData();
    form.append("image", files[0], files[0].name);
    jobs.push(extractOne(fileCard(files[0]), { method: "POST", body: form }));
  } else {
    for (let i = 0; i < files.length; i += BATCH_CHUNK) {
      const chunk = files.slice(i, i + BATCH_CHUNK);
      jobs.push(extractBatch(chunk.map(fileCard), chunk));
    }
  }
  await Promise.all(jobs);
  setStatus(`Done: ${files.length} photo${files.length > 1 ? "s" : ""}.`);
}

async function sendUrl(url) {
  setStatus("Sending the URL…");
  const card = newCard(url, { alt: "Image at " + url + " (fetched by the service)" });
  await extractOne(card, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ url }),
  });
  setStatus("Done: 1 URL.");
}

// --- Wiring ---

function wire() {
  const input = $("file-input");
  input.addEventListener("change", () => {
    const files = input.files;
    sendFiles(files).finally(() => { input.value = ""; });
  });
  const zone = $("dropzone");
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) zone.classList.remove("dragging"); // left the window
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    if (event.dataTransfer) sendFiles(event.dataTransfer.files);
  });
  $("url-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const url = $("url-input").value.trim();
    $("url-input").value = "";
    if (url) sendUrl(url);
  });
  const slider = $("min-tag-confidence");
  slider.addEventListener("input", () => {
    $("min-tag-confidence-value").textContent = threshold().toFixed(2);
    applyTagFilter($("results"));
  });
  $("clear-results").addEventListener("click", () => {
    for (const img of $("results").querySelectorAll("img")) URL.revokeObjectURL(img.src);
    $("results").replaceChildren();
    setStatus("");
  });
  loadModel();
}

document.addEventListener("DOMContentLoaded", wire);
