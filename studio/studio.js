// Picture Book Studio: make a book in the browser with the service's own routes: a whole book through
// `POST /books` and its event stream, one page redrawn through `POST /generate`, characters from words through
// `POST /character`, the PDF from `GET /books/{id}/pdf` (or `POST /book/pdf` once pages were redrawn one by one).
// "Draft the book" draws it with `"quality": "draft"` (a few steps a page); "Final pages" draws the drafts again in
// full with the same seeds: `POST /books/{id}/final` when the drafts shown are that book's, else a new `POST /books`.
//
// The server keeps no session for the studio: a book is a job every replica answers for (its events resume on any
// replica from the last one seen), and a page redrawn alone carries the page before it as `prev_frame`.
//
// The API key travels in the Authorization header, which EventSource cannot send: the event stream is read with
// fetch() and its ReadableStream instead (the same Server-Sent Events, parsed here), and each page's picture is
// fetched with the key too.
"use strict";

const MAX_CAST = 4;
// The face adapter sees characters at 224 px: larger uploads only make every request heavier.
const CAST_MAX_SIDE = 512;
const KEY_STORAGE = "picturebook.apiKey";
// Relative to /studio/, so the studio keeps working when the service sits under a path prefix.
const GENERATE_URL = new URL("../generate", document.baseURI);
const PDF_URL = new URL("../book/pdf", document.baseURI);
const BOOKS_URL = new URL("../books", document.baseURI);
const STREAM_RETRIES = 5; // an event stream that breaks is opened again from its last event this many times
const CHARACTER_URL = new URL("../character", document.baseURI);

const state = {
  cast: [], // {id, name, b64, url, described?: {description, seed}}, left to right
  castVersion: 0, // bumped when the cast's pictures or order change: drawn pages go out of date
  pages: [], // see newPage()
  nextId: 1,
  busy: null, // the AbortController of the drawing or PDF task in progress
  book: null, // the book being drawn, or the last one: {id, url, title, quality}
  afterKey: null, // what to do again once an API key is given
  note: null, // what the running or last task says, before the count of pages drawn
  portrait: null, // the portrait drawn from a description and not kept yet: {b64, seed, description, name, version}
  drawingPortrait: false,
  drawingBook: false, // a book's event stream is being read: Stop cancels the book
};

const $ = (selector, root = document) => root.querySelector(selector);

class NeedKey extends Error {}

// ---------------------------------------------------------------- model

function newPage() {
  return {
    id: state.nextId++,
    text: "",
    prompt: "",
    seed: "", // as typed; empty means "keep the last seed, or a random one"
    img: null, // base64 PNG
    usedSeed: null,
    version: 0, // bumped at each drawing, so the next page knows its prev_frame changed
    drawnWith: null, // inputsOf() at the time of drawing
    drawnIn: null, // {book, text}: the book (id) that drew this picture and the text it was given, or null
    quality: null, // what the picture shown was drawn as: "final" or "draft"
    error: "",
    drawing: false,
    waiting: false, // in the book being drawn, after the page being drawn
  };
}

function promptOf(page) {
  return (page.prompt.trim() || page.text.trim());
}

// Everything a page's picture depends on; a drawn page whose inputs changed since is out of date.
function inputsOf(index) {
  const page = state.pages[index];
  const prev = state.pages[index - 1];
  return {
    prompt: promptOf(page),
    seed: page.seed.trim(),
    cast: state.castVersion,
    prev: prev ? `${prev.id}:${prev.version}` : "",
  };
}

const STALE_REASONS = {
  prev: "the page before it changed",
  cast: "the characters changed",
  prompt: "its text or prompt changed",
  seed: "its seed changed",
};

function staleReason(index) {
  const page = state.pages[index];
  if (!page.img) return null;
  const now = inputsOf(index);
  const changed = Object.keys(STALE_REASONS).find((key) => now[key] !== page.drawnWith[key]);
  return changed ? STALE_REASONS[changed] : null;
}

function isUpToDate(index) {
  return state.pages[index].img !== null && staleReason(index) === null;
}

function isDraft(page) {
  return page.img !== null && page.quality === "draft";
}

function canDraw(index) {
  return index === 0 || state.pages[index - 1].img !== null;
}

function regionsFor(count) {
  // Equal vertical strips, left to right, as fractions of the page.
  return Array.from({ length: count }, (_, i) => [i / count, 0, (i + 1) / count, 1]);
}

function randomSeed(other) {
  const value = new Uint32Array(1);
  do {
    crypto.getRandomValues(value);
  } while (value[0] === other);
  return value[0]; // 0 .. 2**32 - 1, the server's whole seed range
}

// The seed a page is drawn with: the one typed, else the one it was drawn with (a redraw after an edit keeps its
// look), else none and the server picks.
function chosenSeed(page) {
  if (page.seed.trim() !== "") return Number(page.seed);
  return page.usedSeed;
}

function bookTitle() {
  return $("#title").value.trim() || "My picture book";
}

