// outdial console: live views over server-sent events, and the lead upload with drag-and-drop and a
// progress bar. Served from this origin only (the Content-Security-Policy allows no inline script).
"use strict";

function startLive(el) {
  const url = el.dataset.sse;
  let source = null;
  let delay = 500;
  function connect() {
    source = new EventSource(url);
    source.addEventListener("live", (ev) => {
      delay = 500;
      el.innerHTML = ev.data; // server-rendered, autoescaped fragment
      el.dataset.updated = String(Date.now());
      tickTimers();
    });
    source.onerror = () => {
      source.close();
      setTimeout(connect, delay); // reconnect with backoff
      delay = Math.min(delay * 2, 10000);
    };
  }
  connect();
  window.addEventListener("beforeunload", () => source && source.close());
}

function startUpload(form) {
  const input = form.querySelector('input[type="file"]');
  const drop = form.querySelector(".drop");
  const bar = form.querySelector("progress");
  const result = document.getElementById("upload-result");
  ["dragenter", "dragover"].forEach((t) =>
    drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) =>
    drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (ev) => {
    if (ev.dataTransfer && ev.dataTransfer.files.length) input.files = ev.dataTransfer.files;
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (!input.files.length) { result.textContent = "file: choose a CSV file to upload"; return; }
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("X-CSRF-Token", form.dataset.csrf);
    bar.hidden = false;
    bar.value = 0;
    result.textContent = "Uploading…";
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total; };
    xhr.upload.onload = () => { result.textContent = "Sent; the server is checking the rows…"; };
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (e) { body = { error: "unexpected answer " + xhr.status }; }
      result.replaceChildren();
      if (xhr.status !== 200) { result.textContent = body.error || ("upload failed: " + xhr.status); result.className = "error"; return; }
      result.className = "notice";
      const dl = document.createElement("dl");
      dl.className = "summary";
      const add = (k, v) => {
        const dt = document.createElement("dt"); dt.textContent = k;
        const dd = document.createElement("dd"); dd.textContent = String(v);
        dl.append(dt, dd);
      };
      add("Rows read", body.rows); add("Leads accepted", body.accepted); add("Numbers accepted", body.numbers_accepted);
      add("Duplicates", body.duplicates); add("Rejected", body.rejected);
      for (const [k, v] of Object.entries(body.rejected_by_reason || {})) add("· " + k, v);
      result.append(dl);
      if (body.rejected > 0) {
        const a = document.createElement("a");
        a.href = "/lists/" + encodeURIComponent(body.list_id) + "/rejects.csv";
        a.textContent = "Download the rejected rows (CSV)";
        result.append(a);
      }
    };
    xhr.onerror = () => { result.textContent = "The upload could not reach the console."; result.className = "error"; };
    xhr.send(new FormData(form));
  });
}

// Timers count on the page from a time the server sent (talk time, time in state): no request per second.
function tickTimers() {
  const now = Date.now();
  document.querySelectorAll(".timer").forEach((el) => {
    const since = el.dataset.since ? Date.parse(el.dataset.since) : NaN;
    const until = el.dataset.until ? Date.parse(el.dataset.until) : NaN;
    let s = !isNaN(since) ? (now - since) / 1000 : !isNaN(until) ? (until - now) / 1000 : NaN;
    if (isNaN(s)) return;
    s = Math.max(0, Math.floor(s));
    const m = Math.floor(s / 60);
    el.textContent = m + ":" + String(s % 60).padStart(2, "0");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  tickTimers();
  setInterval(tickTimers, 1000);
  document.querySelectorAll("[data-sse]").forEach(startLive);
  const form = document.getElementById("upload");
  if (form) startUpload(form);
});
