// The tubelet page: a form over POST /v1/videos, a queue with live progress and previews, a gallery.
// No build step and no third-party code. Every string that comes from a user or the server is put in
// the page with textContent (never innerHTML), so a prompt cannot inject markup.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const S = window.TUBELET_STRINGS;
  let lang = localStorage.getItem("tubelet-lang") || ((navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en");
  let token = localStorage.getItem("tubelet-token") || "";
  let model = null;
  const cards = new Map(); // job id -> {el, status, previewStep, media}
  const boxes = {}; // object index -> {mode, first: [x0,y0,x1,y1] | null, last: [...] | null}

  const t = (key, vars) => {
    let s = (S[lang] && S[lang][key]) || S.en[key] || key;
    for (const [k, v] of Object.entries(vars || {})) s = s.replace("{" + k + "}", String(v));
    return s;
  };
  function applyLang() {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
    document.querySelectorAll("[data-i18n-placeholder]").forEach((el) => { el.placeholder = t(el.dataset.i18nPlaceholder); });
    $("lang").textContent = lang === "zh" ? "English" : "中文";
    fillTasks();
    for (const [id, c] of cards) { c.status = null; c.render(c.job); }
  }

  // ------------------------------------------------------------------ API
  async function api(path, opts = {}) {
    const headers = Object.assign({}, opts.headers || {});
    if (token) headers.Authorization = "Bearer " + token;
    const r = await fetch(path, Object.assign({}, opts, { headers }));
    if (r.status === 401) { $("token-box").hidden = false; throw new Error("token"); }
    return r;
  }
  async function apiJSON(path, opts) {
    const r = await api(path, opts);
    const body = r.status === 204 ? null : await r.json().catch(() => null);
    if (!r.ok) throw new Error((body && body.error && body.error.message) || ("HTTP " + r.status));
    return body;
  }
  async function blobURL(path) {
    const r = await api(path);
    if (r.status !== 200) return null;
    return URL.createObjectURL(await r.blob());
  }

  // ------------------------------------------------------------------ model + form
  function fillTasks() {
    const sel = $("task");
    const cur = sel.value || "t2v";
    sel.replaceChildren();
    for (const task of (model ? model.tasks : ["t2v"])) {
      const o = document.createElement("option");
      o.value = task; o.textContent = t(task);
      sel.append(o);
    }
    sel.value = [...sel.options].some((o) => o.value === cur) ? cur : "t2v";
    showInputs();
  }
  function showInputs() {
    const task = $("task").value;
    document.querySelectorAll("#inputs [data-for]").forEach((row) => {
      row.hidden = !row.dataset.for.split(" ").includes(task);
    });
    $("boxes").hidden = !(model && model.box_control && ["t2v", "i2v", "extend"].includes(task));
  }
  function setDefaults(d) {
    $("negative_prompt").value = d.negative_prompt || "";
    $("height").value = d.height; $("width").value = d.width;
    $("num_inference_steps").value = d.num_inference_steps;
    $("guidance_scale").value = d.guidance_scale;
    $("sampler").value = d.sampler;
    $("num_frames").value = String(d.num_frames);
  }
  async function loadModel() {
    try {
      const m = await apiJSON("/v1/models");
      model = m.data[0];
    } catch (e) {
      $("server-state").textContent = e.message === "token" ? "" : t("loading");
      setTimeout(loadModel, 1000);
      return;
    }
    $("model-name").textContent = model.id;
    $("server-state").textContent = t("ready");
    const frames = $("num_frames"); frames.replaceChildren();
    const counts = [...new Set([...model.frame_counts, model.defaults.num_frames])].sort((a, b) => a - b);
    for (const n of counts) { const o = document.createElement("option"); o.value = String(n); o.textContent = String(n); frames.append(o); }
    const samp = $("sampler"); samp.replaceChildren();
    for (const s of model.samplers) { const o = document.createElement("option"); o.value = s; o.textContent = s; samp.append(o); }
    setDefaults(model.defaults);
    const c = $("box-canvas");
    const scale = 256 / Math.max(model.defaults.height, model.defaults.width);
    c.width = Math.round(model.defaults.width * scale); c.height = Math.round(model.defaults.height * scale);
    fillTasks(); drawBoxes();
  }

  function num(id, integer) {
    const v = $(id).value.trim();
    if (v === "") return undefined;
    const n = Number(v);
    return integer ? Math.trunc(n) : n;
  }
  function requestFromForm() {
    const task = $("task").value;
    const req = { prompt: $("prompt").value, task };
    const neg = $("negative_prompt").value;
    if (!model || neg !== (model.defaults.negative_prompt || "")) req.negative_prompt = neg;
    for (const [id, integer] of [["num_frames", true], ["height", true], ["width", true], ["num_inference_steps", true], ["guidance_scale", false], ["seed", true]]) {
      const v = num(id, integer);
      if (v !== undefined && !(model && id !== "seed" && model.defaults[id] === v)) req[id] = v;
    }
    if (model && $("sampler").value !== model.defaults.sampler) req.sampler = $("sampler").value;
    const cache = num("cache", false);
    if (cache !== undefined) req.cache = cache;
    if (task === "extend" && $("backward").checked) req.backward = true;
    if (task === "edit") req.strength = num("strength", false);
    const tracks = boxTracks(req.num_frames || (model ? model.defaults.num_frames : 16));
    if (!$("boxes").hidden && tracks.length) req.boxes = { tracks };
    return req;
  }
  async function submit(ev) {
    ev.preventDefault();
    $("form-error").textContent = "";
    const req = requestFromForm();
    const files = ["image", "last_image", "video", "video_b"].filter((f) => !$(f).closest(".row").hidden && $(f).files.length);
    let opts;
    if (files.length) {
      const fd = new FormData();
      fd.append("request", JSON.stringify(req));
      for (const f of files) fd.append(f, $(f).files[0]);
      opts = { method: "POST", body: fd };
    } else {
      opts = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(req) };
    }
    $("submit").disabled = true;
    try { const job = await apiJSON("/v1/videos", opts); upsert(job); }
    catch (e) { if (e.message !== "token") $("form-error").textContent = e.message; }
    finally { $("submit").disabled = false; }
  }
  function useSettings(settings) {
    if (model) setDefaults(model.defaults);
    $("prompt").value = settings.prompt || "";
    $("task").value = settings.task || "t2v"; showInputs();
    $("cache").value = "";
    for (const id of ["negative_prompt", "height", "width", "num_inference_steps", "guidance_scale", "seed", "sampler", "cache"]) {
      if (settings[id] !== undefined && settings[id] !== null) $(id).value = String(settings[id]);
    }
    if (settings.num_frames) {
      const sel = $("num_frames");
      if (![...sel.options].some((o) => o.value === String(settings.num_frames))) {
        const o = document.createElement("option"); o.value = o.textContent = String(settings.num_frames); sel.append(o);
      }
      sel.value = String(settings.num_frames);
    }
    $("advanced").open = true;
    $("prompt").focus();
    window.scrollTo({ top: 0, behavior: "smooth" });
  }

  // ------------------------------------------------------------------ boxes (first and last frame)
  let drag = null;
  const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231"];
  function canvasPoint(ev) {
    const c = $("box-canvas"), r = c.getBoundingClientRect();
    return [Math.min(1, Math.max(0, (ev.clientX - r.left) / r.width)), Math.min(1, Math.max(0, (ev.clientY - r.top) / r.height))];
  }
  function drawBoxes() {
    const c = $("box-canvas"), g = c.getContext("2d");
    g.clearRect(0, 0, c.width, c.height);
    g.fillStyle = "#f4f4f4"; g.fillRect(0, 0, c.width, c.height);
    const frame = $("box-frame").value;
    const rects = Object.entries(boxes).map(([o, b]) => [Number(o), b[frame], b.mode]);
    if (drag) rects.push([Number($("box-object").value), drag.rect, $("box-mode").value]);
    for (const [o, r, mode] of rects) {
      if (!r) continue;
      g.strokeStyle = COLORS[o % COLORS.length]; g.lineWidth = 2;
      g.setLineDash(mode === "soft" ? [6, 4] : []);
      g.strokeRect(r[0] * c.width, r[1] * c.height, (r[2] - r[0]) * c.width, (r[3] - r[1]) * c.height);
      g.setLineDash([]); g.fillStyle = COLORS[o % COLORS.length]; g.font = "12px sans-serif";
      g.fillText(String(o), r[0] * c.width + 3, r[1] * c.height + 13);
    }
  }
  function boxTracks(numFrames) {
    const tracks = [];
    for (const [o, b] of Object.entries(boxes)) {
      const kf = [];
      if (b.first) kf.push({ frame: 0, x0: b.first[0], y0: b.first[1], x1: b.first[2], y1: b.first[3] });
      if (b.last) kf.push({ frame: numFrames - 1, x0: b.last[0], y0: b.last[1], x1: b.last[2], y1: b.last[3] });
      if (kf.length) tracks.push({ object: Number(o), mode: b.mode, keyframes: kf });
    }
    return tracks;
  }
  function round3(x) { return Math.round(x * 1000) / 1000; }
  function setupCanvas() {
    const c = $("box-canvas");
    c.addEventListener("pointerdown", (ev) => { const p = canvasPoint(ev); drag = { start: p, rect: [p[0], p[1], p[0], p[1]] }; c.setPointerCapture(ev.pointerId); });
    c.addEventListener("pointermove", (ev) => {
      if (!drag) return;
      const p = canvasPoint(ev), s = drag.start;
      drag.rect = [Math.min(s[0], p[0]), Math.min(s[1], p[1]), Math.max(s[0], p[0]), Math.max(s[1], p[1])];
      drawBoxes();
    });
    c.addEventListener("pointerup", () => {
      if (!drag) return;
      const r = drag.rect.map(round3); drag = null;
      if (r[2] - r[0] > 0.01 && r[3] - r[1] > 0.01) {
        const o = $("box-object").value;
        boxes[o] = boxes[o] || { mode: $("box-mode").value, first: null, last: null };
        boxes[o].mode = $("box-mode").value;
        boxes[o][$("box-frame").value] = r;
      }
      drawBoxes();
    });
    $("box-frame").addEventListener("change", drawBoxes);
    $("box-clear").addEventListener("click", () => { for (const k of Object.keys(boxes)) delete boxes[k]; drawBoxes(); });
  }

  // ------------------------------------------------------------------ queue + gallery
  function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; }
  function summary(s) {
    const parts = [t(s.task || "t2v")];
    if (s.num_frames) parts.push(s.num_frames + "f");
    if (s.width && s.height) parts.push(s.width + "×" + s.height);
    if (s.num_inference_steps) parts.push(s.num_inference_steps + " " + t("steps").toLowerCase());
    if (s.guidance_scale !== undefined && s.guidance_scale !== null) parts.push("cfg " + s.guidance_scale);
    if (s.cache !== undefined && s.cache !== null) parts.push(t("cache_short") + " " + s.cache);
    parts.push(t("seed_label") + " " + s.seed);
    return parts.join(" · ");
  }
  function makeCard(job) {
    const li = el("li", "job"); li.dataset.id = job.id;
    const title = el("div", "prompt"); const meta = el("div", "muted small");
    const bar = el("div", "bar"); const fill = el("div", "fill"); bar.append(fill);
    const line = el("div", "status small"); const media = el("div", "media");
    const buttons = el("div", "buttons"); const err = el("div", "error small");
    li.append(media, title, meta, bar, line, err, buttons);
    const card = { el: li, job, status: null, previewStep: -1, mediaLoaded: false };
    card.render = (j) => {
      card.job = j;
      title.textContent = j.settings.prompt; meta.textContent = summary(j.settings);
      fill.style.width = j.progress + "%";
      bar.hidden = !(j.status === "in_progress" || j.status === "queued");
      let s = t(j.status);
      if (j.status === "queued" && j.queue_position !== null) s += " · " + t("position") + " " + (j.queue_position + 1);
      if (j.status === "in_progress") {
        s += " · " + j.progress + "% · " + t("step", { a: j.step, b: j.steps || "?" });
        if (j.cancel_requested) s += " · " + t("cancelling");
      }
      if (j.eta_seconds !== null && j.eta_seconds !== undefined && j.status !== "completed") s += " · " + t("eta", { s: Math.ceil(j.eta_seconds) });
      line.textContent = s;
      err.textContent = j.error || "";
      li.dataset.status = j.status;
      if (card.status !== j.status) {
        card.status = j.status;
        buttons.replaceChildren();
        if (j.status === "queued" || j.status === "in_progress") {
          const b = el("button", "cancel", t("cancel")); b.type = "button";
          b.addEventListener("click", () => apiJSON("/v1/videos/" + j.id, { method: "DELETE" }).then(upsert).catch(() => {}));
          buttons.append(b);
        } else {
          const use = el("button", "use", t("use_settings")); use.type = "button";
          use.addEventListener("click", () => useSettings(card.job.settings));
          const rm = el("button", "remove link", t("remove")); rm.type = "button";
          rm.addEventListener("click", () => apiJSON("/v1/videos/" + j.id, { method: "DELETE" }).then(() => { cards.delete(j.id); li.remove(); emptyNotes(); }).catch(() => {}));
          buttons.append(use, rm);
          if (card.url) buttons.append(downloadLink(card));
        }
      }
    };
    card.render(job);
    return card;
  }
  function downloadLink(card) {
    const a = el("a", "download small", t("download"));
    a.href = card.url; a.download = card.job.id + ".mp4";
    return a;
  }
  async function updateMedia(card) {
    const j = card.job;
    const media = card.el.querySelector(".media");
    if (j.status === "in_progress") {
      // Asking for the preview is what tells the worker someone is watching.
      const url = await blobURL("/v1/videos/" + j.id + "/preview").catch(() => null);
      if (url) {
        let img = media.querySelector("img.preview");
        if (!img) { img = el("img", "preview"); img.alt = "preview"; media.replaceChildren(img); }
        if (img.src) URL.revokeObjectURL(img.src);
        img.src = url;
      }
    } else if (j.status === "completed" && !card.mediaLoaded) {
      card.mediaLoaded = true;
      const url = await blobURL(j.urls.content).catch(() => null);
      if (!url) { card.mediaLoaded = false; return; }
      const v = el("video", "clip"); v.src = url; v.autoplay = true; v.loop = true; v.muted = true; v.playsInline = true; v.controls = true;
      card.url = url;
      media.replaceChildren(v);
      if (!card.el.querySelector("a.download")) card.el.querySelector(".buttons").append(downloadLink(card));
    } else if (j.status !== "completed" && j.status !== "in_progress" && media.querySelector("img.preview")) {
      media.replaceChildren();
    }
  }
  function place(card) {
    const active = card.job.status === "queued" || card.job.status === "in_progress";
    const list = active ? $("queue") : $("gallery");
    if (card.el.parentElement !== list) {
      if (active) list.append(card.el); else list.prepend(card.el);
    }
  }
  function emptyNotes() {
    $("queue-empty").hidden = $("queue").children.length > 0;
    $("gallery-empty").hidden = $("gallery").children.length > 0;
  }
  function upsert(job) {
    if (!job || !job.id) return;
    let card = cards.get(job.id);
    if (!card) { card = makeCard(job); cards.set(job.id, card); } else card.render(job);
    place(card); emptyNotes(); updateMedia(card);
  }
  async function poll() {
    try {
      const list = await apiJSON("/v1/videos?limit=100&order=asc");
      const seen = new Set();
      for (const job of list.data) { seen.add(job.id); upsert(job); }
      for (const [id, c] of cards) if (!seen.has(id)) { c.el.remove(); cards.delete(id); }
      emptyNotes();
      if (model) $("server-state").textContent = t("ready");
    } catch (e) {
      if (e.message !== "token") $("server-state").textContent = t("offline");
    }
    setTimeout(poll, document.hidden ? 3000 : 700);
  }

  // ------------------------------------------------------------------ start
  $("lang").addEventListener("click", () => { lang = lang === "zh" ? "en" : "zh"; localStorage.setItem("tubelet-lang", lang); applyLang(); });
  $("token-save").addEventListener("click", () => {
    token = $("token").value.trim(); localStorage.setItem("tubelet-token", token);
    $("token-box").hidden = true; loadModel();
  });
  $("task").addEventListener("change", showInputs);
  $("form").addEventListener("submit", submit);
  setupCanvas();
  applyLang();
  loadModel();
  poll();
})();