function move(list, index, by) {
  const target = index + by;
  if (target < 0 || target >= list.length) return false;
  [list[index], list[target]] = [list[target], list[index]];
  return true;
}

// ---------------------------------------------------------------- talking to the server

function requestHeaders(json = true) {
  const headers = json ? { "Content-Type": "application/json" } : {};
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

async function postJson(url, body, signal) {
  return call(url, { method: "POST", headers: requestHeaders(), body: JSON.stringify(body), signal });
}

class Refused extends Error {
  constructor(message, answer, response) {
    super(message);
    this.answer = answer;
    this.status = response.status;
    this.retryAfter = response.headers.get("Retry-After");
  }
}

// A request with the key; a refusal becomes NeedKey (401) or a Refused that says why, with the server's answer.
async function call(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new Error(`The server could not be reached (${error.message}). Is it still running?`);
  }
  if (response.ok) return response;
  const answer = await response.json().catch(() => ({}));
  if (response.status === 401) throw new NeedKey(sessionStorage.getItem(KEY_STORAGE) ? "refused" : "missing");
  throw new Refused(describeFailure(response, answer), answer, response);
}

// The Server-Sent Events of a book, read with fetch() so that the Authorization header goes with them; a stream
// that breaks before its end event is opened again with Last-Event-ID, and goes on after the last event seen.
async function* bookEvents(url, signal) {
  let lastId = null;
  for (let broken = 0; ; ) {
    const headers = requestHeaders(false);
    if (lastId !== null) headers["Last-Event-ID"] = lastId;
    let reader;
    try {
      reader = (await call(url, { headers, signal })).body.pipeThrough(new TextDecoderStream()).getReader();
    } catch (error) {
      if (broken >= STREAM_RETRIES || error instanceof NeedKey || error instanceof Refused) throw error;
      if (error.name === "AbortError") throw error;
      broken += 1;
      await pause(1000 * broken, signal);
      continue;
    }
    let buffer = "";
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (error) {
        if (error.name === "AbortError") throw error;
        break; // the connection broke: open it again from the last event
      }
      if (chunk.done) break;
      buffer += chunk.value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (!event) continue; // a comment: the server saying it is still there
        if (event.id !== null) lastId = event.id;
        yield event;
        if (event.type === "end") return;
      }
    }
    if (broken >= STREAM_RETRIES) throw new Error("The book's event stream kept breaking: the server went away.");
    broken += 1;
  }
}

function parseEvent(block) {
  const event = { id: null, type: "message", data: [] };
  for (const line of block.split("\n")) {
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") event.id = value;
    else if (field === "event") event.type = value;
    else if (field === "data") event.data.push(value);
  }
  if (event.data.length === 0) return null;
  return { ...event, data: JSON.parse(event.data.join("\n")) };
}

function pause(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new DOMException("Stopped", "AbortError"));
    }, { once: true });
  });
}

// A picture of the server's, with the key, as base64 PNG (what the studio keeps: a redraw sends it as prev_frame).
// A busy server (429, 503) is asked again after its Retry-After, a few times: the page is drawn and kept there.
async function fetchPng(url, signal) {
  let response;
  for (let tries = 1; ; tries += 1) {
    try {
      response = await call(url, { headers: requestHeaders(false), signal });
      break;
    } catch (error) {
      const busy = error instanceof Refused && (error.status === 429 || error.status === 503);
      if (!busy || tries >= STREAM_RETRIES) throw error;
      const wait = /^\d+$/.test(error.retryAfter || "") ? Number(error.retryAfter) : 1;
      await pause(1000 * Math.min(wait, 10), signal);
    }
  }
  const blob = await response.blob();
  const dataUrl = await new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
  return dataUrl.slice(dataUrl.indexOf(",") + 1);
}

function describeFailure(response, answer) {
  const said = typeof answer.error === "string" ? answer.error : "";
  switch (response.status) {
    case 400:
    case 413:
    case 415:
      return `The server refused the request: ${fieldProblems(answer) || said || "bad request"}.`;
    case 404:
      return "This server does not offer that (404): it may run an older version of the service.";
    case 422:
      if (answer.kind === "content_refused") {
        return `The server refused ${fieldName(String(answer.field || "prompt").split(/[.[\]]+/))}: ${said}`;
      }
      return `The server could not draw this page: ${said}`;
    case 429:
    case 503:
      return `The server is busy${retryAfter(response)}. (${said || "overloaded"})`;
    case 504:
      return `Drawing took too long and was stopped (timeout). Try again. ${said}`;
    case 507:
      return `The server ran out of memory drawing this page. ${said}`;
    default:
      return `The server answered ${response.status}${said ? `: ${said}` : ""}.`;
  }
}

function retryAfter(response) {
  const value = response.headers.get("Retry-After");
  if (!value) return "; try again later";
  if (/^\d+$/.test(value)) return `; try again in ${value} second${value === "1" ? "" : "s"}`;
  return `; try again after ${value}`;
}

