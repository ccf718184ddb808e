/* reelserve playground: vanilla JavaScript, no dependencies, no build step.
 *
 * It is an ordinary API client: the pasted key goes in an Authorization header on fetch()
 * calls to this server's /v1 routes. Errors come back in the API's envelope
 * ({code, error: {message, type, param}}) and are shown next to the field `param` names.
 * Progress is followed on the task's event stream when the server has one (read with fetch,
 * since EventSource cannot send an Authorization header), and by polling GET /v1/tasks/{id}
 * with backoff otherwise or whenever the stream breaks. The key's balance and limits come from
 * GET /v1/usage; a 402 (budget) or 429 (submits per minute) is shown as a sentence above the
 * button. Every piece of server data is put on the page with textContent or as an attribute,
 * never as HTML.
 */
"use strict";

(() => {
  const KEY_STORAGE = "reelserve.playground.apiKey";
  const PAGE_SIZE = 12;
  const MAX_IMAGE_BYTES = 20 * 1024 * 1024;
  const FINAL = new Set(["completed", "failed", "cancelled"]);
  const POLL_MIN_MS = 400;
  const POLL_MAX_MS = 5000;
  const MODE_NAMES = { t2v: "text-to-video", i2v: "image-to-video", flf2v: "first + last frame" };
  const FIELDS = [
    "model", "prompt", "negative_prompt", "duration", "aspect_ratio", "resolution",
    "first_frame_image", "last_frame_image", "seed", "sample_count", "generate_audio",
    "person_generation", "resize_mode", "enhance_prompt", "webhook_url",
  ];

  const IMAGE_FIELDS = [
    { name: "first_frame_image", label: "First frame (PNG, JPEG or WebP file)", frame: "first" },
    { name: "last_frame_image", label: "Last frame (optional, needs a first frame)", frame: "last" },
  ];

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) if (child) node.append(child);
    return node;
  };
  const apiUrl = (path) => new URL(path, document.baseURI).toString();
  const sleep = (ms, signal) => new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    if (signal) signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });

  const state = {
    key: "",
    models: new Map(),
    images: { first_frame_image: null, last_frame_image: null }, // {dataUrl, name, size}
    current: null, // the task view shown in the task panel
    renderedResultFor: null,
    watch: null, // AbortController of the running watcher
    nextAfter: null,
    cards: new Map(), // task id -> <li>
    session: 0, // bumped when the key changes: answers to an older key's requests are dropped
  };

  class ApiError extends Error {
    constructor(status, message, type, param, retryAfter) {
      super(message);
      this.status = status;
      this.type = type;
      this.param = param;
      this.retryAfter = retryAfter;
    }
  }

  /** One API call: JSON in, JSON out, the error envelope turned into an ApiError. */
  async function api(method, path, { body, signal } = {}) {
    const headers = { Authorization: `Bearer ${state.key}`, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(apiUrl(path), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        signal,
      });
    } catch (error) {
      if (signal && signal.aborted) throw error;
      throw new ApiError(0, `could not reach the server (${error.message})`, "network_error", null, null);
    }
    let payload = null;
    try { payload = await response.json(); } catch { payload = null; }
    if (!response.ok) {
      const err = (payload && payload.error) || {};
      const retry = Number(response.headers.get("Retry-After"));
      throw new ApiError(
        response.status,
        err.message || `the server answered HTTP ${response.status}`,
        err.type || "",
        err.param || null,
        Number.isFinite(retry) && retry > 0 ? retry : null,
      );
    }
    return payload;
  }

  // ---- field errors ---------------------------------------------------------------------

  function clearErrors() {
    for (const name of [...FIELDS, "api-key"]) setFieldError(name, null);
    $("form-error").hidden = true;
    $("form-error").textContent = "";
    delete $("form-error").dataset.status;
  }

  function setFieldError(name, message) {
    const box = $(`${name}-error`);
    if (!box) return false;
    const inputs = [$(name), $(`${name}_url`)].filter(Boolean);
    if (message) {
      box.textContent = message;
      box.hidden = false;
      for (const input of inputs) input.setAttribute("aria-invalid", "true");
    } else {
      box.textContent = "";
      box.hidden = true;
      for (const input of inputs) input.removeAttribute("aria-invalid");
    }
    return true;
  }

  /** What a refusal of the key's budget (402) or rate (429) says, as a sentence. */
  function limitMessage(error) {
    if (error.status === 402) {
      return `Not enough balance: ${error.message}.`;
    }
    if (error.status === 429) {
      const wait = error.retryAfter
        ? ` Try again in ${error.retryAfter} second${error.retryAfter === 1 ? "" : "s"}.` : "";
      return `Too many submits: ${error.message}.${wait}`;
    }
    return null;
  }

  /** Show an API error next to the field it names, or above the submit button. */
  function showError(error) {
    const param = error.param;
    if (error.status === 401) {
      setFieldError("api-key", `${error.message}. Check the key above.`);
      $("api-key").focus();
      return;
    }
    const limited = limitMessage(error);
    if (limited) {
      const box = $("form-error");
      box.textContent = limited;
      box.dataset.status = String(error.status);
      box.hidden = false;
      return;
    }
    if (param && FIELDS.includes(param) && setFieldError(param, error.message)) {
      const input = $(param);
      const details = input && input.closest("details");
      if (details) details.open = true;
      const box = $("form-error");
      box.textContent = `The server refused the request: fix “${param}” (see below the field).`;
      box.hidden = false;
      if (input && !input.disabled) input.focus();
      return;
    }
    const box = $("form-error");
    box.textContent = error.message;
    box.hidden = false;
  }

  // ---- the API key ------------------------------------------------------------------------

  /** Keep (or with null, remove) the key in local storage; false where storage is refused. */
  function store(key) {
    try {
      if (key === null) localStorage.removeItem(KEY_STORAGE);
      else localStorage.setItem(KEY_STORAGE, key);
      return true;
    } catch {
      return false;
    }
  }

  async function useKey(key) {
    const session = ++state.session;
    state.key = key.trim();
    setFieldError("api-key", null);
    if (!state.key) {
      setFieldError("api-key", "Paste an API key (it starts with rs_test_ or rs_live_).");
      return;
    }
    try {
      await loadModels(session);
    } catch (error) {
      if (session === state.session) showError(error);
      return;
    }
    if (session !== state.session) return;
    $("api-key-help").textContent = store(state.key)
      ? "Key saved in this browser's local storage. “Forget key” removes it."
      : "This browser does not allow local storage: the key is kept until the page is closed.";
    $("refresh-tasks").disabled = false;
    loadAccount();
    loadTasks(true);
  }

  // ---- the key's balance and limits ----------------------------------------------------------

  /** An amount as the server's messages write it: at most 6 decimals, no trailing zeros. */
  function money(amount, currency) {
    return `${Number(Number(amount).toFixed(6))} ${currency}`;
  }

  function describeBalance(balance, test) {
    const c = balance.currency;
    const held = `reserved ${money(balance.reserved, c)}, spent ${money(balance.spent, c)}`;
    const text = balance.budget === null
      ? `no budget (${held})`
      : `${money(balance.left, c)} left of ${money(balance.budget, c)} (${held})`;
    return test ? `${text} · test key: list prices, no money` : text;
  }

  function describeLimits(limits) {
    const parts = [];
    if (limits.max_running !== null) parts.push(`${limits.max_running} running at once`);
    if (limits.rate_per_minute !== null) {
      parts.push(`${limits.rate_per_minute} submit${limits.rate_per_minute === 1 ? "" : "s"} per minute`);
    }
    if (limits.budget !== null) parts.push(`budget ${money(limits.budget, "").trim()}`);
    if (limits.models !== null) parts.push(`models: ${limits.models.join(", ")}`);
    return parts.length ? parts.join(" · ") : "none";
  }

  /** Show the key's balance and limits (GET /v1/usage); quietly keep the last ones on error. */
  async function loadAccount() {
    if (!state.key) return;
    const session = state.session;
    try {
      const usage = (await api("GET", "v1/usage?limit=1")).data;
      if (session !== state.session) return;
      $("account-balance").textContent = describeBalance(usage.balance, usage.test);
      $("account-limits").textContent = usage.limits ? describeLimits(usage.limits) : "none";
      $("account-status").textContent = "";
      $("account").hidden = false;
    } catch (error) {
      if (session !== state.session) return;
      $("account-status").textContent = `Could not read the balance: ${error.message}`;
    }
  }

  function forgetKey() {
    state.session += 1;
    store(null);
    stopWatching();
    state.key = "";
    state.models.clear();
    state.current = null;
    state.renderedResultFor = null;
    $("api-key").value = "";
    const select = $("model");
    select.replaceChildren(el("option", { value: "", text: "Paste an API key first" }));
    select.disabled = true;
    $("model-info").textContent = "";
    $("submit").disabled = true;
    $("refresh-tasks").disabled = true;
    $("task-view").hidden = true;
    $("task-empty").hidden = false;
    $("task-result").replaceChildren();
    $("task-list").replaceChildren();
    state.cards.clear();
    $("load-more").hidden = true;
    $("tasks-status").textContent = "";
    $("account").hidden = true;
    $("account-balance").textContent = "";
    $("account-limits").textContent = "";
    $("account-status").textContent = "";
    clearErrors();
    $("api-key-help").textContent = "Key removed from this browser.";
    $("api-key").focus();
  }

  // ---- models and their capabilities --------------------------------------------------------

  async function loadModels(session) {
    const payload = await api("GET", "v1/models");
    if (session !== state.session) return;
    const select = $("model");
    const previous = select.value;
    state.models.clear();
    select.replaceChildren();
    for (const model of payload.data) {
      state.models.set(model.id, model);
      const label = model.available === false ? `${model.id} (not available for this key)` : model.id;
      select.append(el("option", { value: model.id, text: label }));
    }
    const preferred = state.models.has(previous) ? previous
      : [...state.models.values()].find((m) => m.available !== false)?.id;
    if (preferred) select.value = preferred;
    select.disabled = state.models.size === 0;
    $("submit").disabled = state.models.size === 0;
    applyModel();
  }

  function fillSelect(select, values, { label = (v) => String(v), keep = true, fallback } = {}) {
    const before = select.value;
    select.replaceChildren(...values.map((v) => el("option", { value: String(v), text: label(v) })));
    if (keep && values.map(String).includes(before)) select.value = before;
    else if (fallback !== undefined && values.map(String).includes(String(fallback))) select.value = String(fallback);
  }

  /** Constrain every choice to what the selected model can do. */
  function applyModel() {
    const model = state.models.get($("model").value);
    if (!model) return;
    const parts = [model.description, `runs on ${model.runs_on || model.provider}`,
      `about ${model.estimated_time} s per video`, `${model.fps} fps`];
    if (model.available === false) parts.push("not available for this key");
    $("model-info").textContent = parts.filter(Boolean).join(" · ");

    fillSelect($("resolution"), model.resolutions, { fallback: "720p" });
    fillSelect($("aspect_ratio"), model.aspect_ratios, { fallback: "16:9" });
    fillSelect($("duration"), model.durations, { label: (d) => `${d} s`, keep: true, fallback: model.default_duration });
    const maxSamples = Math.max(1, Math.min(4, model.max_sample_count || 1));
    fillSelect($("sample_count"), Array.from({ length: maxSamples }, (_, i) => i + 1), { fallback: 1 });

    const audio = $("generate_audio");
    audio.disabled = !model.audio;
    if (!model.audio) audio.checked = false;
    $("generate_audio-hint").textContent = model.audio ? "" : "This model makes silent video.";
    applyResolution();
    applyModes();
  }

  /** Some models allow a resolution only at some durations (Veo 3.1: 1080p and 4K need 8 s). */
  function applyResolution() {
    const model = state.models.get($("model").value);
    if (!model) return;
    const resolution = $("resolution").value;
    const allowed = (model.resolution_durations || {})[resolution];
    const select = $("duration");
    for (const option of select.options) {
      option.disabled = Boolean(allowed) && !allowed.includes(Number(option.value));
    }
    if (select.selectedOptions[0] && select.selectedOptions[0].disabled) {
      const firstAllowed = [...select.options].reverse().find((o) => !o.disabled);
      if (firstAllowed) select.value = firstAllowed.value;
    }
    $("duration-hint").textContent = allowed
      ? `${resolution} needs ${allowed.join(" or ")} s on this model.` : "";
  }

  function imageSource(name) {
    const file = state.images[name];
    if (file) return file.dataUrl;
    const url = $(`${name}_url`).value.trim();
    return url || null;
  }

  function currentMode() {
    if (!imageSource("first_frame_image")) return "t2v";
    return imageSource("last_frame_image") ? "flf2v" : "i2v";
  }

  /** Enable the image inputs the model's modes allow, and say which mode the request is. */
  function applyModes() {
    const model = state.models.get($("model").value);
    const modes = model ? model.modes : ["t2v", "i2v", "flf2v"];
    const firstOk = modes.includes("i2v") || modes.includes("flf2v");
    const hasFirst = Boolean(imageSource("first_frame_image"));
    if (!hasFirst) clearImage("last_frame_image"); // a last frame only goes with a first one
    const lastOk = modes.includes("flf2v") && hasFirst;
    for (const [name, ok] of [["first_frame_image", firstOk], ["last_frame_image", lastOk]]) {
      $(name).disabled = !ok;
      $(`${name}_url`).disabled = !ok;
    }
    $("first_frame_image-hint").textContent = firstOk ? "" : "This model does not take images.";
    $("last_frame_image-hint").textContent = !modes.includes("flf2v")
      ? "This model cannot end on a given frame." : (hasFirst ? "" : "Choose a first frame first.");
    $("resize_mode").disabled = !hasFirst;
    const mode = currentMode();
    const supported = modes.includes(mode);
    $("mode-label").textContent = `— this request: ${MODE_NAMES[mode]}${supported ? "" : " (not supported by this model)"}`;
  }

  // ---- first / last frame images ----------------------------------------------------------------

  function readAsDataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(String(reader.result));
      reader.onerror = () => reject(reader.error || new Error("could not read the file"));
      reader.readAsDataURL(file);
    });
  }

  async function chooseImage(name, input) {
    setFieldError(name, null);
    const file = input.files && input.files[0];
    if (!file) { removeImage(name); return; }
    if (!/^image\/(png|jpeg|webp)$/.test(file.type)) {
      input.value = "";
      setFieldError(name, `${name} must be a PNG, JPEG or WebP image (got ${file.type || "an unknown type"})`);
      return;
    }
    if (file.size > MAX_IMAGE_BYTES) {
      input.value = "";
      setFieldError(name, `${name} must be at most 20 MB (got ${(file.size / 1048576).toFixed(1)} MB)`);
      return;
    }
    let dataUrl;
    try {
      dataUrl = await readAsDataUrl(file);
    } catch (error) {
      setFieldError(name, `could not read ${file.name}: ${error.message}`);
      return;
    }
    state.images[name] = { dataUrl, name: file.name, size: file.size };
    $(`${name}_url`).value = "";
    const figure = document.querySelector(`[data-image="${name}"] .preview`);
    const img = figure.querySelector("img");
    const caption = figure.querySelector("figcaption");
    caption.textContent = `${file.name} · ${(file.size / 1024).toFixed(0)} KB`;
    img.onload = () => {
      caption.textContent = `${file.name} · ${img.naturalWidth}×${img.naturalHeight} · ${(file.size / 1024).toFixed(0)} KB`;
    };
    img.src = dataUrl;
    figure.hidden = false;
    applyModes();
  }

  function clearImage(name) {
    state.images[name] = null;
    $(name).value = "";
    $(`${name}_url`).value = "";
    const figure = document.querySelector(`[data-image="${name}"] .preview`);
    figure.hidden = true;
    figure.querySelector("img").removeAttribute("src");
  }

  function removeImage(name) {
    clearImage(name);
    applyModes();
  }

  /** The two image fields are one <template id="image-field"> in index.html; put a filled-in
   * copy of it in its place for each of them. Runs first in init(), before anything looks up
   * their elements. */
  function buildImageFields() {
    const template = $("image-field");
    const fields = IMAGE_FIELDS.map(({ name, label, frame }) => {
      const field = template.content.querySelector(".image-field").cloneNode(true);
      field.dataset.image = name;
      const [fileLabel, urlLabel] = field.querySelectorAll("label");
      const fileInput = field.querySelector('input[type="file"]');
      const urlInput = field.querySelector('input[type="url"]');
      fileLabel.htmlFor = name;
      fileLabel.textContent = label;
      Object.assign(fileInput, { id: name, name });
      fileInput.setAttribute("aria-describedby", `${name}-hint ${name}-error`);
      urlLabel.htmlFor = `${name}_url`;
      urlInput.id = `${name}_url`;
      urlInput.setAttribute("aria-describedby", `${name}-error`);
      field.querySelector(".preview img").alt = `Preview of the ${frame} frame`;
      field.querySelector(".remove-image").textContent = `Remove ${frame} frame`;
      field.querySelector(".hint").id = `${name}-hint`;
      field.querySelector(".field-error").id = `${name}-error`;
      return field;
    });
    template.replaceWith(...fields);
  }

  // ---- submit -------------------------------------------------------------------------------

  function buildRequest() {
    const body = {
      model: $("model").value,
      prompt: $("prompt").value,
      duration: Number($("duration").value),
      resolution: $("resolution").value,
      aspect_ratio: $("aspect_ratio").value,
      sample_count: Number($("sample_count").value),
      generate_audio: $("generate_audio").checked,
      enhance_prompt: true,
    };
    // Omitted, the upstream applies its own policy (Veo's differs by backend and mode).
    const person = $("person_generation").value;
    if (person) body.person_generation = person;
    const negative = $("negative_prompt").value;
    if (negative.trim()) body.negative_prompt = negative;
    const seed = $("seed").value.trim();
    // A number goes as a JSON integer; anything else goes as typed, so the server names the problem.
    if (seed) body.seed = /^-?\d+$/.test(seed) && Number.isSafeInteger(Number(seed)) ? Number(seed) : seed;
    const first = imageSource("first_frame_image");
    const last = imageSource("last_frame_image");
    if (first) {
      body.first_frame_image = first;
      body.resize_mode = $("resize_mode").value;
    }
    if (last) body.last_frame_image = last;
    const webhook = $("webhook_url").value.trim();
    if (webhook) body.webhook_url = webhook;
    return body;
  }

  async function submit(event) {
    event.preventDefault();
    clearErrors();
    if (!state.key) { setFieldError("api-key", "Paste an API key first."); return; }
    const button = $("submit");
    button.disabled = true;
    $("submit-status").textContent = "Submitting…";
    try {
      const session = state.session;
      const payload = await api("POST", "v1/videos/generations", { body: buildRequest() });
      if (session !== state.session) return;
      const taskId = payload.data[0].task_id;
      $("submit-status").textContent = `Submitted ${taskId}.`;
      loadAccount(); // its reservation; again once the task has finished (below)
      const panel = $("task-panel").getBoundingClientRect();
      if (panel.top > window.innerHeight || panel.bottom < 0) {
        $("task-panel").scrollIntoView({ block: "start" }); // on a narrow screen it is below the form
      }
      await openTask(taskId);
    } catch (error) {
      $("submit-status").textContent = "";
      showError(error);
    } finally {
      button.disabled = state.models.size === 0;
      loadAccount();
    }
  }

  // ---- the current task -----------------------------------------------------------------------

  function stopWatching() {
    if (state.watch) state.watch.abort();
    state.watch = null;
  }

  async function openTask(taskId) {
    stopWatching();
    const controller = new AbortController();
    state.watch = controller;
    state.current = null;
    state.renderedResultFor = null;
    $("task-result").replaceChildren();
    $("task-error").hidden = true;
    $("task-empty").hidden = true;
    $("task-view").hidden = false;
    $("task-id").textContent = taskId;
    $("task-status").textContent = "loading";
    $("task-status").className = "badge";
    $("task-progress-text").textContent = "";
    $("task-transport").textContent = "";
    markCurrentCard(taskId);
    try {
      const view = (await api("GET", `v1/tasks/${encodeURIComponent(taskId)}`, { signal: controller.signal })).data;
      renderTask(view);
      upsertCard(view);
      if (!FINAL.has(view.status)) await watch(taskId, controller.signal);
    } catch (error) {
      if (controller.signal.aborted) return;
      $("task-error").textContent = error.message;
      $("task-error").hidden = false;
    }
  }

  async function watch(taskId, signal) {
    let view = state.current;
    if (await followEvents(taskId, signal)) return;
    if (signal.aborted) return;
    $("task-transport").textContent = "Following progress by polling.";
    let delay = POLL_MIN_MS;
    while (!signal.aborted) {
      await sleep(delay, signal);
      if (signal.aborted) return;
      let next;
      try {
        next = (await api("GET", `v1/tasks/${encodeURIComponent(taskId)}`, { signal })).data;
      } catch (error) {
        if (signal.aborted) return;
        if (error.status === 401 || error.status === 404) {
          $("task-error").textContent = error.message;
          $("task-error").hidden = false;
          return;
        }
        delay = Math.max(Math.min(delay * 2, POLL_MAX_MS * 2), (error.retryAfter || 0) * 1000);
        $("task-transport").textContent = `Connection trouble (${error.message}); retrying in ${Math.round(delay / 1000)} s.`;
        continue;
      }
      const changed = !view || next.status !== view.status || next.progress !== view.progress;
      view = next;
      renderTask(view);
      if (FINAL.has(view.status)) { upsertCard(view); return; }
      // Back off while nothing changes; look again soon after something did.
      delay = changed ? POLL_MIN_MS : Math.min(Math.round(delay * 1.5), POLL_MAX_MS);
      $("task-transport").textContent = "Following progress by polling.";
    }
  }

  /**
   * Follow GET /v1/tasks/{id}/events when the server offers it. An event whose data is the
   * task's view (what GET /v1/tasks/{id} answers) is shown as it is; any other event is taken
   * as "something changed" and the task is read again (coalesced), so the page does not depend
   * on the event's exact shape. Answers true when the task reached a final state this way,
   * false to fall back to polling (no such route, an older server, a broken stream).
   */
  async function followEvents(taskId, signal) {
    let response;
    try {
      response = await fetch(apiUrl(`v1/tasks/${encodeURIComponent(taskId)}/events`), {
        headers: { Authorization: `Bearer ${state.key}`, Accept: "text/event-stream" },
        cache: "no-store",
        signal,
      });
    } catch {
      return false;
    }
    const type = response.headers.get("Content-Type") || "";
    if (!response.ok || !type.startsWith("text/event-stream") || !response.body) {
      try { await response.body?.cancel(); } catch { /* nothing to release */ }
      return false;
    }
    $("task-transport").textContent = "Following progress on the live event stream.";
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let refreshing = null;
    let again = false;
    const refresh = async () => {
      if (refreshing) { again = true; return refreshing; }
      refreshing = (async () => {
        do {
          again = false;
          try {
            const view = (await api("GET", `v1/tasks/${encodeURIComponent(taskId)}`, { signal })).data;
            renderTask(view);
            if (FINAL.has(view.status)) upsertCard(view);
          } catch { /* the next event or the polling fallback retries */ }
        } while (again && !signal.aborted);
        refreshing = null;
      })();
      return refreshing;
    };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:"))
            .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
          if (!data && !/^event:/m.test(block)) continue; // a keep-alive comment
          let hint = null;
          try { hint = JSON.parse(data); } catch { hint = null; }
          const view = hint && typeof hint === "object" && hint.data && typeof hint.data === "object" ? hint.data : hint;
          const complete = view && view.id === taskId && typeof view.status === "string"
            && typeof view.progress === "number" && (view.status !== "completed" || view.result);
          if (complete) {
            renderTask(view);
            if (FINAL.has(view.status)) upsertCard(view);
          } else {
            await refresh();
          }
          if (state.current && FINAL.has(state.current.status)) {
            reader.cancel().catch(() => {});
            return true;
          }
        }
      }
    } catch {
      if (signal.aborted) return true;
    }
    if (refreshing) await refreshing;
    await refresh();
    return Boolean(state.current && FINAL.has(state.current.status));
  }

  function describeTime(seconds) {
    if (seconds === undefined || seconds === null) return "";
    if (seconds < 60) return `${Math.max(0, Math.round(seconds))} s`;
    return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  }

  function renderTask(view) {
    // Progress never goes back, even if an older answer arrives after a newer one.
    if (state.current && state.current.id === view.id) {
      if (FINAL.has(state.current.status) && !FINAL.has(view.status)) return;
      if (view.progress < state.current.progress && !FINAL.has(view.status)) view = { ...view, progress: state.current.progress };
    }
    state.current = view;
    $("task-id").textContent = view.id;
    const badge = $("task-status");
    badge.textContent = view.status;
    badge.className = `badge ${view.status}`;
    $("task-progress").value = view.progress;
    $("task-progress").setAttribute("aria-valuetext", `${view.progress}% ${view.status}`);
    const parts = [`${view.progress}%`, view.status];
    if (view.status === "pending" && typeof view.queue_position === "number") {
      parts.push(view.queue_position === 0 ? "next in the queue" : `${view.queue_position} ahead in the queue`);
    }
    if (view.status === "processing" && view.estimated_time) {
      const elapsed = Date.now() / 1000 - view.created;
      const left = view.progress > 3
        ? elapsed * (100 - view.progress) / view.progress
        : Math.max(0, view.estimated_time - elapsed);
      parts.push(`about ${describeTime(left)} left`);
    }
    if (view.actual_time !== undefined) parts.push(`took ${describeTime(view.actual_time)}`);
    parts.push(`model ${view.model}`);
    $("task-progress-text").textContent = parts.join(" · ");
    $("cancel-task").hidden = FINAL.has(view.status);
    const errorBox = $("task-error");
    if (view.status === "failed" && view.error) {
      errorBox.textContent = `Failed (${view.error.code}): ${view.error.message}`;
      errorBox.hidden = false;
    } else if (view.status === "cancelled") {
      errorBox.textContent = "This task was cancelled.";
      errorBox.hidden = false;
    } else {
      errorBox.hidden = true;
    }
    if (FINAL.has(view.status)) $("task-transport").textContent = "";
    if (view.status === "completed" && view.result && state.renderedResultFor !== view.id) {
      state.renderedResultFor = view.id;
      renderResult(view);
    }
  }

  function renderResult(view) {
    const box = $("task-result");
    box.replaceChildren();
    if (view.result.expired) {
      box.append(el("p", { class: "hint", text: "This task's files have expired and were deleted." }));
      return;
    }
    view.result.videos.forEach((video, index) => {
      const label = view.result.videos.length > 1 ? `Sample ${index + 1}` : "Result";
      const player = el("video", {
        controls: true,
        playsinline: true,
        preload: view.result.videos.length > 1 ? "metadata" : "auto",
        poster: video.thumbnail_url,
        src: video.url[0],
        "aria-label": `${label} of ${view.id}`,
      });
      const sizeMb = video.size_bytes ? ` · ${(video.size_bytes / 1048576).toFixed(2)} MB` : "";
      const caption = el("figcaption", {
        text: `${label}: ${video.width}×${video.height} · ${video.duration} s · ${video.fps} fps · seed ${video.seed} · ${video.has_audio ? "with audio" : "no audio"}${sizeMb}. Links expire ${new Date(video.expires_at * 1000).toLocaleString()}.`,
      });
      const suffix = view.result.videos.length > 1 ? `-${index + 1}` : "";
      const links = el("div", { class: "links" },
        el("a", { href: video.url[0], download: `${view.id}${suffix}.mp4`, text: "Download MP4" }),
        el("a", { href: video.thumbnail_url, download: `${view.id}${suffix}.jpg`, text: "Download thumbnail" }),
      );
      box.append(el("figure", {}, player, caption, links));
    });
  }

  async function cancelTask() {
    const view = state.current;
    if (!view) return;
    const button = $("cancel-task");
    button.disabled = true;
    try {
      const answer = (await api("POST", `v1/tasks/${encodeURIComponent(view.id)}/cancel`)).data;
      renderTask(answer);
      upsertCard(answer);
      if (!FINAL.has(answer.status)) $("task-progress-text").textContent += " · cancelling…";
    } catch (error) {
      $("task-error").textContent = error.message;
      $("task-error").hidden = false;
    } finally {
      button.disabled = false;
      loadAccount();
    }
  }

  // ---- the task list ------------------------------------------------------------------------------

  function card(view) {
    const video = view.status === "completed" && view.result && !view.result.expired ? view.result.videos[0] : null;
    const thumb = el("span", { class: "thumb" });
    if (video) {
      thumb.append(el("img", { src: video.thumbnail_url, alt: `Thumbnail of ${view.id}`, loading: "lazy", width: 320, height: 180 }));
    } else {
      thumb.textContent = view.status === "processing" || view.status === "pending"
        ? `${view.status} · ${view.progress}%` : view.status;
    }
    const created = new Date(view.created * 1000).toLocaleString();
    const meta = el("span", { class: "meta" },
      el("span", { class: "title", text: `${view.model} · ${view.status}` }),
      el("span", { class: "sub", text: video ? `${video.width}×${video.height} · ${video.duration} s · ${created}` : created }),
      el("span", { class: "sub", text: view.id }),
    );
    const button = el("button", { type: "button", class: "task-card", "data-task-id": view.id,
      "aria-label": `Open task ${view.id}, ${view.status}, ${view.model}, created ${created}` }, thumb, meta);
    if (state.current && state.current.id === view.id) button.setAttribute("aria-current", "true");
    button.addEventListener("click", () => openTask(view.id));
    return el("li", {}, button);
  }

  function upsertCard(view) {
    const item = card(view);
    const existing = state.cards.get(view.id);
    if (existing) existing.replaceWith(item);
    else $("task-list").prepend(item);
    state.cards.set(view.id, item);
    $("tasks-status").textContent = "";
  }

  function markCurrentCard(taskId) {
    for (const [id, item] of state.cards) {
      const button = item.querySelector(".task-card");
      if (id === taskId) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
    }
  }

  async function loadTasks(reset) {
    if (!state.key) return;
    const session = state.session;
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (!reset && state.nextAfter) params.set("after", state.nextAfter);
    $("tasks-status").textContent = "Loading tasks…";
    $("load-more").disabled = true;
    try {
      const payload = await api("GET", `v1/tasks?${params}`);
      if (session !== state.session) return;
      if (reset) {
        $("task-list").replaceChildren();
        state.cards.clear();
      }
      for (const view of payload.data) {
        if (state.cards.has(view.id)) continue;
        const item = card(view);
        $("task-list").append(item);
        state.cards.set(view.id, item);
      }
      state.nextAfter = payload.has_more ? payload.next_after : null;
      $("load-more").hidden = !payload.has_more;
      $("tasks-status").textContent = state.cards.size ? "" : "No tasks yet.";
    } catch (error) {
      if (session !== state.session) return;
      $("tasks-status").textContent = `Could not load tasks: ${error.message}`;
    } finally {
      $("load-more").disabled = false;
    }
  }

  // ---- wiring -------------------------------------------------------------------------------------

  function init() {
    buildImageFields();
    $("key-form").addEventListener("submit", (event) => { event.preventDefault(); useKey($("api-key").value); });
    $("forget-key").addEventListener("click", forgetKey);
    $("gen-form").addEventListener("submit", submit);
    $("model").addEventListener("change", () => { setFieldError("model", null); applyModel(); });
    $("resolution").addEventListener("change", applyResolution);
    for (const name of ["first_frame_image", "last_frame_image"]) {
      $(name).addEventListener("change", () => chooseImage(name, $(name)));
      $(`${name}_url`).addEventListener("input", () => {
        if ($(`${name}_url`).value.trim() && state.images[name]) {
          state.images[name] = null;
          $(name).value = "";
          document.querySelector(`[data-image="${name}"] .preview`).hidden = true;
        }
        setFieldError(name, null);
        applyModes();
      });
      document.querySelector(`[data-image="${name}"] .remove-image`)
        .addEventListener("click", () => removeImage(name));
    }
    for (const name of FIELDS) {
      const input = $(name);
      if (input && name !== "first_frame_image" && name !== "last_frame_image") {
        input.addEventListener("input", () => setFieldError(name, null));
      }
    }
    $("cancel-task").addEventListener("click", cancelTask);
    $("refresh-tasks").addEventListener("click", () => loadTasks(true));
    $("load-more").addEventListener("click", () => loadTasks(false));
    applyModes();
    let saved = null;
    try { saved = localStorage.getItem(KEY_STORAGE); } catch { saved = null; }
    if (saved) {
      $("api-key").value = saved;
      useKey(saved);
    }
  }

  init();
})();
