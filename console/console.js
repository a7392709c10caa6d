// The signet web console. The token lives in this module's memory only
// (never in web storage, a cookie or a URL), and is forgotten when the
// page is left (so Back does not bring back a signed-in page); the private
// key of a create or rotation is shown once, in a dialog, and dropped when
// it closes or the page is left.

import { Api, busy, isReady, UNREACHABLE } from "/console/api.js";
import { claimsOf, el, save, when } from "/console/view.js";

const ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];

let api = null;
// Whether the operator signed in (only they may open a new organisation).
let operator = false;
const $ = (id) => document.getElementById(id);

function showError(message) {
  $("error").textContent = message || "";
}

async function attempt(action) {
  showError("");
  try {
    return await action();
  } catch (e) {
    showError(e.message || String(e));
    return undefined;
  }
}

// ---- sign-in ----

$("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("token");
  const token = input.value.trim();
  input.value = "";
  if (!token) return;
  const candidate = new Api(token);
  showError("");
  try {
    await candidate.organisations();
  } catch (e) {
    showError(e.message);
    return;
  }
  api = candidate;
  const claims = claimsOf(token);
  operator = !(claims && claims.org);
  $("who").textContent =
    claims && claims.org
      ? `Signed in with an organisation token: organisation ${claims.org}, role ${claims.role ?? "?"}`
      : "Signed in with the operator token";
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  await refresh();
  $("sign-out").focus();
});

function signOut() {
  api = null;
  operator = false;
  $("orgs").replaceChildren();
  $("cluster").replaceChildren();
  $("who").textContent = "";
  $("app").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  showError("");
}

$("sign-out").addEventListener("click", () => {
  signOut();
  $("token").focus();
});

// Leaving the page forgets the token and any private key shown: a page
// kept for Back and Forward must come back signed out.
window.addEventListener("pagehide", () => {
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
  signOut();
});

// ---- dialogs ----

// Asks in the in-page dialog; resolves true on Confirm. `extra` holds
// form fields the caller reads before the dialog closes.
function confirmDialog({ title, text, key, extra }) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  const usage = $("confirm-usage");
  usage.replaceChildren();
  if (key) {
    usage.append(
      el("dt", { text: "Verified in the last hour" }),
      el("dd", { text: String(key.usage?.verifiedLastHour ?? 0) }),
      el("dt", { text: "Last verified" }),
      el("dd", {}, when(key.usage?.lastVerifiedAt)),
    );
  }
  $("confirm-extra").replaceChildren(...(extra || []));
  dialog.returnValue = "";
  dialog.showModal();
  // A field to fill if there is one, else Cancel: Enter alone never
  // confirms a revocation.
  ((extra || []).find((e) => e.tagName === "INPUT") || $("confirm-no")).focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), { once: true });
  });
}

// Moves focus to `fallback` when the element that had it is gone (a
// re-rendered table), so that it never falls to the page itself.
function keepFocus(fallback) {
  if (!document.activeElement || document.activeElement === document.body) fallback.focus();
}

function showSecret(created, returnTo) {
  const dialog = $("secret");
  $("secret-id").textContent = `Key ${created.id} (${created.algorithm}) of organisation ${created.organisationId}.`;
  $("secret-pem").value = created.privateKey;
  const download = () => save(`${created.id}.pem`, created.privateKey);
  $("secret-download").onclick = download;
  $("secret-close").onclick = () => dialog.close();
  dialog.addEventListener(
    "close",
    () => {
      $("secret-pem").value = "";
      $("secret-download").onclick = null;
      if (returnTo) keepFocus(returnTo);
    },
    { once: true },
  );
  dialog.showModal();
  $("secret-download").focus();
}

// ---- the page ----

async function refresh() {
  return busy(render);
}

async function render() {
  if (!api) return;
  await Promise.all([renderStatus(), renderOrgs()]);
}

async function renderOrgs() {
  const listed = await attempt(() => api.organisations());
  if (!listed) return;
  const orgs = $("orgs");
  const sections = await Promise.all(listed.organisations.map((o) => orgSection(o.id)));
  orgs.replaceChildren(...sections);
  if (listed.organisations.length === 0) {
    orgs.append(el("p", { text: "No organisation has keys yet." }));
  }
  if (operator) {
    orgs.append(newOrgForm());
  }
}

