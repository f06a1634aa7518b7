// Router view: sends the text to POST /v1/routing and draws, for each token (columns) and MoE
// layer (rows), the experts the token goes to, coloured by expert, each bar as tall as its
// combine weight; then each layer's expert load for the text. A dense model gets a plain note.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const textEl = $("text");
  const errorEl = $("error");
  const gridEl = $("grid");
  const DEBOUNCE_MS = 300;
  const GENERATE_TOKENS = 24;
  // Visible stand-ins for whitespace so a whitespace token is not an empty column.
  const WHITESPACE_SIGNS = { " ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍" };

  let modelName = null;
  let inflight = null;
  // Hover on desktop, focus for keyboards, tap on phones: all show the cell's weights.
  const inspect = Ismail.bindInspector(gridEl, ".cell", $("inspector"));

  /** A colour per expert: hues a golden angle apart stay distinct for any number of experts. */
  function expertColour(expert) {
    return `hsl(${(expert * 137.508) % 360} 65% 55%)`;
  }

  /** What to draw for a token's text: whitespace as signs, a case marker (whose effect is on
   * the next token's letters) as ⇧, another token without text of its own as ∅. */
  function visibleText(text, kind) {
    if (text === "") return kind === "case" ? "⇧" : "∅";
    if (/^\s+$/.test(text)) return [...text].map((c) => WHITESPACE_SIGNS[c] || "·").join("");
    return text.trim() || text;
  }

  function showError(message) {
    errorEl.textContent = message;
    errorEl.hidden = !message;
  }

  function element(tag, className, text) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  /** The header row: an empty corner, then one cell per token with its text. */
  function tokenHeader(result) {
    const cells = [element("div", "corner", "layer")];
    result.token_texts.forEach((text, i) => {
      const kind = result.kinds[i] || "other";
      const head = element("div", `tok-head kind-${kind}`, visibleText(text, kind));
      head.dataset.token = i;
      head.title = `#${i} id ${result.tokens[i]} ${JSON.stringify(text)}`;
      cells.push(head);
    });
    return cells;
  }

  /** One grid cell: a bar per routed expert, as tall as its share of the combine weight. */
  function routeCell(layer, i, text) {
    const experts = layer.experts[i];
    const weights = layer.weights[i];
    const total = weights.reduce((a, b) => a + b, 0) || 1;
    const cell = element("div", "cell");
    cell.tabIndex = 0;
    cell.dataset.layer = layer.layer;
    cell.dataset.token = i;
    cell.dataset.experts = experts.join(",");
    const parts = experts.map((e, j) => {
      const dropped = layer.kept && !layer.kept[i][j] ? " (dropped: over capacity)" : "";
      return `expert ${e}: ${weights[j].toFixed(3)}${dropped}`;
    });
    cell.dataset.info = `token #${i} ${JSON.stringify(text)} · layer ${layer.layer} · ${parts.join(", ")}`;
    cell.title = parts.join("\n");
    experts.forEach((e, j) => {
      const bar = element("span", "bar", String(e));
      bar.style.background = expertColour(e);
      bar.style.flexGrow = String(weights[j] / total);
      if (layer.kept && !layer.kept[i][j]) bar.classList.add("dropped");
      cell.append(bar);
    });
    return cell;
  }

  function renderGrid(result) {
    const n = result.tokens.length;
    gridEl.style.gridTemplateColumns = `auto repeat(${n}, minmax(2.2rem, max-content))`;
    const cells = tokenHeader(result);
    for (const layer of result.layers) {
      cells.push(element("div", "layer-label", String(layer.layer)));
      result.token_texts.forEach((text, i) => cells.push(routeCell(layer, i, text)));
    }
    gridEl.replaceChildren(...cells);
    const used = new Set(result.layers.flatMap((l) => l.experts.flat()));
    $("legend").replaceChildren(
      ...[...Array(result.n_experts).keys()].map((e) => {
        const swatch = element("span", "swatch", `expert ${e}`);
        swatch.style.background = expertColour(e);
        if (!used.has(e)) swatch.classList.add("unused");
        return swatch;
      }),
    );
  }

  /** Per layer, a bar per expert as long as its share of the text's tokens, and the imbalance. */
  function renderLoads(result) {
    const blocks = result.layers.map((layer) => {
      const block = element("div", "load-layer");
      block.dataset.layer = layer.layer;
      const total = layer.load.reduce((a, b) => a + b, 0);
      const mean = total / layer.load.length;
      const imbalance = mean ? Math.max(...layer.load) / mean - 1 : 0;
      block.append(
        element("h3", "", `layer ${layer.layer}`),
        element("p", "hint", `imbalance (max/mean − 1) ${imbalance.toFixed(2)}`),
      );
      const most = Math.max(1, ...layer.load);
      layer.load.forEach((count, e) => {
        const row = element("div", "load-row");
        const fill = element("span", "load-fill");
        fill.style.width = `${(100 * count) / most}%`;
        fill.style.background = expertColour(e);
        const track = element("span", "load-track");
        track.append(fill);
        const value = element("span", "load-count", String(count));
        value.dataset.expert = e;
        row.append(element("span", "load-name", `e${e}`), track, value);
        block.append(row);
      });
      return block;
    });
    $("loads").replaceChildren(...blocks);
  }

  function render(result) {
    const moe = result.moe && result.layers.length > 0;
    $("dense-message").hidden = moe;
    $("dense-message").textContent = moe ? "" : result.message || "This model has no experts.";
    $("routing-card").hidden = !moe;
    $("load-card").hidden = !moe;
    $("summary").textContent = moe
      ? `${result.tokens.length} tokens · ${result.layers.length} MoE layers · ` +
        `top ${result.top_k} of ${result.n_experts} experts`
      : "";
    if (!moe) {
      // Nothing of an earlier text's routing may linger under the message.
      gridEl.replaceChildren();
      $("loads").replaceChildren();
      return;
    }
    renderGrid(result);
    renderLoads(result);
    inspect(null);
  }

  /** POST a JSON body to the API; the parsed answer, or null after showing why it failed. */
  async function post(path, body, signal) {
    if (!modelName) modelName = await Ismail.showServerStatus($("server-status"));
    if (modelName) body.model = modelName;
    return Ismail.postJSON(path, body, showError, signal);
  }

  async function route() {
    const text = textEl.value;
    if (inflight) inflight.abort();
    const controller = new AbortController();
    inflight = controller;
    const result = await post("v1/routing", { prompt: text }, controller.signal);
    if (inflight === controller) inflight = null;
    if (!result || controller.signal.aborted || textEl.value !== text) return;
    showError("");
    render(result);
  }

  /** Let the model continue the text (greedy), then show the routing of the whole text. */
  async function generate() {
    const button = $("generate");
    button.disabled = true;
    try {
      const body = { prompt: textEl.value, max_tokens: GENERATE_TOKENS, temperature: 0 };
      const result = await post("v1/completions", body);
      if (!result) return;
      textEl.value += result.choices[0].text;
      await route();
    } finally {
      button.disabled = false;
    }
  }

  textEl.addEventListener("input", Ismail.debounce(route, DEBOUNCE_MS));
  $("route").addEventListener("click", route);
  $("generate").addEventListener("click", generate);
  Ismail.bindApiKeyField($("api-key"), showError, async () => {
    modelName = await Ismail.showServerStatus($("server-status"));
    route();
  });

  route();
})();
