// Chat page: streams replies from /v1/chat/completions and shows per-reply speed.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const messagesEl = $("messages");
  const emptyEl = $("empty");
  const promptEl = $("prompt");
  const sendBtn = $("send");
  const stopBtn = $("stop");
  const SETTINGS_STORAGE = "ismail.chatSettings";

  /** The conversation sent to the server: [{role, content}], without the system prompt. */
  let history = [];
  /** AbortController of the reply being streamed, or null when idle. */
  let inflight = null;
  let modelName = null;

  // ---------- settings ----------

  const numberFields = ["temperature", "top-p", "top-k", "max-tokens"];

  function bindRangeOutput(id) {
    const input = $(id);
    const out = $(`${id}-value`);
    const show = () => (out.textContent = Number(input.value).toFixed(2));
    input.addEventListener("input", show);
    show();
  }

  function loadSettings() {
    let saved = {};
    try {
      saved = JSON.parse(localStorage.getItem(SETTINGS_STORAGE) || "{}");
    } catch {
      saved = {};
    }
    for (const id of [...numberFields, "system-prompt"]) {
      if (saved[id] !== undefined) $(id).value = saved[id];
    }
  }

  function saveSettings() {
    const values = {};
    for (const id of [...numberFields, "system-prompt"]) values[id] = $(id).value;
    try {
      localStorage.setItem(SETTINGS_STORAGE, JSON.stringify(values));
    } catch {
      // Storage can be unavailable (private mode); settings then last for this page only.
    }
  }

  /** Read the sampling controls; throws an Error with a plain message when one is invalid. */
  function samplingParams() {
    const temperature = Number($("temperature").value);
    const topP = Number($("top-p").value);
    const topK = Number($("top-k").value);
    const maxTokens = Number($("max-tokens").value);
    if (!Number.isInteger(topK) || topK < 0) throw new Error("Top-k must be a whole number, 0 or more.");
    if (!Number.isInteger(maxTokens) || maxTokens < 1) {
      throw new Error("Max tokens must be a whole number, 1 or more.");
    }
    const params = { temperature, top_p: topP, max_tokens: maxTokens };
    if (topK > 0) params.top_k = topK;
    return params;
  }

  // ---------- rendering ----------

  function addMessage(role, text) {
    emptyEl.hidden = true;
    const wrap = document.createElement("div");
    wrap.className = `message ${role}`;
    const roleEl = document.createElement("div");
    roleEl.className = "role";
    roleEl.textContent = role === "user" ? "You" : modelName || "ismail";
    const content = document.createElement("div");
    content.className = "content";
    content.textContent = text;
    const stats = document.createElement("div");
    stats.className = "stats";
    wrap.append(roleEl, content, stats);
    messagesEl.append(wrap);
    scrollToEnd();
    return { wrap, content, stats };
  }

  function showError(text) {
    emptyEl.hidden = true;
    const el = document.createElement("div");
    el.className = "error";
    el.setAttribute("role", "alert");
    el.textContent = text;
    messagesEl.append(el);
    scrollToEnd();
  }

  function scrollToEnd() {
    messagesEl.scrollTop = messagesEl.scrollHeight;
  }

  function setBusy(busy) {
    sendBtn.hidden = busy;
    stopBtn.hidden = !busy;
    if (busy) stopBtn.focus();
  }

  /** "12 tokens · 35.2 tok/s · first token 180 ms · stopped" for one reply. */
  function formatStats(s) {
    const parts = [];
    const approx = s.exactTokens ? "" : "~";
    parts.push(`${approx}${s.tokens} token${s.tokens === 1 ? "" : "s"}`);
    if (s.ttftMs !== null) {
      // Decode speed: tokens after the first one over the time after the first one.
      const decodeSeconds = (s.endMs - s.firstMs) / 1000;
      if (s.tokens > 1 && decodeSeconds > 0) {
        parts.push(`${((s.tokens - 1) / decodeSeconds).toFixed(1)} tok/s`);
      }
      parts.push(`first token ${Math.round(s.ttftMs)} ms`);
    }
    if (s.finish) parts.push(s.finish);
    return parts.join(" · ");
  }

  // ---------- streaming ----------

  async function send(text) {
    let params;
    try {
      params = samplingParams();
    } catch (err) {
      showError(err.message);
      return;
    }
    saveSettings();
    history.push({ role: "user", content: text });
    addMessage("user", text);

    const messages = [];
    const system = $("system-prompt").value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...history);
    const body = {
      messages,
      stream: true,
      stream_options: { include_usage: true },
      ...params,
    };
    if (!modelName) await refreshStatus(); // The server may have come up since page load.
    if (modelName) body.model = modelName;

    const reply = addMessage("assistant", "");
    reply.wrap.classList.add("streaming");
    const controller = new AbortController();
    inflight = controller;
    setBusy(true);

    const stats = { tokens: 0, exactTokens: false, ttftMs: null, firstMs: 0, endMs: 0, finish: "" };
    const startMs = performance.now();
    let replyText = "";
    let streamError = null;

    try {
      const response = await fetch("v1/chat/completions", {
        method: "POST",
        headers: Ismail.headers(),
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      if (!response.ok) {
        streamError = await Ismail.describeHttpError(response);
      } else {
        await Ismail.readSSE(response, (data) => {
          if (data === "[DONE]") return;
          let chunk;
          try {
            chunk = JSON.parse(data);
          } catch {
            return; // Not JSON: nothing a person could read in it.
          }
          if (chunk.error) {
            streamError = `The server stopped this reply: ${Ismail.messageFromBody(chunk)}`;
            return;
          }
          if (chunk.usage && chunk.usage.completion_tokens !== undefined) {
            stats.tokens = chunk.usage.completion_tokens;
            stats.exactTokens = true;
          }
          for (const choice of chunk.choices || []) {
            const piece = choice.delta && choice.delta.content;
            if (piece) {
              const now = performance.now();
              if (stats.ttftMs === null) {
                stats.ttftMs = now - startMs;
                stats.firstMs = now;
              }
              stats.endMs = now;
              if (!stats.exactTokens) stats.tokens += 1; // One chunk is about one token.
              replyText += piece;
              reply.content.textContent = replyText;
              scrollToEnd();
            }
            if (choice.finish_reason) {
              stats.finish = choice.finish_reason === "length" ? "hit max tokens" : "";
            }
          }
        });
      }
    } catch (err) {
      if (err.name === "AbortError") {
        stats.finish = "stopped";
      } else {
        streamError = Ismail.describeNetworkError(err);
      }
    } finally {
      inflight = null;
      reply.wrap.classList.remove("streaming");
      setBusy(false);
    }

    if (replyText) {
      history.push({ role: "assistant", content: replyText });
      reply.stats.textContent = formatStats(stats);
    } else if (stats.finish === "stopped") {
      reply.stats.textContent = "stopped before the first token";
      history.pop();
    } else if (streamError) {
      // Nothing came back: drop the empty bubble and the unanswered turn, so a retry is clean.
      reply.wrap.remove();
      history.pop();
    } else {
      reply.stats.textContent = "the model returned an empty reply";
    }
    if (streamError) showError(streamError);
    promptEl.focus();
  }

  // ---------- wiring ----------

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = promptEl.value.trim();
    if (!text || inflight) return;
    promptEl.value = "";
    autoGrow();
    document.body.classList.remove("settings-open"); // On phones, make room for the reply.
    $("settings-toggle").setAttribute("aria-expanded", "false");
    send(text);
  });

  promptEl.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });

  function autoGrow() {
    promptEl.style.height = "auto";
    promptEl.style.height = `${promptEl.scrollHeight + 2}px`;
  }
  promptEl.addEventListener("input", autoGrow);

  stopBtn.addEventListener("click", () => {
    if (inflight) inflight.abort();
  });

  $("new-chat").addEventListener("click", () => {
    if (inflight) inflight.abort();
    history = [];
    messagesEl.replaceChildren(emptyEl);
    emptyEl.hidden = false;
    promptEl.focus();
  });

  Ismail.bindApiKeyField($("api-key"), showError, refreshStatus);

  $("settings-toggle").addEventListener("click", () => {
    const open = document.body.classList.toggle("settings-open");
    $("settings-toggle").setAttribute("aria-expanded", String(open));
  });

  async function refreshStatus() {
    modelName = await Ismail.showServerStatus($("server-status"), (entry) =>
      fitMaxTokens(entry.max_model_len),
    );
  }

  /**
   * Prompt and reply share the model's context, and the server refuses a request whose
   * max_tokens does not fit beside the prompt. The page's default budget would fill a short
   * context on its own (the tiny preset has 256 tokens), so every message would be refused:
   * while the field holds that default, lower it to half the context. A value the user typed
   * is theirs to keep (the server's refusal then says what to change).
   */
  function fitMaxTokens(maxModelLen) {
    const field = $("max-tokens");
    const fit = Math.floor(maxModelLen / 2);
    if (fit >= 1 && field.value === field.defaultValue && fit < Number(field.defaultValue)) {
      field.value = String(fit);
    }
  }

  loadSettings();
  bindRangeOutput("temperature");
  bindRangeOutput("top-p");
  refreshStatus();
  promptEl.focus();
})();
