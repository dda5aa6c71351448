// ragops console: progressive enhancement only. Every page works as plain forms without this file.
// Text from the server is always set with textContent, never parsed as HTML.
"use strict";

(function () {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : "";
  const prefix = "/ui";

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ---- Playground: streamed answers, citations with the cited sentences marked, two configurations side by side.

  function parseFrames(buffer, onEvent) {
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of frame.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      onEvent(event, JSON.parse(data.join("\n")));
    }
    return buffer;
  }

  function citedSentences(answer) {
    // "Sentence. [1] Another. [2]": each sentence with the citation numbers that follow it.
    const found = [];
    const pattern = /([^\[\]]+?)\s*((?:\[\d+\]\s*)+)/g;
    let m;
    while ((m = pattern.exec(answer)) !== null) {
      const sentence = m[1].trim();
      for (const n of m[2].match(/\d+/g)) found.push([Number(n), sentence]);
    }
    return found;
  }

  function collapsed(text) {
    // The text without Markdown emphasis marks, each run of whitespace as one space, and where each
    // of its characters came from (the extractive answer quotes sentences as plain text).
    let out = "";
    const from = [];
    for (let i = 0; i < text.length; i++) {
      if ("*_`".includes(text[i])) continue;
      const space = /\s/.test(text[i]);
      if (space && (out.endsWith(" ") || out === "")) continue;
      out += space ? " " : text[i];
      from.push(i);
    }
    return [out, from];
  }

  function markChunk(node, text, sentences) {
    // Rebuild the chunk as text nodes with <mark> around each cited sentence found in it (whitespace aside).
    // A snippet is the chunk's first few hundred characters: a sentence cited from further on is shown
    // marked after it.
    const [flat, from] = collapsed(text);
    const spans = [];
    const beyond = [];
    for (const s of sentences) {
      const wanted = collapsed(s)[0].trim();
      const at = wanted ? flat.indexOf(wanted) : -1;
      if (at >= 0) spans.push([from[at], from[at + wanted.length - 1] + 1]);
      else if (wanted) beyond.push(s);
    }
    spans.sort((a, b) => a[0] - b[0]);
    node.textContent = "";
    let pos = 0;
    for (const [start, end] of spans) {
      if (start < pos) continue;
      node.append(document.createTextNode(text.slice(pos, start)), el("mark", "", text.slice(start, end)));
      pos = end;
    }
    node.append(document.createTextNode(text.slice(pos)));
    for (const s of beyond) node.append(document.createTextNode(" … "), el("mark", "", s));
  }

  function fact(dl, term, value) {
    dl.append(el("dt", "", term), el("dd", "", value));
  }

  function ms(x) { return x === null || x === undefined ? "-" : x.toFixed(1) + " ms"; }

  function piiText(pii) {
    const parts = [];
    for (const [stage, counts] of Object.entries(pii || {})) {
      for (const [kind, n] of Object.entries(counts)) parts.push(stage + ": " + kind + " " + n);
    }
    return parts.length ? parts.join(", ") : "none";
  }

  async function streamInto(pane, body) {
    const answer = pane.querySelector(".answer");
    const facts = pane.querySelector(".facts");
    const list = pane.querySelector(".citations");
    pane.querySelector(".label").textContent = (body.config || "") + (body.mode ? " · " + body.mode : "");
    const rate = pane.querySelector("form.rate");
    answer.textContent = "";
    facts.textContent = "";
    list.textContent = "";
    rate.hidden = true;
    rate.querySelector(".rated").textContent = "";
    pane.setAttribute("aria-busy", "true");
    const chunks = {};
    let text = "";
    const started = performance.now();
    const response = await fetch(prefix + "/api/ask", {
      method: "POST",
      headers: { "content-type": "application/json", "x-csrf-token": csrf, accept: "text/event-stream" },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    if (!response.ok) {
      let message = response.statusText;
      try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
      answer.textContent = "Error " + response.status + ": " + message;
      pane.removeAttribute("aria-busy");
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const onEvent = (event, data) => {
      if (event === "citations") {
        for (const c of data) {
          const item = el("li");
          item.value = c.n;
          item.append(el("p", "source", c.title + " · " + c.source + (c.section ? " · " + c.section : "") + " · score " + c.score.toFixed(3)));
          const chunk = el("p", "chunk", c.snippet);
          chunks[c.n] = [chunk, c.snippet];
          item.append(chunk);
          list.append(item);
        }
      } else if (event === "delta") {
        if (!text) fact(facts, "First character after", ms(performance.now() - started));
        text += data.text;
        answer.textContent = text;
      } else if (event === "usage") {
        fact(facts, "Tokens", "prompt " + data.prompt_tokens + ", completion " + data.completion_tokens + ", embedding " + data.embedding_tokens);
        fact(facts, "Cost", "$" + data.cost_usd);
      } else if (event === "done") {
        const v = data.versions;
        const t = data.timings;
        fact(facts, "Versions", "config " + v.config + ", prompt " + v.prompt + ", index " + v.index + ", model " + v.model);
        fact(facts, "Timings", "embed " + ms(t.embed_ms) + ", retrieve " + ms(t.retrieve_ms) + ", first token " + ms(t.ttft_ms) + ", generate " + ms(t.generate_ms) + ", total " + ms(t.total_ms));
        fact(facts, "PII filtered", piiText(data.pii));
        rate.elements.request_id.value = data.request_id;
        rate.hidden = false;
        const byChunk = {};
        for (const [n, s] of citedSentences(text)) (byChunk[n] = byChunk[n] || []).push(s);
        for (const [n, sentences] of Object.entries(byChunk)) {
          if (chunks[n]) markChunk(chunks[n][0], chunks[n][1], sentences);
        }
      } else if (event === "error") {
        answer.textContent = (text ? text + "\n" : "") + "Error: " + data.error.message;
      }
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer = parseFrames(buffer + decoder.decode(value, { stream: true }), onEvent);
    }
    pane.removeAttribute("aria-busy");
  }

  function setUpPlayground(form) {
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const f = new FormData(form);
      const base = { question: f.get("question"), collection: f.get("collection") || null };
      const a = { ...base, config: f.get("config") || null, mode: f.get("mode") || null };
      const paneA = document.getElementById("pane-a");
      const paneB = document.getElementById("pane-b");
      const runs = [streamInto(paneA, a)];
      if (f.get("config_b")) {
        paneB.hidden = false;
        runs.push(streamInto(paneB, { ...base, config: f.get("config_b"), mode: f.get("mode_b") || null }));
      } else {
        paneB.hidden = true;
      }
      const status = document.getElementById("status");
      status.textContent = "Answering…";
      await Promise.all(runs);
      status.textContent = "Done.";
    });
  }

  // Thumbs up or down on an answer: POST /ui/api/feedback, the page stays as it is.
  function setUpRating(form) {
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const body = new URLSearchParams(new FormData(form));
      body.set("rating", e.submitter ? e.submitter.value : "1");
      const shown = form.querySelector(".rated");
      const response = await fetch(form.action, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded", "x-csrf-token": csrf },
        body: body,
        credentials: "same-origin",
      });
      if (response.ok) {
        shown.textContent = "Thanks: rated " + (body.get("rating") === "1" ? "up" : "down") + ".";
      } else {
        let message = response.statusText;
        try { message = (await response.json()).error.message; } catch (err) { /* not JSON */ }
        shown.textContent = "Not saved: " + message;
      }
    });
  }

  // Any form that changes state asks first (rollouts: promote, abort).
  function setUpConfirm(form) {
    form.addEventListener("submit", (e) => {
      if (!window.confirm(form.dataset.confirm)) e.preventDefault();
    });
  }

  // ---- Index: confirmation before switching versions, drag and drop uploads, live job progress.

  function setUpActivate(form) {
    form.addEventListener("submit", (e) => {
      const select = form.querySelector("select");
      const which = select && select.value ? "collection " + select.value : "the default";
      if (!window.confirm(form.dataset.confirm.replace("{collection}", which))) e.preventDefault();
    });
  }

  function setUpDrop(zone) {
    const input = zone.querySelector("input[type=file]");
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      input.files = e.dataTransfer.files;
      zone.closest("form").requestSubmit();
    });
  }

  function jobRow(job) {
    const row = el("tr");
    row.dataset.job = job.id;
    for (const cls of ["id", "collection", "status", "progress", "rate", "eta", "errors"]) row.append(el("td", cls));
    row.children[0].textContent = job.id + " " + (job.params.mode || job.kind);
    row.children[1].textContent = job.params.collection || "";
    const bar = el("progress");
    row.children[3].append(bar, document.createTextNode(" "), el("span"));
    return row;
  }

  function updateJob(row, job) {
    row.querySelector(".status").textContent = job.status;
    const bar = row.querySelector("progress");
    bar.max = job.docs_total || 1;
    bar.value = job.status === "succeeded" ? bar.max : job.docs_done;
    row.querySelector(".progress span").textContent = job.docs_done + "/" + (job.docs_total === null ? "?" : job.docs_total);
    row.querySelector(".rate").textContent = job.docs_per_s === null ? "" : job.docs_per_s.toFixed(1);
    row.querySelector(".eta").textContent = job.eta_s === null ? "" : Math.round(job.eta_s) + " s";
    const errors = row.querySelector(".errors");
    errors.textContent = "";
    for (const e of job.errors) errors.append(el("div", "", e.source + ": " + e.reason));
    if (job.error) errors.append(el("div", "", job.error));
  }

  function watchJobs(table) {
    const body = table.querySelector("tbody");
    const status = document.getElementById("jobs-status");
    const live = () => [...body.querySelectorAll("td.status")].some((td) => ["queued", "running"].includes(td.textContent));
    async function poll() {
      const response = await fetch(prefix + "/index/jobs", { headers: { "x-csrf-token": csrf }, credentials: "same-origin" });
      if (!response.ok) { status.textContent = "Progress unavailable (" + response.status + ")."; return; }
      const { jobs } = await response.json();
      const none = body.querySelector("tr.none");
      if (none && jobs.length) none.remove();
      for (const job of jobs.slice().reverse()) {
        let row = body.querySelector('tr[data-job="' + job.id + '"]');
        if (!row) { row = jobRow(job); body.prepend(row); }
        updateJob(row, job);
      }
      const running = jobs.some((j) => j.status === "queued" || j.status === "running");
      status.textContent = running ? "Updating every second…" : "";
      if (running) setTimeout(poll, 1000);
    }
    if (live()) poll();
  }

  document.addEventListener("DOMContentLoaded", () => {
    const ask = document.getElementById("ask");
    if (ask) setUpPlayground(ask);
    document.querySelectorAll("form.activate").forEach(setUpActivate);
    document.querySelectorAll("form.confirm").forEach(setUpConfirm);
    document.querySelectorAll("form.rate").forEach(setUpRating);
    const drop = document.getElementById("drop");
    if (drop) setUpDrop(drop);
    const jobs = document.getElementById("jobs");
    if (jobs) watchJobs(jobs);
  });
})();