function fieldProblems(answer) {
  if (!Array.isArray(answer.detail)) return "";
  return answer.detail
    .filter((problem) => problem && problem.msg)
    .map((problem) => `${fieldName(problem.loc || [])}: ${problem.msg}`)
    .join("; ");
}

function fieldName(location) {
  const parts = location.filter((part) => part !== "body" && part !== "");
  const [field, index] = parts;
  if (field === "characters" && index !== undefined) {
    const character = state.cast[Number(index)];
    return `the picture of ${character ? character.name || `character ${Number(index) + 1}` : "a character"}`;
  }
  const names = {
    prompt: "the drawing prompt", seed: "the seed", prev_frame: "the page before", regions: "the characters' places",
    description: "the character's description", name: "the character's name", style: "the drawing style",
    text: "the page's text", title: "the title", first_frame: "the page before",
  };
  return names[field] || (field ? `the field ${parts.join(".")}` : "the request");
}

// ---------------------------------------------------------------- drawing

async function drawPage(index, signal, { newSeed = false } = {}) {
  const page = state.pages[index];
  const prev = state.pages[index - 1];
  const inputs = inputsOf(index);
  page.error = "";
  if (!inputs.prompt) {
    page.error = "Write the text or a drawing prompt for this page first.";
    return false;
  }
  const body = { prompt: inputs.prompt, characters: state.cast.map((character) => character.b64) };
  const quality = qualityAt(index);
  if (quality === "draft") body.quality = quality;
  if (prev) body.prev_frame = prev.img;
  if (state.cast.length >= 2) body.regions = regionsFor(state.cast.length);
  const seed = newSeed ? randomSeed(page.usedSeed) : chosenSeed(page);
  if (seed !== null) body.seed = seed;

  page.drawing = true;
  renderBook();
  try {
    const answer = await (await postJson(GENERATE_URL, body, signal)).json();
    Object.assign(page, { img: answer.img, usedSeed: answer.seed, drawnWith: inputs, drawnIn: null, quality });
    page.version += 1;
    return true;
  } catch (error) {
    if (error instanceof NeedKey) page.error = "Waiting for the API key (asked above).";
    else if (error.name === "AbortError") page.error = "Stopped before this page was drawn.";
    else page.error = error.message;
    if (error instanceof NeedKey || error.name === "AbortError") throw error;
    return false;
  } finally {
    page.drawing = false;
    renderBook();
  }
}

// The quality a page is drawn again in when nothing says otherwise: the one its picture has, else the page
// before's (a draft book stays a draft), else final.
function qualityAt(index) {
  const page = state.pages[index];
  const prev = state.pages[index - 1];
  return page.quality || (prev && prev.quality) || "final";
}