function newOrgForm() {
  const input = el("input", { id: "new-org", name: "org", required: true, pattern: "[A-Za-z0-9._\\-]{1,64}" });
  const form = el(
    "form",
    { class: "inline", "aria-label": "New organisation" },
    el("label", { for: "new-org", text: "Organisation" }),
    input,
    el("button", { type: "submit", text: "Open" }),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const org = input.value.trim();
    // An organisation already shown is not shown twice.
    const shown = Array.from(document.querySelectorAll("section.org")).find((s) => s.dataset.org === org);
    const section = shown || (await orgSection(org));
    if (!shown) $("orgs").prepend(section);
    section.querySelector("h2").focus();
  });
  return form;
}

async function renderStatus() {
  const [ready, cluster] = await Promise.all([
    isReady(),
    api.cluster().catch((e) => ({ error: e.message || String(e) })),
  ]);
  if (ready === null) {
    $("status-text").textContent = UNREACHABLE;
    $("cluster").replaceChildren();
    return;
  }
  const parts = [
    ready
      ? "This instance is ready."
      : "This instance is not ready: it cannot vouch for its keys now (its database or upstream is out of reach, or it is starting).",
  ];
  if (cluster.error) {
    parts.push(`Its view of the other instances is unavailable: ${cluster.error}`);
  } else if (cluster.freshAgeMs === null) {
    parts.push("It has not yet confirmed that it has seen every key change made elsewhere.");
  } else if (cluster.freshAgeMs > 0) {
    parts.push(`Fresh as of ${seconds(cluster.freshAgeMs)} ago.`);
  }
  $("status-text").textContent = parts.join(" ");
  $("cluster").replaceChildren(...(cluster.error ? [] : [clusterTable(cluster)]));
}

$("cluster-refresh").addEventListener("click", () => busy(renderStatus));

const seconds = (ms) => `${(ms / 1000).toFixed(1)} s`;

// Each instance sharing the store, then each follower of this instance.
function clusterTable(cluster) {
  const row = (kind, id, applied, agoMs, live) =>
    el(
      "tr",
      { "data-id": id },
      el("td", { text: kind }),
      el("td", {}, el("code", { title: id, text: `…${id.slice(-8)}` })),
      el("td", { text: applied }),
      el("td", { text: `${seconds(agoMs)} ago` }),
      el("td", { class: live ? "ok" : "bad", text: live ? "live" : "not live" }),
    );
  const rows = [
    ...cluster.instances.map((i) =>
      row(
        i.id === cluster.self ? "instance (this one)" : "instance",
        i.id,
        `version ${i.appliedVersion}`,
        i.lastHeartbeatAgoMs,
        i.live,
      ),
    ),
    ...cluster.followers.map((f) =>
      row("follower", f.id, `event ${f.appliedEvent}`, f.lastHeardAgoMs, f.live),
    ),
  ];
  const table = el(
    "table",
    { class: "cluster" },
    el("caption", { text: "Instances and followers" }),
    el(
      "thead",
      {},
      el("tr", {}, ...["Kind", "ID", "Applied", "Heard", "Live"].map((h) => el("th", { scope: "col", text: h }))),
    ),
    el("tbody", {}, ...rows),
  );
  return el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Instances and followers" }, table);
}

// An organisation's part of element ids: letters, digits and `-` as they
// are, every other character as `_` and its code point in hex and `_`, so
// that two organisations never share an id (`x.y` and `x_y` did).
function slugOf(org) {
  return Array.from(org, (c) => (/[A-Za-z0-9-]/.test(c) ? c : `_${c.codePointAt(0).toString(16)}_`)).join("");
}

async function orgSection(org) {
  const slug = slugOf(org);
  const section = el("section", { class: "org", "aria-labelledby": `org-${slug}`, "data-org": org });
  const body = el("div");
  const heading = el("h2", { id: `org-${slug}`, tabindex: "-1" }, "Organisation ", el("code", { text: org }));
  section.append(heading, body);
  await fillOrg(org, slug, body, heading);
  return section;
}

