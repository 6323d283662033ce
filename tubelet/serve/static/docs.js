// The API reference at /docs, rendered from /openapi.json by this page itself (no CDN, works offline).
"use strict";
(async () => {
  const root = document.getElementById("api");
  const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; };
  let spec;
  try { spec = await (await fetch("/openapi.json")).json(); }
  catch (e) { root.append(el("p", "error", "could not load /openapi.json: " + e)); return; }
  document.getElementById("title").textContent = spec.info.title + " API " + spec.info.version;
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const sec = el("section", "op");
      const head = el("h3");
      head.append(el("span", "method " + method, method.toUpperCase()), el("code", "", " " + path));
      sec.append(head);
      if (op.summary) sec.append(el("p", "summary", op.summary));
      if (op.description) sec.append(el("pre", "desc", op.description));
      const params = op.parameters || [];
      if (params.length) {
        const table = el("table");
        const hr = el("tr"); for (const h of ["parameter", "in", "type", "default"]) hr.append(el("th", "", h)); table.append(hr);
        for (const p of params) {
          const tr = el("tr"); const sch = p.schema || {};
          const type = sch.type || (sch.anyOf || []).map((s) => s.type).filter(Boolean).join(" | ");
          for (const v of [p.name + (p.required ? " *" : ""), p.in, type, sch.default === undefined ? "" : JSON.stringify(sch.default)]) tr.append(el("td", "", v));
          table.append(tr);
        }
        sec.append(table);
      }
      root.append(sec);
    }
  }
})();