// Draws, as one book (`POST /books`, in `quality`), every page from the first one at or after `from` that is not
// drawn or out of date (or, with `replaceDrafts`, a draft), to the end of the book (redrawing a page puts the next
// one out of date): the page before it, if any, goes as the book's `first_frame`. Each page is shown as its event
// arrives. Final pages for exactly the draft book shown are asked of the server as that book's
// `POST /books/{id}/final`: the same stored request, seeds and all.
async function drawFrom(from, signal, { quality = "final", replaceDrafts = false } = {}) {
  const redraw = (page, i) => !isUpToDate(i) || (replaceDrafts && page.quality !== "final");
  const first = state.pages.findIndex((page, i) => i >= from && redraw(page, i));
  if (first < 0) return setProgressText(null);
  const run = state.pages.slice(first);
  const total = state.pages.length;
  for (const page of run) page.error = "";
  const empty = run.findIndex((page) => !promptOf(page));
  if (empty >= 0) {
    run[empty].error = "Write the text or a drawing prompt for this page first.";
    setProgressText(`Stopped at page ${first + empty + 1} of ${total}: see the message on that page.`);
    return;
  }
  const sent = run.map((page) => ({ text: page.text.trim() || promptOf(page), seed: chosenSeed(page) }));
  const body = {
    title: bookTitle(),
    characters: state.cast.map((character) => character.b64),
    pages: run.map((page, i) => {
      const wanted = { text: sent[i].text };
      if (page.prompt.trim()) wanted.prompt = page.prompt.trim();
      if (sent[i].seed !== null) wanted.seed = sent[i].seed;
      return wanted;
    }),
  };
  if (first > 0) body.first_frame = state.pages[first - 1].img;
  if (state.cast.length >= 2) body.regions = regionsFor(state.cast.length);
  if (quality === "draft") body.quality = quality;
  const shown = bookShown();
  const makeFinal = replaceDrafts && first === 0 && shown !== null && shown.quality === "draft";
  const drawing = quality === "draft" ? "Drafting" : "Drawing";
  const inputs = run.map((page) => ({ prompt: promptOf(page), seed: page.seed.trim(), cast: state.castVersion }));
  const before = first > 0 ? state.pages[first - 1] : null;

  run[0].drawing = true;
  for (const page of run.slice(1)) page.waiting = true;
  setProgressText(`${drawing} page ${first + 1} of ${total}…`);
  renderBook();
  let book;
  try {
    const submitted = makeFinal ? postJson(`${shown.url}/final`, {}, signal) : postJson(BOOKS_URL, body, signal);
    const answer = await (await submitted).json();
    book = { id: answer.id, url: new URL(`..${answer.url}`, document.baseURI), title: body.title, quality };
  } catch (error) {
    run[0].drawing = false;
    for (const page of run) page.waiting = false;
    if (error instanceof NeedKey || error.name === "AbortError") {
      run[0].error = error instanceof NeedKey ? "Waiting for the API key (asked above)." : "";
      throw error;
    }
    const at = showRefusal(error, run);
    setProgressText(`Stopped at page ${first + at + 1} of ${total}: see the message on that page.`);
    return;
  }
  state.book = book;
  state.drawingBook = true;
  renderControls();
  let index = 0; // the next page of the run to arrive
  try {
    for await (const event of bookEvents(`${book.url}/events`, signal)) {
      if (event.type === "page") {
        const page = run[event.data.index];
        const img = await fetchPng(new URL(`..${event.data.url}`, document.baseURI), signal);
        const prev = event.data.index > 0 ? run[event.data.index - 1] : before;
        const drawnWith = { ...inputs[event.data.index], prev: prev ? `${prev.id}:${prev.version}` : "" };
        Object.assign(page, {
          img, usedSeed: event.data.seed, drawnWith, quality, drawing: false, waiting: false, error: "",
        });
        page.drawnIn = { book: book.id, index: first + event.data.index, text: sent[event.data.index].text };
        page.version += 1;
        index = event.data.index + 1;
        if (index < run.length) {
          Object.assign(run[index], { drawing: true, waiting: false });
          setProgressText(`${drawing} page ${first + index + 1} of ${total}…`);
        }
        renderBook();
      } else if (event.type === "end") {
        if (index < run.length) run[index].drawing = false;
        const { status, failure } = event.data;
        if (status === "completed") setProgressText(null);
        else if (status === "canceled") setProgressText("The book was canceled.");
        else {
          const at = failure && failure.index >= 0 ? failure.index : index;
          const page = run[Math.min(at, run.length - 1)];
          page.error = failure ? describeKind(failure.kind, failure.error) : "The book failed.";
          setProgressText(`Stopped at page ${first + at + 1} of ${total}: see the message on that page.`);
        }
        return;
      }
    }
  } catch (error) {
    if (index < run.length) run[index].drawing = false;
    if (error.name === "AbortError") {
      cancelBook(book);
      setProgressText("Canceled.");
      return;
    }
    if (error instanceof NeedKey) throw error; // asked for, then the book is submitted again
    run[Math.min(index, run.length - 1)].error = error.message;
    setProgressText(`Stopped at page ${first + index + 1} of ${total}: see the message on that page.`);
  } finally {
    for (const page of run) page.waiting = false;
    state.drawingBook = false;
    renderBook();
  }
}

// The Cancel button: the book is deleted on the server (its page being drawn is dropped), not only left unread.
function cancelBook(book) {
  fetch(book.url, { method: "DELETE", headers: requestHeaders(false), keepalive: true }).catch(() => {});
}

// A refused book: each problem beside the page it names (`pages[2].text` is the third page of the run), the rest
// beside the first page. Returns the run's page that shows it first.
function showRefusal(error, run) {
  const answer = error instanceof Refused ? error.answer : {};
  const placed = new Map();
  const place = (at, message) => {
    const index = Number.isInteger(at) && at >= 0 && at < run.length ? at : 0;
    placed.set(index, placed.has(index) ? `${placed.get(index)} ${message}` : message);
  };
  const pageOf = (location) => {
    const parts = location.filter((part) => part !== "body" && part !== "");
    return parts[0] === "pages" && parts.length >= 2 ? [Number(parts[1]), parts.slice(2)] : [null, parts];
  };
  if (Array.isArray(answer.detail) && answer.detail.some((problem) => problem && problem.msg)) {
    for (const problem of answer.detail.filter((p) => p && p.msg)) {
      const [at, rest] = pageOf(problem.loc || []);
      place(at, `The server refused the request: ${fieldName(rest)}: ${problem.msg}.`);
    }
  } else if (answer.kind === "content_refused") {
    const [at, rest] = pageOf(String(answer.field || "").split(/[.[\]]+/));
    place(at, `The server refused ${fieldName(rest)}: ${answer.error || "refused"}`);
  } else place(0, error.message);
  for (const [index, message] of placed) run[index].error = message;
  return Math.min(...placed.keys());
}

// A page that failed while its book was drawn, in the words the studio uses for a refused /generate.
function describeKind(kind, said) {
  switch (kind) {
    case "out_of_memory":
      return `The server ran out of memory drawing this page. ${said}`;
    case "timeout":
      return `Drawing took too long and was stopped (timeout). Try again. ${said}`;
    case "overloaded":
      return `The server is busy; try again later. (${said})`;
    case "content_refused":
      return `The server refused this page: ${said}`;
    default:
      return `The server could not draw this page: ${said}`;
  }
}