async function fillOrg(org, slug, body, heading) {
  const reload = async () => {
    await fillOrg(org, slug, body, heading);
    keepFocus(heading);
  };
  const listed = await attempt(() => api.keys(org));
  const keys = listed ? listed.keys : [];
  body.replaceChildren(
    keyTable(org, slug, keys, reload),
    el("div", { class: "forms" }, createForm(org, slug, reload), uploadForm(org, slug, reload)),
    await jwksBlock(org),
    await auditBlock(org),
  );
}

function keyTable(org, slug, keys, reload) {
  const head = ["Name", "ID", "Algorithm", "State", "Created", "Expires", "Origin", "Usage", "Actions"];
  // Explicit roles: the narrow layout shows rows as cards (CSS display),
  // which must not cost the table its meaning to assistive technology.
  const table = el(
    "table",
    { class: "keys", role: "table" },
    el("caption", { text: `Keys of organisation ${org} (${keys.length})` }),
    el(
      "thead",
      { role: "rowgroup" },
      el("tr", { role: "row" }, head.map((h) => el("th", { scope: "col", role: "columnheader", text: h }))),
    ),
  );
  const tbody = el("tbody", { role: "rowgroup" });
  if (keys.length === 0) {
    tbody.append(el("tr", { role: "row" }, el("td", { role: "cell", colspan: head.length, text: "No keys." })));
  }
  for (const key of keys) {
    tbody.append(keyRow(org, key, reload));
  }
  table.append(tbody);
  return el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": `Keys of ${org}` }, table);
}

function keyRow(org, key, reload) {
  const u = key.usage || {};
  const usage = el(
    "span",
    {},
    `${u.verifiedLastHour ?? 0} in the last hour, ${u.verifiedLastDay ?? 0} in the last day; last `,
    when(u.lastVerifiedAt),
  );
  const act = (label, fn) =>
    el("button", { type: "button", text: label, "aria-label": `${label} key ${key.name} (${key.id})`, onclick: fn });
  const actions = el("div", { class: "actions" });
  actions.append(act("Rename", () => rename(org, key, reload)));
  if (key.state === "disabled") actions.append(act("Enable", () => enable(org, key, reload)));
  if (key.state === "active") actions.append(act("Disable", () => disable(org, key, reload)));
  if (key.origin === "generated") actions.append(act("Rotate", () => rotate(org, key, reload)));
  actions.append(act("Delete", () => remove(org, key, reload)));
  const cell = (label, attrs, ...children) => el("td", { role: "cell", "data-label": label, ...attrs }, ...children);
  return el(
    "tr",
    { "data-key": key.id, role: "row" },
    cell("Name", { class: "name-cell", text: key.name }),
    cell("ID", {}, el("code", { text: key.id })),
    cell("Algorithm", { text: key.bits ? `${key.algorithm} (${key.bits} bits)` : key.algorithm }),
    cell("State", { class: `state-${key.state}`, text: key.state }),
    cell("Created", {}, when(key.createdAt)),
    cell("Expires", {}, key.expiresAt ? when(key.expiresAt) : el("span", { class: "muted", text: "does not expire" })),
    cell("Origin", { text: key.origin }),
    cell("Usage", { class: "usage-cell" }, usage),
    cell("Actions", {}, actions),
  );
}

// ---- actions ----

// The key as the server lists it now, for up-to-date usage in a dialog.
async function fresh(org, key) {
  const listed = await api.keys(org).catch(() => null);
  return (listed && listed.keys.find((k) => k.id === key.id)) || key;
}

async function rename(org, key, reload) {
  const input = el("input", { id: "rename-name", value: key.name, required: true, maxlength: "128" });
  const ok = await confirmDialog({
    title: `Rename key ${key.name}`,
    text: `Key ${key.id} of organisation ${org}.`,
    extra: [el("label", { for: "rename-name", text: "New name" }), input],
  });
  if (!ok) return;
  if ((await attempt(() => api.patch(org, key.id, { name: input.value }))) !== undefined) await reload();
}

