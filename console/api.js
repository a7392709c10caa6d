// The signet HTTP API as the console uses it: same origin, bearer token
// from memory, errors carrying the API's own message.

// How many requests and renders are in flight, on <body data-busy>: the
// browser tests wait for 0 instead of guessing with timers.
export async function busy(work) {
  const body = document.body;
  body.dataset.busy = String(Number(body.dataset.busy || 0) + 1);
  try {
    return await work();
  } finally {
    body.dataset.busy = String(Number(body.dataset.busy) - 1);
  }
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export class Api {
  #token;

  constructor(token) {
    this.#token = token;
  }

  async call(method, path, body, query) {
    return busy(() => this.#call(method, path, body, query));
  }

  async #call(method, path, body, query) {
    const headers = { Authorization: `Bearer ${this.#token}` };
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const url = query ? `${path}?${new URLSearchParams(query)}` : path;
    const res = await fetch(url, init).catch(() => {
      throw new ApiError(0, "unreachable", UNREACHABLE);
    });
    if (res.status === 204) return null;
    const text = await res.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    if (!res.ok) {
      const message = json && json.message ? json.message : `${res.status} ${res.statusText}`;
      throw new ApiError(res.status, json && json.code, message);
    }
    return json;
  }

  organisations() {
    return this.call("GET", "/v1/organisations");
  }

  keys(org) {
    return this.call("GET", `/v1/organisations/${encodeURIComponent(org)}/keys`);
  }

  create(org, body) {
    return this.call("POST", `/v1/organisations/${encodeURIComponent(org)}/keys`, body);
  }

  patch(org, id, body) {
    return this.call("PATCH", `/v1/organisations/${encodeURIComponent(org)}/keys/${id}`, body);
  }

  rotate(org, id, graceSeconds) {
    return this.call("POST", `/v1/organisations/${encodeURIComponent(org)}/keys/${id}/rotate`, {
      graceSeconds,
    });
  }

  remove(org, id) {
    return this.call("DELETE", `/v1/organisations/${encodeURIComponent(org)}/keys/${id}`);
  }

  jwks(org) {
    return fetch(`/v1/organisations/${encodeURIComponent(org)}/jwks.json`, {
      cache: "no-store",
      credentials: "omit",
    }).then((r) => r.json());
  }

  audit(org) {
    return this.call("GET", `/v1/organisations/${encodeURIComponent(org)}/audit`, undefined, {
      limit: "50",
    });
  }

  cluster() {
    return this.call("GET", "/v1/cluster");
  }

  auditVerify(org) {
    return this.call("GET", `/v1/organisations/${encodeURIComponent(org)}/audit/verify`);
  }
}

// What a request that got no answer says (the browser's own words are
// "Failed to fetch").
export const UNREACHABLE = `signet did not answer at ${location.origin}: is it running, and is the network up?`;

// Whether this instance is ready (true or false), or `null` when it does
// not answer at all: no credential needed.
export async function isReady() {
  return fetch("/readyz", { cache: "no-store", credentials: "omit" })
    .then((r) => r.ok)
    .catch(() => null);
}
