// Helpers shared by the ismail pages: API key (and its settings field), request headers, JSON
// requests, error wording, SSE reading, the server status badge, debouncing and the token
// inspector. Plain browser JavaScript, no dependencies.
"use strict";

const Ismail = (() => {
  const KEY_STORAGE = "ismail.apiKey";

  /** The API key typed by the user (kept in this browser's localStorage only). */
  function apiKey() {
    try {
      return localStorage.getItem(KEY_STORAGE) || "";
    } catch {
      return "";
    }
  }

  /**
   * Store the key; returns "" or, for a key HTTP headers cannot carry, a message saying so
   * (fetch would otherwise fail with a confusing "non ISO-8859-1 code point" error).
   */
  function setApiKey(value) {
    if (/[^\x21-\x7e]/.test(value)) {
      return "The API key can only contain printable ASCII characters (no spaces or letters such as ç, ğ, ı); check what you typed.";
    }
    try {
      if (value) localStorage.setItem(KEY_STORAGE, value);
      else localStorage.removeItem(KEY_STORAGE);
    } catch {
      // Private browsing can forbid storage; the key is then forgotten on reload.
    }
    return "";
  }

  /**
   * Wire the API key field: show the stored key; on a change, store the new one and call
   * onStored(), or onProblem(message) for a key HTTP headers cannot carry.
   */
  function bindApiKeyField(input, onProblem, onStored) {
    input.value = apiKey();
    input.addEventListener("change", () => {
      const problem = setApiKey(input.value.trim());
      if (problem) onProblem(problem);
      else onStored();
    });
  }

  /** JSON request headers, with Bearer auth when a key is set. */
  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = apiKey();
    if (key) h.Authorization = `Bearer ${key}`;
    return h;
  }

  /** Pull the human message out of an OpenAI error body ({"error": {"message"}}) or FastAPI's. */
  function messageFromBody(body) {
    if (!body || typeof body !== "object") return "";
    if (body.error) {
      if (typeof body.error === "string") return body.error;
      if (body.error.message) return String(body.error.message);
    }
    if (body.detail) {
      if (typeof body.detail === "string") return body.detail;
      if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    }
    if (body.message) return String(body.message);
    return "";
  }

  /** Turn a non-2xx response into a sentence a person can act on. */
  async function describeHttpError(response) {
    let detail = "";
    const text = await response.text().catch(() => "");
    try {
      detail = messageFromBody(JSON.parse(text));
    } catch {
      detail = text.trim().slice(0, 300);
    }
    const status = response.status;
    let lead;
    if (status === 401 || status === 403) {
      lead = "The server needs a valid API key: enter it under Settings → API key.";
    } else if (status === 429) {
      const retry = response.headers.get("Retry-After");
      lead = `The server is busy right now${retry ? `; try again in ${retry} s` : "; try again shortly"}.`;
    } else if (status === 503) {
      lead = "The server is not ready (still loading the model, or shutting down).";
    } else if (status >= 500) {
      lead = `The server failed while handling the request (HTTP ${status}).`;
    } else if (status === 404) {
      lead = "The server does not offer this endpoint (HTTP 404).";
    } else {
      lead = `The server rejected the request (HTTP ${status}).`;
    }
    return detail ? `${lead}\n${detail}` : lead;
  }

  /** Wording for a fetch() that failed before any response (server down, network gone). */
  function describeNetworkError(err) {
    return `Could not reach the server (${err && err.message ? err.message : err}). Is ismail-serve running?`;
  }

  /**
   * POST a JSON body; resolves to the parsed answer, or to null after calling onError with a
   * sentence saying why it failed (not for a request aborted through signal: a newer one
   * replaces it, so there is nothing to tell).
   */
  async function postJSON(path, body, onError, signal) {
    try {
      const response = await fetch(path, {
        method: "POST",
        headers: headers(),
        body: JSON.stringify(body),
        signal,
      });
      if (!response.ok) {
        onError(await describeHttpError(response));
        return null;
      }
      return await response.json();
    } catch (err) {
      if (err.name !== "AbortError") onError(describeNetworkError(err));
      return null;
    }
  }

  /**
   * Read a Server-Sent Events body and call onData(dataString) for each event.
   * The TextDecoder runs in streaming mode so a multi-byte character (ç ğ ı İ ö ş ü) split
   * across network chunks is joined before it is shown. Returns when the stream ends.
   */
  async function readSSE(response, onData) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder("utf-8");
    let buffer = "";
    let dataLines = [];
    const dispatchLine = (line) => {
      if (line === "") {
        if (dataLines.length) onData(dataLines.join("\n"));
        dataLines = [];
      } else if (line.startsWith("data:")) {
        dataLines.push(line.slice(line.startsWith("data: ") ? 6 : 5));
      }
      // Other fields (event:, id:, retry:) and comments (":") carry nothing we use.
    };
    for (;;) {
      const { value, done } = await reader.read();
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
      // A trailing "\r" may be the first half of "\r\n": wait for the next chunk to decide.
      const cut = !done && buffer.endsWith("\r") ? buffer.length - 1 : buffer.length;
      const lines = buffer.slice(0, cut).split(/\r\n|\r|\n/);
      buffer = buffer.slice(cut);
      // The last piece has no line break after it yet (unless the stream is over).
      if (!done) buffer = lines.pop() + buffer;
      for (const line of lines) dispatchLine(line);
      if (done) {
        dispatchLine("");
        return;
      }
    }
  }

  /**
   * Fill the status badge with the served model's name, or say why the server is unreachable.
   * Resolves to the model's id (null when unknown); onModel, if given, gets its /v1/models entry.
   */
  async function showServerStatus(element, onModel) {
    const dot = element.querySelector(".dot");
    const label = element.querySelector("span:last-child");
    try {
      const r = await fetch("v1/models", { headers: headers() });
      if (!r.ok) {
        dot.className = "dot bad";
        label.textContent = (await describeHttpError(r)).split("\n")[0];
        return null;
      }
      const body = await r.json();
      const entry = body.data && body.data[0] ? body.data[0] : null;
      const model = entry ? entry.id : null;
      if (entry && onModel) onModel(entry);
      dot.className = "dot ok";
      label.textContent = model ? `model: ${model}` : "connected";
      element.title = label.textContent;
      return model;
    } catch (err) {
      dot.className = "dot bad";
      label.textContent = "server unreachable";
      element.title = describeNetworkError(err);
      return null;
    }
  }

  /** fn, called only once calls have paused for ms milliseconds (typing, for instance). */
  function debounce(fn, ms) {
    let timer = null;
    return () => {
      clearTimeout(timer);
      timer = setTimeout(fn, ms);
    };
  }

  /**
   * Show an item's dataset.info in inspectorEl when it is hovered (desktop), focused (keyboards)
   * or tapped (phones), and mark it "selected". The items are container's descendants matching
   * itemSelector. Returns inspect(item), which does the same by hand; inspect(null) clears it.
   */
  function bindInspector(container, itemSelector, inspectorEl) {
    let selected = null;
    function inspect(item) {
      if (selected) selected.classList.remove("selected");
      selected = item;
      if (!item) return;
      item.classList.add("selected");
      inspectorEl.textContent = item.dataset.info;
    }
    for (const event of ["mouseover", "focusin", "click"]) {
      container.addEventListener(event, (e) => {
        const item = e.target.closest(itemSelector);
        if (item) inspect(item);
      });
    }
    return inspect;
  }

  return {
    apiKey,
    setApiKey,
    bindApiKeyField,
    headers,
    postJSON,
    messageFromBody,
    describeHttpError,
    describeNetworkError,
    readSSE,
    showServerStatus,
    debounce,
    bindInspector,
  };
})();