async function enable(org, key, reload) {
  if ((await attempt(() => api.patch(org, key.id, { state: "active" }))) !== undefined) await reload();
}

async function disable(org, key, reload) {
  key = await fresh(org, key);
  const ok = await confirmDialog({
    title: `Disable key ${key.name}?`,
    text: `Tokens signed by key ${key.id} will be refused at once, and the key leaves the JWK Sets. You can enable it again.`,
    key,
  });
  if (!ok) return;
  if ((await attempt(() => api.patch(org, key.id, { state: "disabled" }))) !== undefined) await reload();
}

async function remove(org, key, reload) {
  key = await fresh(org, key);
  const ok = await confirmDialog({
    title: `Delete key ${key.name}?`,
    text: `Key ${key.id} will be deleted for good: tokens it signed stop verifying at once. This cannot be undone.`,
    key,
  });
  if (!ok) return;
  if ((await attempt(() => api.remove(org, key.id))) !== undefined) await reload();
}

async function rotate(org, key, reload) {
  key = await fresh(org, key);
  const grace = el("input", { id: "rotate-grace", type: "number", min: "0", value: "86400", required: true });
  const ok = await confirmDialog({
    title: `Rotate key ${key.name}?`,
    text: `A new key of the same type replaces key ${key.id}, which keeps verifying for the grace period, then expires.`,
    key,
    extra: [el("label", { for: "rotate-grace", text: "Grace period (seconds)" }), grace],
  });
  if (!ok) return;
  const created = await attempt(() => api.rotate(org, key.id, Number(grace.value)));
  if (created) {
    showSecret(created, $(`org-${slugOf(org)}`));
    await reload();
  }
}

function createForm(org, slug, reload) {
  const id = (n) => `${n}-${slug}`;
  const name = el("input", { id: id("create-name"), name: "name", required: true, maxlength: "128" });
  const algorithm = el(
    "select",
    { id: id("create-algorithm"), name: "algorithm" },
    ALGORITHMS.map((a) => el("option", { value: a, text: a })),
  );
  const bits = el(
    "select",
    { id: id("create-bits"), name: "bits" },
    ["2048", "3072", "4096"].map((b) => el("option", { value: b, text: b })),
  );
  const expires = el("input", { id: id("create-expires"), name: "expires", type: "datetime-local" });
  algorithm.addEventListener("change", () => {
    bits.disabled = !/^(RS|PS)/.test(algorithm.value);
  });
  const form = el(
    "form",
    { class: "stack card", "aria-label": `Create a key in ${org}` },
    el("h3", { text: "Create a key" }),
    el("label", { for: id("create-name"), text: "Name" }),
    name,
    el("label", { for: id("create-algorithm"), text: "Algorithm" }),
    algorithm,
    el("label", { for: id("create-bits"), text: "Bits (RSA only)" }),
    bits,
    el("label", { for: id("create-expires"), text: "Expires (local time; empty: never)" }),
    expires,
    el("button", { type: "submit", text: "Create key" }),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: name.value, algorithm: algorithm.value };
    if (!bits.disabled) body.bits = Number(bits.value);
    if (expires.value) body.expiresAt = new Date(expires.value).toISOString().replace(/\.\d{3}Z$/, "Z");
    const created = await attempt(() => api.create(org, body));
    if (created) {
      showSecret(created, $(`org-${slug}`));
      await reload();
    }
  });
  return form;
}