async function redrawWithNewSeed(index, signal) {
  setProgressText(`Drawing page ${index + 1} of ${state.pages.length} with a new seed…`);
  const drawn = await drawPage(index, signal, { newSeed: true });
  setProgressText(drawn ? null : `Page ${index + 1} was not drawn: see the message on that page.`);
}

async function downloadPdf(signal) {
  $("#pdf-message").textContent = "Making the PDF…";
  $("#pdf-message").classList.remove("error");
  const pages = state.pages.map((page) => ({ img: page.img, text: page.text }));
  const book = bookShown();
  try {
    const response = book
      ? await call(`${book.url}/pdf`, { headers: requestHeaders(false), signal })
      : await postJson(PDF_URL, { title: bookTitle(), pages }, signal);
    saveBlob(await response.blob(), `${fileStem(bookTitle())}.pdf`);
    $("#pdf-message").textContent = "PDF downloaded.";
  } catch (error) {
    if (error instanceof NeedKey) $("#pdf-message").textContent = "Waiting for the API key (asked above).";
    else if (error.name === "AbortError") $("#pdf-message").textContent = "Stopped.";
    else {
      $("#pdf-message").textContent = `No PDF: ${error.message}`;
      $("#pdf-message").classList.add("error");
    }
    if (error instanceof NeedKey || error.name === "AbortError") throw error;
  }
}

// The book on the server whose pages are exactly the ones shown (same order, texts and title), or null: then its
// PDF is the server's `GET /books/{id}/pdf`; a page redrawn alone or edited since makes the studio send its own
// pages to `POST /book/pdf` instead.
function bookShown() {
  const book = state.book;
  if (!book || book.title !== bookTitle()) return null;
  const same = state.pages.every((page, i) => {
    const drawn = page.drawnIn;
    return isUpToDate(i) && drawn && drawn.book === book.id && drawn.index === i && drawn.text === page.text;
  });
  return same ? book : null;
}

function fileStem(title) {
  return title.replace(/[\\/:*?"<>|]+/g, " ").trim().slice(0, 80) || "picture-book";
}

function saveBlob(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
}

// One drawing or PDF task at a time; a missing or refused key pauses it until the key is given.
async function runTask(task) {
  if (state.busy) return;
  const controller = new AbortController();
  state.busy = controller;
  state.note = null;
  renderControls();
  try {
    await task(controller.signal);
  } catch (error) {
    if (error instanceof NeedKey) {
      state.note = "Waiting for the API key.";
      askForKey(error.message, () => runTask(task));
    } else if (error.name === "AbortError") state.note = "Stopped.";
    else throw error;
  } finally {
    state.busy = null;
    renderBook();
  }
}

// ---------------------------------------------------------------- API key

function askForKey(reason, retry) {
  state.afterKey = retry;
  $("#key-reason").textContent =
    reason === "refused"
      ? "The server did not accept that API key. Check it and enter it again."
      : "This server needs an API key. Enter it once: the studio keeps it for this tab.";
  $("#key-form").hidden = false;
  $("#key-input").value = "";
  $("#key-input").focus();
}

function onKeySubmit(event) {
  event.preventDefault();
  const key = $("#key-input").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORAGE, key);
  $("#key-form").hidden = true;
  const retry = state.afterKey;
  state.afterKey = null;
  renderControls();
  if (retry) retry();
}

function closeKeyForm() {
  $("#key-form").hidden = true;
  state.afterKey = null;
  $("#draw").focus();
}

// ---------------------------------------------------------------- characters

async function readPicture(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    throw new Error(`${file.name} is not a picture this browser can read.`);
  }
  const scale = Math.min(1, CAST_MAX_SIDE / Math.max(bitmap.width, bitmap.height));
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(bitmap.width * scale));
  canvas.height = Math.max(1, Math.round(bitmap.height * scale));
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  return canvas.toDataURL("image/png"); // PNG keeps transparent cut-outs transparent
}

async function onCastFiles(event) {
  const input = event.target;
  const files = Array.from(input.files);
  const room = MAX_CAST - state.cast.length;
  const problems = files.length > room ? [`Only ${MAX_CAST} characters fit: ${files.length - room} left out.`] : [];
  for (const file of files.slice(0, room)) {
    try {
      const url = await readPicture(file);
      const name = file.name.replace(/\.[^.]+$/, "");
      state.cast.push({ id: state.nextId++, name, url, b64: url.slice(url.indexOf(",") + 1) });
      state.castVersion += 1;
    } catch (error) {
      problems.push(error.message);
    }
  }
  input.value = "";
  $("#cast-message").textContent = problems.join(" ");
  $("#cast-message").classList.toggle("error", problems.length > 0);
  renderCast();
  renderBook();
}

