// The search page of `sapindex serve`: no build step, no external resource, no library.
// Everything that comes from the index (paths, queries, messages) is inserted as text, never as HTML.
// With a token-protected service the token lives in this tab's sessionStorage and travels in the
// Authorization header of fetch() calls only; pictures are fetched the same way and shown as blob: URLs.
"use strict";

const TOKEN_KEY = "sapindex-token";
const THUMB_WIDTH = 360;
const $ = (id) => document.getElementById(id);
let hits = [];
let current = -1;  // the hit shown in the viewer
let blobs = [];  // object URLs of the shown pictures, released on the next search

function authHeaders(json) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  if (json) headers["Content-Type"] = "application/json";
  return headers;
}

async function call(url, options = {}) {
  const response = await fetch(url, {...options, headers: authHeaders(options.body !== undefined)});
  if (response.status === 401) {
    askToken();
    throw new Error("this service needs its access token");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

async function picture(url) {
  const response = await call(url);
  const src = URL.createObjectURL(await response.blob());
  blobs.push(src);
  return {src, note: response.headers.get("X-Sapindex-Note")};
}

function say(element, text, error = false) {
  element.textContent = text;
  element.classList.toggle("error", error);
}

function askToken() {
  const form = $("token-form");
  if (form.hidden) {
    form.hidden = false;
    $("token").focus();
  }
}

function query(params) {
  return new URLSearchParams(params).toString();
}

async function loadStats() {
  try {
    const s = await (await call("/stats")).json();
    const how = s.search === "two-stage"
      ? "two-stage search (candidates from compressed codes, the best rescored exactly)"
      : "exact search (every page scored)";
    say($("stats"), `${s.pages} pages, ${s.vectors} vectors, index version ${s.version}, ${how}`);
  } catch (e) {
    say($("stats"), "index statistics unavailable: " + e.message);
  }
}

function clearResults() {
  blobs.forEach((src) => URL.revokeObjectURL(src));
  blobs = [];
  hits = [];
  $("results").replaceChildren();
}

async function search(event) {
  if (event) event.preventDefault();
  const text = $("query").value.trim();
  if (!text) {
    say($("status"), "Type a question first.", true);
    return;
  }
  const k = Math.max(1, Math.min(100, parseInt($("k").value, 10) || 12));
  const prefix = $("prefix").value.trim();
  clearResults();
  say($("status"), "Searching…");
  try {
    const body = {query: text, k};
    if (prefix) body.path_prefix = prefix;
    const answer = await (await call("/search", {method: "POST", body: JSON.stringify(body)})).json();
    hits = answer.hits.map((h) => ({...h, query: text}));
    if (!hits.length) {
      say($("status"), prefix ? `No indexed page has a path starting with "${prefix}".` : "The index holds no pages yet.");
      return;
    }
    say($("status"), `${hits.length} pages, best first (${answer.search} search, ${Math.round(answer.took_ms)} ms). ` +
      "Arrow keys move, Enter opens a page, Esc closes it.");
    hits.forEach(addHit);
  } catch (e) {
    say($("status"), "Search failed: " + e.message, true);
  }
}

function addHit(hit, i) {
  const item = document.createElement("li");
  const card = document.createElement("button");
  card.type = "button";
  card.className = "hit";
  card.dataset.index = String(i);
  const img = document.createElement("img");
  img.alt = `Page ${hit.page} of ${hit.path}`;
  const meta = document.createElement("span");
  meta.className = "meta";
  const rank = document.createElement("span");
  rank.textContent = `#${hit.rank}`;
  const score = document.createElement("span");
  score.textContent = `score ${hit.score.toFixed(3)}`;
  meta.append(rank, score);
  const path = document.createElement("span");
  path.className = "path";
  path.textContent = `${hit.path} · page ${hit.page}`;
  const note = document.createElement("span");
  note.className = "note";
  card.append(img, meta, path, note);
  card.addEventListener("click", () => openViewer(i));
  item.append(card);
  $("results").append(item);
  picture("/page?" + query({path: hit.path, page: hit.page, width: THUMB_WIDTH}))
    .then(({src, note: why}) => {
      img.src = src;
      if (why) note.textContent = why;
    })
    .catch((e) => { note.textContent = "no picture: " + e.message; });
}

function cards() {
  return Array.from($("results").querySelectorAll(".hit"));
}

function columns() {
  return getComputedStyle($("results")).gridTemplateColumns.split(" ").length;
}

function moveFocus(event) {
  const all = cards();
  const at = all.indexOf(document.activeElement);
  if (at < 0) return;
  const step = {ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns()}[event.key];
  if (step === undefined) return;
  event.preventDefault();
  all[Math.max(0, Math.min(all.length - 1, at + step))].focus();
}

async function openViewer(i) {
  current = i;
  const hit = hits[i];
  const overlay = $("overlay");
  overlay.removeAttribute("src");
  overlay.alt = `Page ${hit.page} of ${hit.path}: the kept patches outlined, the query's matches filled`;
  say($("viewer-title"), `#${hit.rank}  ${hit.path}, page ${hit.page}  (score ${hit.score.toFixed(3)})`);
  say($("viewer-status"), "Drawing why this page matched…");
  $("viewer").hidden = false;
  $("close-viewer").focus();
  try {
    const {src} = await picture("/explain?" + query({query: hit.query, path: hit.path, page: hit.page}));
    if (current === i) {
      overlay.src = src;
      say($("viewer-status"), "");
    }
  } catch (e) {
    if (current === i) say($("viewer-status"), "No picture: " + e.message, true);
  }
}

function closeViewer() {
  if ($("viewer").hidden) return;
  $("viewer").hidden = true;
  const card = cards()[current];
  current = -1;
  if (card) card.focus();
}

async function openFile() {
  const hit = hits[current];
  if (!hit) return;
  const tab = window.open("about:blank", "_blank");  // opened on the click, so no popup blocker stops it
  try {
    const response = await call("/file?" + query({path: hit.path}));
    const src = URL.createObjectURL(await response.blob());
    blobs.push(src);
    if (tab) tab.location.href = `${src}#page=${hit.page}`;
  } catch (e) {
    if (tab) tab.close();
    say($("viewer-status"), "Cannot open the file: " + e.message, true);
  }
}

function useToken(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  $("token-form").hidden = true;
  loadStats();
  if ($("query").value.trim()) search();
  else $("query").focus();
}

document.addEventListener("DOMContentLoaded", () => {
  $("search-form").addEventListener("submit", search);
  $("token-form").addEventListener("submit", useToken);
  $("results").addEventListener("keydown", moveFocus);
  $("close-viewer").addEventListener("click", closeViewer);
  $("open-file").addEventListener("click", openFile);
  $("viewer").addEventListener("click", (event) => { if (event.target === $("viewer")) closeViewer(); });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeViewer(); });
  $("query").focus();
  loadStats();
});
