// Small DOM helpers: elements from data (text only, never HTML), dates in
// local time with UTC on hover, and saving text as a file.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

// A <time> in the user's local time; the UTC time in its title.
export function when(iso) {
  if (!iso) return el("span", { text: "never", class: "muted" });
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return el("span", { text: iso });
  return el("time", {
    datetime: iso,
    title: `${d.toISOString().replace(".000Z", "Z").replace("T", " ")} (UTC)`,
    text: d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" }),
  });
}

// Offers `text` as a download named `name`, without a network request.
export function save(name, text, type = "application/x-pem-file") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = el("a", { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// The claims of a JWT, for display only (nothing is trusted from them).
export function claimsOf(token) {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}