function onCastClick(event) {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const item = button.closest("li");
  const index = state.cast.findIndex((character) => String(character.id) === item.dataset.id);
  const action = button.dataset.action;
  if (action === "remove") state.cast.splice(index, 1);
  else if (!move(state.cast, index, action === "left" ? -1 : 1)) return;
  state.castVersion += 1;
  renderCast();
  refocus("#cast-list", item.dataset.id, action, ["remove", "left", "right"], "#cast-file");
  renderBook();
}

function onCastInput(event) {
  const item = event.target.closest("li");
  const character = state.cast.find((c) => String(c.id) === item.dataset.id);
  character.name = event.target.value;
  renderCast(); // names appear in the buttons' labels and in the places
}

// ---------------------------------------------------------------- characters from words

// "Draw" keeps the seed of the portrait shown (an edited description is redrawn with the same look), "Try
// another" picks a new one; the first "Draw" lets the server pick.
async function drawPortrait(signal, { another = false } = {}) {
  const description = $("#describe-text").value.trim();
  const name = $("#describe-name").value.trim();
  setDescribeMessage("");
  if (!description) {
    setDescribeMessage("Describe the character first: who they are and what they look like.", true);
    $("#describe-text").focus();
    return;
  }
  const body = { description };
  if (name) body.name = name;
  const shown = state.portrait;
  if (shown) body.seed = another ? randomSeed(shown.seed) : shown.seed;
  state.drawingPortrait = true;
  renderPortrait();
  try {
    const answer = await (await postJson(CHARACTER_URL, body, signal)).json();
    const version = shown ? shown.version + 1 : 1;
    state.portrait = { b64: answer.img, seed: answer.seed, description, name, version };
  } catch (error) {
    if (error instanceof NeedKey) setDescribeMessage("Waiting for the API key (asked below).");
    else if (error.name === "AbortError") setDescribeMessage("Stopped before the portrait was drawn.");
    else setDescribeMessage(error.message, true);
    if (error instanceof NeedKey || error.name === "AbortError") throw error;
  } finally {
    state.drawingPortrait = false;
    renderPortrait();
  }
}

// A kept portrait joins the cast as an uploaded picture does: through the same reading and resizing.
async function keepPortrait() {
  const portrait = state.portrait;
  if (!portrait || state.cast.length >= MAX_CAST) return;
  const bytes = Uint8Array.from(atob(portrait.b64), (c) => c.charCodeAt(0));
  const url = await readPicture(new File([bytes], "portrait.png", { type: "image/png" }));
  const { description, seed } = portrait;
  const b64 = url.slice(url.indexOf(",") + 1);
  state.cast.push({ id: state.nextId++, name: portrait.name, url, b64, described: { description, seed } });
  state.castVersion += 1;
  state.portrait = null;
  $("#describe-name").value = "";
  $("#describe-text").value = "";
  setDescribeMessage(`${portrait.name || "The character"} joined the cast.`);
  renderCast();
  renderBook();
  $("#describe-name").focus();
}

function setDescribeMessage(text, isError = false) {
  $("#describe-message").textContent = text;
  $("#describe-message").classList.toggle("error", isError);
}

function renderPortrait() {
  const portrait = state.portrait;
  const picture = $("#portrait");
  if (portrait && picture.dataset.version !== `${portrait.version}`) {
    picture.src = `data:image/png;base64,${portrait.b64}`;
    picture.dataset.version = `${portrait.version}`;
  }
  picture.hidden = !portrait;
  picture.alt = portrait ? `Portrait of ${portrait.name || "the character"}: ${portrait.description}` : "";
  $("#describe").classList.toggle("drawing", state.drawingPortrait);
  $("#describe").classList.toggle("has-portrait", portrait !== null);
  $("#describe").setAttribute("aria-busy", String(state.drawingPortrait));
  $("#portrait-note").textContent = state.drawingPortrait ? "Drawing…" : portrait ? "" : "No portrait yet";
  $("#portrait-seed").textContent = portrait ? `Seed ${portrait.seed}` : "";
  const busy = state.busy !== null;
  const full = state.cast.length >= MAX_CAST;
  $("#describe-draw").disabled = busy || full;
  $("#describe-again").hidden = $("#describe-keep").hidden = !portrait;
  $("#describe-again").disabled = busy || full;
  $("#describe-keep").disabled = busy || full;
}

// ---------------------------------------------------------------- pages

function addPage() {
  state.pages.push(newPage());
  renderPages();
  renderBook();
  $(`#page-list li:last-child textarea`).focus();
}

function onPageListClick(event) {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const item = button.closest("li");
  const index = state.pages.findIndex((page) => String(page.id) === item.dataset.id);
  const action = button.dataset.action;
  if (action === "remove") {
    if (state.pages.length === 1) return;
    state.pages.splice(index, 1);
  } else if (!move(state.pages, index, action === "up" ? -1 : 1)) return;
  renderPages();
  refocus("#page-list", item.dataset.id, action, ["remove", "up", "down"], "#add-page");
  renderBook();
}

