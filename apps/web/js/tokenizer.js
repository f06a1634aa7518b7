// Tokenizer playground: tokenizes the text as it is typed through POST /v1/tokenize and shows
// each token coloured by kind, with counts, and the plain BPE comparison when the server has one.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const textEl = $("text");
  const errorEl = $("error");
  const columnsEl = $("columns");
  const mainColumn = $("main-column");
  const compareColumn = $("compare-column");
  const showIdsEl = $("show-ids");

  // Kinds the page colours (tr-tokenizer's names; "space" is drawn as whitespace).
  const KINDS = ["root", "word", "suffix", "bpe", "byte", "special", "case", "whitespace"];
  const KIND_ALIASES = { space: "whitespace" };
  const KIND_LABELS = {
    root: "root",
    word: "whole word",
    suffix: "suffix",
    bpe: "BPE",
    byte: "byte",
    special: "special",
    case: "case marker",
    whitespace: "whitespace",
    other: "other",
  };
  // Visible stand-ins for whitespace so a whitespace token is not an empty box.
  const WHITESPACE_SIGNS = { " ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍" };
  // A word: letters and digits, with an apostrophe suffix kept on (İstanbul'da is one word).
  const WORD = /[\p{L}\p{N}]+(?:['’][\p{L}\p{N}]+)*/gu;
  const DEBOUNCE_MS = 120;

  let modelName = null;
  let inflight = null;
  // Hover on desktop, focus for keyboards, tap on phones: all show the token's ID and kind.
  Ismail.bindInspector(columnsEl, ".tok", $("inspector"));

  /** Number of words in the text, as people count them. */
  function countWords(text) {
    return (text.match(WORD) || []).length;
  }

  /** The text of the input a token covers ("" for a zero-width token such as a case marker). */
  function coveredText(chars, offsets, i) {
    if (!offsets || !offsets[i]) return null;
    const [start, end] = offsets[i];
    return chars.slice(start, end).join("");
  }

  /** What to draw for one token: the text it covers, else its vocabulary name. */
  function visibleText(covered, vocab, kind) {
    if (covered === null || covered === "") {
      // Zero-width tokens: a case marker, or a later byte of a character split into bytes.
      if (kind === "case") return "⇧";
      return vocab || "∅";
    }
    if (/^\s+$/.test(covered)) return [...covered].map((c) => WHITESPACE_SIGNS[c] || "·").join("");
    return covered;
  }

  function kindOf(kinds, i) {
    const raw = kinds && kinds[i];
    const kind = KIND_ALIASES[raw] || raw;
    return KINDS.includes(kind) ? kind : "other";
  }

  function renderCounts(dl, entries) {
    dl.replaceChildren(
      ...entries.map(([name, value]) => {
        const div = document.createElement("div");
        const dt = document.createElement("dt");
        dt.textContent = name;
        const dd = document.createElement("dd");
        dd.textContent = value;
        dd.dataset.count = name;
        div.append(dt, dd);
        return div;
      }),
    );
  }

  /** Fill one column (model tokenizer or comparison) from a /v1/tokenize-shaped result. */
  function renderColumn(column, result, text) {
    const chars = [...text]; // Offsets count code points, as Python does.
    const ids = result.tokens || [];
    const box = column.querySelector('[data-role="tokens"]');
    const kindCounts = {};
    const nodes = [];
    ids.forEach((id, i) => {
      const kind = kindOf(result.kinds, i);
      kindCounts[kind] = (kindCounts[kind] || 0) + 1;
      const vocab = result.token_strs ? result.token_strs[i] : "";
      const covered = coveredText(chars, result.offsets, i);
      const span = document.createElement("span");
      span.className = `tok kind-${kind}`;
      span.tabIndex = 0;
      span.dataset.id = id;
      span.dataset.kind = result.kinds ? result.kinds[i] : "";
      if (covered !== null) span.dataset.text = covered;
      const where = result.offsets ? `  chars ${result.offsets[i][0]}-${result.offsets[i][1]}` : "";
      span.dataset.info = `#${i}  id ${id}  ${KIND_LABELS[kind]}  ${JSON.stringify(vocab)}${where}`;
      span.title = `id ${id} · ${KIND_LABELS[kind]} · ${JSON.stringify(vocab)}`;
      const textNode = document.createElement("span");
      textNode.className = "text";
      textNode.textContent = visibleText(covered, vocab, kind);
      const idNode = document.createElement("span");
      idNode.className = "id";
      idNode.textContent = id;
      span.append(textNode, idNode);
      nodes.push(span);
      if (covered && covered.includes("\n")) {
        const br = document.createElement("span");
        br.className = "line-break";
        nodes.push(br);
      }
    });
    box.replaceChildren(...nodes);
    box.classList.toggle("show-ids", showIdsEl.checked);

    const words = countWords(text);
    const count = ids.length;
    renderCounts(column.querySelector('[data-role="counts"]'), [
      ["tokens", String(count)],
      ["tokens/word", words ? (count / words).toFixed(2) : "–"],
      ["chars/token", count ? (chars.length / count).toFixed(2) : "–"],
    ]);
    return kindCounts;
  }

  function renderLegend(kindCounts, hasKinds) {
    const legend = $("legend");
    if (!hasKinds) {
      const note = document.createElement("span");
      note.className = "hint";
      note.textContent =
        "The served model's tokenizer does not label token kinds, so tokens are not coloured by kind.";
      legend.replaceChildren(note);
      return;
    }
    const kinds = [...KINDS, "other"].filter((k) => k !== "other" || kindCounts.other);
    legend.replaceChildren(
      ...kinds.map((kind) => {
        const el = document.createElement("span");
        el.className = `swatch kind-${kind}`;
        el.textContent = `${KIND_LABELS[kind]} ${kindCounts[kind] || 0}`;
        return el;
      }),
    );
  }

  function showError(message) {
    errorEl.textContent = message;
    errorEl.hidden = !message;
  }

  async function tokenize() {
    const text = textEl.value;
    if (inflight) inflight.abort();
    const controller = new AbortController();
    inflight = controller;
    if (!modelName) modelName = await Ismail.showServerStatus($("server-status"));
    const body = { prompt: text };
    if (modelName) body.model = modelName;
    const result = await Ismail.postJSON("v1/tokenize", body, showError, controller.signal);
    if (inflight === controller) inflight = null;
    if (!result || controller.signal.aborted || textEl.value !== text) return; // A newer request is on its way.
    showError("");
    const kindCounts = renderColumn(mainColumn, result, text);
    renderLegend(kindCounts, Array.isArray(result.kinds));
    if (result.max_model_len) {
      $("context-use").textContent = `${result.count} of ${result.max_model_len} context tokens`;
    }
    const comparison = result.comparison;
    compareColumn.hidden = !comparison;
    columnsEl.classList.toggle("compare", Boolean(comparison));
    if (comparison) {
      renderColumn(compareColumn, comparison, text);
      compareColumn.querySelector('[data-role="name"]').textContent = comparison.name
        ? `(${comparison.name})`
        : "";
      $("compare-hint").textContent = "";
    } else {
      $("compare-hint").textContent =
        "No plain BPE tokenizer is configured on the server, so there is no side-by-side comparison.";
    }
  }

  textEl.addEventListener("input", Ismail.debounce(tokenize, DEBOUNCE_MS));
  showIdsEl.addEventListener("change", () => {
    for (const box of document.querySelectorAll(".tokens")) {
      box.classList.toggle("show-ids", showIdsEl.checked);
    }
  });
  Ismail.bindApiKeyField($("api-key"), showError, async () => {
    modelName = await Ismail.showServerStatus($("server-status"));
    tokenize();
  });

  tokenize();
})();