function uploadForm(org, slug, reload) {
  const id = (n) => `${n}-${slug}`;
  const name = el("input", { id: id("upload-name"), name: "name", required: true, maxlength: "128" });
  const text = el("textarea", { id: id("upload-key"), name: "key", rows: "5", spellcheck: "false" });
  const file = el("input", { id: id("upload-file"), type: "file", accept: ".pem,.json,.jwk,.txt" });
  file.addEventListener("change", async () => {
    if (file.files[0]) text.value = await file.files[0].text();
  });
  // An RSA key does not say which of six schemes it signs with; EC and
  // Ed25519 keys, and a JWK with its own alg, do.
  const scheme = el(
    "select",
    { id: id("upload-scheme"), name: "scheme" },
    ALGORITHMS.filter((a) => /^(RS|PS)/.test(a)).map((a) => el("option", { value: a, text: a })),
  );
  const form = el(
    "form",
    { class: "stack card", "aria-label": `Upload a public key to ${org}` },
    el("h3", { text: "Upload a public key" }),
    el("label", { for: id("upload-name"), text: "Name" }),
    name,
    el("label", { for: id("upload-key"), text: "Public key (SPKI PEM or JWK)" }),
    text,
    el("label", { for: id("upload-file"), text: "Or read it from a file" }),
    file,
    el("label", { for: id("upload-scheme"), text: "Signature scheme of an RSA key" }),
    scheme,
    el("button", { type: "submit", text: "Upload key" }),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const raw = text.value.trim();
    const body = { name: name.value };
    if (raw.startsWith("{")) {
      try {
        body.jwk = JSON.parse(raw);
      } catch {
        showError("The JWK is not valid JSON.");
        return;
      }
    } else {
      body.publicKey = raw;
    }
    if (body.jwk ? body.jwk.kty === "RSA" && !body.jwk.alg : isRsaPem(raw)) body.algorithm = scheme.value;
    if ((await attempt(() => api.create(org, body))) !== undefined) await reload();
  });
  return form;
}

/** The DER of the (first) PEM block in `text`, as a byte string; "" if none. */
function pemBytes(text) {
  const body = text.replace(/-----(BEGIN|END)[^-]*-----/g, "").replace(/\s+/g, "");
  try {
    return atob(body);
  } catch {
    return "";
  }
}

/** The rsaEncryption OID, as DER (06 09 2A 86 48 86 F7 0D 01 01 01). */
const RSA_OID = "\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01";

/** Whether a pasted PEM holds an RSA public key (SPKI or PKCS#1). */
function isRsaPem(text) {
  return text.includes("BEGIN RSA PUBLIC KEY") || pemBytes(text).includes(RSA_OID);
}

async function jwksBlock(org) {
  const jwks = await api.jwks(org).catch(() => null);
  return el(
    "details",
    { class: "card" },
    el("summary", { text: `JWK Set (${jwks ? jwks.keys.length : "?"} active keys)` }),
    el("p", {}, "Published at ", el("code", { text: `/v1/organisations/${org}/jwks.json` })),
    el("pre", { class: "jwks", tabindex: "0", text: jwks ? JSON.stringify(jwks, null, 2) : "could not be read" }),
  );
}

async function auditBlock(org) {
  const details = el("details", { class: "card audit" });
  const summary = el("summary", { text: "Audit log" });
  details.append(summary);
  let verdict;
  try {
    const v = await api.auditVerify(org);
    verdict = v.valid
      ? el("p", { class: "ok", text: `The audit chain verifies (${v.events} events).` })
      : el("p", {
          class: "bad",
          text: `The audit chain is broken at event ${v.brokenAt.eventId} (#${v.brokenAt.index}): ${v.brokenAt.reason}`,
        });
    summary.textContent = v.valid ? "Audit log (chain verifies)" : "Audit log (chain BROKEN)";
  } catch (e) {
    details.append(el("p", { text: e.message }));
    return details;
  }
  details.append(verdict);
  try {
    const page = await api.audit(org);
    const table = el(
      "table",
      { class: "events" },
      el("caption", { text: "The latest 50 events, newest first" }),
      el(
        "thead",
        {},
        el("tr", {}, ["Time", "Action", "Key", "Actor", "Outcome"].map((h) => el("th", { scope: "col", text: h }))),
      ),
      el(
        "tbody",
        {},
        page.events.map((e) =>
          el(
            "tr",
            {},
            el("td", {}, when(e.time)),
            el("td", { text: e.action }),
            el("td", {}, e.keyId ? el("code", { text: e.keyId }) : ""),
            el("td", { text: e.actor?.sub ? `${e.actor.kind} ${e.actor.sub}` : e.actor?.kind ?? "" }),
            el("td", { text: e.outcome }),
          ),
        ),
      ),
    );
    details.append(el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": `Audit log of ${org}` }, table));
  } catch (e) {
    details.append(el("p", { text: e.message }));
  }
  return details;
}