function onPageListInput(event) {
  const field = event.target.dataset.field;
  if (!field) return;
  const item = event.target.closest("li");
  const page = state.pages.find((p) => String(p.id) === item.dataset.id);
  page[field] = event.target.value;
  renderBook();
}

// After a list is redrawn, keep the keyboard where it was: on the same button of the same item, or the nearest
// one that still makes sense.
function refocus(listSelector, id, action, order, fallback) {
  const item = $(`${listSelector} li[data-id="${id}"]`);
  const candidates = item ? [action, ...order].map((a) => $(`button[data-action="${a}"]`, item)) : [];
  const target = candidates.find((button) => button && !button.disabled) || $(fallback);
  target.focus();
}

// ---------------------------------------------------------------- rendering

function fromTemplate(id) {
  return document.getElementById(id).content.firstElementChild.cloneNode(true);
}

// Keyed update: existing elements stay (focus and pictures with them); only missing ones are made or moved.
function syncList(list, items, make, update) {
  const wanted = new Set(items.map((item) => String(item.id)));
  for (const element of Array.from(list.children)) {
    if (!wanted.has(element.dataset.id)) element.remove();
  }
  items.forEach((item, index) => {
    let element = $(`:scope > li[data-id="${item.id}"]`, list);
    if (!element) {
      element = make(item);
      element.dataset.id = String(item.id);
    }
    if (list.children[index] !== element) list.insertBefore(element, list.children[index] || null);
    update(element, item, index);
  });
}

function setHiddenLabel(button, text) {
  $(".visually-hidden", button).textContent = text;
}

function placeName(index, count) {
  if (count === 1) return "Alone on the page";
  if (index === 0) return "Left";
  if (index === count - 1) return "Right";
  return `Middle (${index + 1} of ${count} from the left)`;
}

function renderCast() {
  const count = state.cast.length;
  syncList($("#cast-list"), state.cast, (character) => {
    const item = fromTemplate("cast-item");
    $(".thumb", item).src = character.url;
    $(".cast-name", item).value = character.name;
    return item;
  }, (item, character, index) => {
    const who = character.name.trim() || `character ${index + 1}`;
    $(".thumb", item).alt = `Picture of ${who}`;
    $(".place", item).textContent = placeName(index, count);
    $(".cast-name", item).setAttribute("aria-label", `Name of character ${index + 1}`);
    const [left, right, remove] = item.querySelectorAll("button");
    setHiddenLabel(left, ` Move ${who} left`);
    setHiddenLabel(right, ` Move ${who} right`);
    setHiddenLabel(remove, ` ${who}`);
    left.disabled = index === 0;
    right.disabled = index === count - 1;
  });
  $("#cast-file").disabled = count >= MAX_CAST;
  $("#cast-full").hidden = count < MAX_CAST;
}

function renderPages() {
  const count = state.pages.length;
  syncList($("#page-list"), state.pages, (page) => {
    const editor = fromTemplate("page-editor");
    for (const input of editor.querySelectorAll("[data-field]")) input.value = page[input.dataset.field];
    return editor;
  }, (editor, page, index) => {
    const n = index + 1;
    $(".editor-number", editor).textContent = `Page ${n}`;
    const [up, down, remove] = editor.querySelectorAll("button");
    setHiddenLabel(up, ` Move page ${n} up`);
    setHiddenLabel(down, ` Move page ${n} down`);
    setHiddenLabel(remove, ` page ${n}`);
    up.disabled = index === 0;
    down.disabled = index === count - 1;
    remove.disabled = count === 1;
  });
}

function renderBook() {
  $("#book-title").textContent = bookTitle();
  syncList($("#book"), state.pages, () => fromTemplate("page-card"), renderCard);
  renderControls();
  showProgress();
}

function renderCard(card, page, index) {
  const n = index + 1;
  const busy = state.busy !== null;
  const picture = $(".picture", card);
  if (page.img && picture.dataset.version !== `${page.version}`) {
    picture.src = `data:image/png;base64,${page.img}`;
    picture.dataset.version = `${page.version}`;
  }
  picture.hidden = !page.img;
  picture.alt = `Picture of page ${n}`;
  card.classList.toggle("drawing", page.drawing);
  card.setAttribute("aria-busy", String(page.drawing));
  const waiting = page.waiting ? "Waiting for its turn" : "Not drawn yet";
  $(".slot-note", card).textContent = page.drawing ? "Drawing…" : page.img ? "" : waiting;
  $(".card-number", card).textContent = `Page ${n}`;
  $(".card-seed", card).textContent = page.usedSeed !== null && page.img ? `· seed ${page.usedSeed}` : "";
  $(".card-quality", card).textContent = isDraft(page) ? "· draft" : "";
  card.classList.toggle("draft", isDraft(page));
  $(".card-text", card).textContent = page.text;

  const reason = staleReason(index);
  card.classList.toggle("stale", reason !== null);
  $(".card-stale", card).textContent = reason ? `Out of date: ${reason}.` : "";
  $(".card-error", card).textContent = page.error;

  const [redraw, fromHere] = card.querySelectorAll("button");
  setHiddenLabel(redraw, ` for page ${n}`);
  redraw.hidden = !page.img;
  redraw.disabled = busy || !canDraw(index);
  fromHere.firstChild.nodeValue = page.img ? "Redraw from here" : "Draw from here";
  setHiddenLabel(fromHere, ` (page ${n} to the end)`);
  fromHere.hidden = isUpToDate(index) || !canDraw(index) || (!page.img && !page.error);
  fromHere.disabled = busy;

  const png = $("a[data-action=png]", card);
  setHiddenLabel(png, ` of page ${n}`);
  png.hidden = !page.img;
  if (page.img) {
    png.href = picture.src;
    png.download = `${fileStem(bookTitle())} - page ${n}.png`;
  }
}

function renderControls() {
  const busy = state.busy !== null;
  const allDrawn = state.pages.every((page) => page.img);
  $("#draw").disabled = busy;
  $("#draw").textContent = state.pages.some((page) => page.img) && !allDrawn ? "Draw the rest" : "Draw the book";
  // With drafts shown, "Final pages" takes the place of "Draw the book" (which would leave drawn drafts as they are).
  const drafted = state.pages.some(isDraft);
  $("#draw").hidden = drafted;
  $("#final").hidden = !drafted;
  $("#final").disabled = busy;
  $("#draft").disabled = busy;
  $("#stop").disabled = !busy;
  $("#stop").textContent = state.drawingBook ? "Cancel the book" : "Stop";
  $("#download-pdf").disabled = busy || !allDrawn;
  $("#forget-key").hidden = !sessionStorage.getItem(KEY_STORAGE);
  renderPortrait();
  const progress = $("#progress");
  progress.max = state.pages.length;
  progress.value = state.pages.filter((_, i) => isUpToDate(i)).length;
}

function progressSummary() {
  const total = state.pages.length;
  const upToDate = state.pages.filter((_, i) => isUpToDate(i)).length;
  const outOfDate = state.pages.filter((page, i) => page.img && !isUpToDate(i)).length;
  if (upToDate === 0 && outOfDate === 0) return "Nothing drawn yet.";
  const drafts = state.pages.filter(isDraft).length;
  const notes = [];
  if (outOfDate) notes.push(`${outOfDate} out of date`);
  if (drafts) notes.push(`${drafts} draft${drafts === 1 ? "" : "s"}`);
  return `${upToDate} of ${total} pages drawn${notes.length ? ` (${notes.join(", ")})` : ""}.`;
}

function setProgressText(note) {
  state.note = note;
  showProgress();
}

function showProgress() {
  const text = state.note ? `${state.note} ${progressSummary()}` : progressSummary();
  const element = $("#progress-text");
  if (element.textContent !== text) element.textContent = text; // unchanged text is not announced again
}

// ---------------------------------------------------------------- wiring

function onBookClick(event) {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const index = state.pages.findIndex((page) => String(page.id) === button.closest("li").dataset.id);
  if (button.dataset.action === "redraw") runTask((signal) => redrawWithNewSeed(index, signal));
  else runTask((signal) => drawFrom(index, signal, { quality: qualityAt(index) }));
}

function start() {
  $("#title").addEventListener("input", renderBook);
  $("#cast-file").addEventListener("change", onCastFiles);
  $("#cast-list").addEventListener("click", onCastClick);
  $("#cast-list").addEventListener("input", onCastInput);
  $("#add-page").addEventListener("click", addPage);
  $("#page-list").addEventListener("click", onPageListClick);
  $("#page-list").addEventListener("input", onPageListInput);
  $("#book").addEventListener("click", onBookClick);
  $("#describe-draw").addEventListener("click", () => runTask((signal) => drawPortrait(signal)));
  $("#describe-again").addEventListener("click", () => runTask((signal) => drawPortrait(signal, { another: true })));
  $("#describe-keep").addEventListener("click", () => {
    keepPortrait().catch((error) => setDescribeMessage(error.message, true));
  });
  $("#draw").addEventListener("click", () => runTask((signal) => drawFrom(0, signal)));
  $("#draft").addEventListener("click", () => runTask((signal) => drawFrom(0, signal, { quality: "draft" })));
  $("#final").addEventListener("click", () => runTask((signal) => drawFrom(0, signal, { replaceDrafts: true })));
  $("#stop").addEventListener("click", () => state.busy && state.busy.abort());
  $("#download-pdf").addEventListener("click", () => runTask(downloadPdf));
  $("#key-form").addEventListener("submit", onKeySubmit);
  $("#key-cancel").addEventListener("click", closeKeyForm);
  $("#forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    renderControls();
    $("#draw").focus();
  });
  state.pages.push(newPage());
  renderCast();
  renderPages();
  renderBook();
}

start();
