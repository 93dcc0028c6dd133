// The page at `/` of `malmm serve`: upload a video (POST /v1/videos), then caption it or ask about it
// (POST /v1/chat/completions with malmm://videos/ID, streamed), and show the answer with a timeline
// whose times seek the player. The player and the thumbnails read the picked file itself (a blob:
// URL): nothing is downloaded back. Every text the server sends is set as textContent, never markup.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY = "malmm-key";
  let video = null; // the stored video's record, once uploaded
  let source = null; // the blob: URL of the picked file
  let busy = false;

  function say(id, text) {
    $(id).textContent = text;
  }

  function bearer() {
    const key = sessionStorage.getItem(KEY);
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  // A time as a player shows it (1:02:03, 12:34, 0:05), as the HTML report writes it.
  function clock(seconds) {
    const whole = Math.max(0, Math.floor(seconds + 1e-6));
    const hours = Math.floor(whole / 3600);
    const minutes = Math.floor((whole % 3600) / 60);
    const secs = String(whole % 60).padStart(2, "0");
    return hours ? `${hours}:${String(minutes).padStart(2, "0")}:${secs}` : `${minutes}:${secs}`;
  }

  function megabytes(bytes) {
    return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
  }

  async function refusal(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (_) {
      // not JSON: said by status below
    }
    return `the server answered ${response.status}`;
  }

  function needKey(message) {
    $("key-section").hidden = false;
    say("error", message);
    $("key").focus();
  }

  function setReady(ready) {
    $("ask").disabled = !ready || busy;
    $("caption").disabled = !ready || busy;
  }

  // Whether the API answers with the key given (if any); says which model serves.
  async function probe() {
    const response = await fetch("/v1/models", { headers: bearer() });
    if (response.status === 401) {
      needKey(sessionStorage.getItem(KEY) ? "The key was refused: give it again." : "This server needs its API key.");
      return false;
    }
    if (!response.ok) {
      say("error", await refusal(response));
      return false;
    }
    const body = await response.json();
    const model = body.data && body.data[0];
    if (model) say("model", `Model: ${model.id}`);
    $("key-section").hidden = true;
    say("error", "");
    return true;
  }

  function pick(file) {
    if (!file) return;
    if (source) URL.revokeObjectURL(source);
    source = URL.createObjectURL(file);
    const player = $("player");
    player.src = source;
    player.hidden = false;
    $("result").hidden = true;
    upload(file);
  }

  function upload(file) {
    const previous = video;
    video = null;
    setReady(false);
    if (previous) fetch(`/v1/videos/${encodeURIComponent(previous.id)}`, { method: "DELETE", headers: bearer() });
    const bar = $("upload-progress");
    bar.value = 0;
    $("upload-row").hidden = false;
    say("upload-status", `Uploading ${file.name}…`);
    const request = new XMLHttpRequest();
    request.open("POST", "/v1/videos");
    for (const [name, value] of Object.entries(bearer())) request.setRequestHeader(name, value);
    request.upload.onprogress = (event) => {
      if (!event.lengthComputable) return;
      bar.value = (100 * event.loaded) / event.total;
      say("upload-status", `Uploading ${file.name}: ${megabytes(event.loaded)} of ${megabytes(event.total)}`);
    };
    request.onload = () => {
      let body = null;
      try {
        body = JSON.parse(request.responseText);
      } catch (_) {
        body = null;
      }
      if (request.status === 200 && body && body.id) {
        video = body;
        bar.value = 100;
        say("upload-status", `Uploaded ${body.filename} (${megabytes(body.bytes)}): caption it or ask about it.`);
        setReady(true);
        return;
      }
      const message = body && body.error ? body.error.message : `the server answered ${request.status}`;
      if (request.status === 401) needKey(message);
      say("upload-status", `Not uploaded: ${message}`);
    };
    request.onerror = () => say("upload-status", "Not uploaded: the connection failed.");
    const form = new FormData();
    form.append("file", file, file.name);
    request.send(form);
  }

  // The answer of a streamed chat completion: its content and the malmm record; progress comments
  // (": read 12 of 80 frames") are shown as they come.
  async function streamed(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let content = "";
    let record = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end = buffer.indexOf("\n\n");
      while (end >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (line.startsWith(": ")) say("progress", line.slice(2));
          if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
          const chunk = JSON.parse(line.slice(6));
          if (chunk.error) throw new Error(chunk.error.message);
          for (const choice of chunk.choices || []) {
            if (choice.delta && choice.delta.content) content += choice.delta.content;
          }
          if (chunk.malmm) record = chunk.malmm;
        }
        end = buffer.indexOf("\n\n");
      }
    }
    return { content, record };
  }

  async function ask(extra, text, label) {
    if (!video || busy) return;
    busy = true;
    setReady(false);
    say("error", "");
    say("progress", "Waiting for the model…");
    const parts = [{ type: "video_url", video_url: { url: video.url } }];
    if (text) parts.push({ type: "text", text });
    const body = { model: "malmm", stream: true, messages: [{ role: "user", content: parts }], ...extra };
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json", ...bearer() },
        body: JSON.stringify(body),
      });
      if (!response.ok) {
        const message = await refusal(response);
        if (response.status === 401) needKey(message);
        throw new Error(message);
      }
      const { content, record } = await streamed(response);
      show(label, content, record || {});
      say("progress", "");
    } catch (error) {
      say("progress", "");
      say("error", error.message);
    } finally {
      busy = false;
      setReady(video !== null);
    }
  }

  function seek(seconds) {
    const player = $("player");
    player.currentTime = seconds;
  }

  function timeButton(seconds) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "seek";
    button.dataset.time = String(seconds);
    button.setAttribute("aria-label", `play from ${clock(seconds)}`);
    const time = document.createElement("time");
    time.textContent = clock(seconds);
    button.append(time);
    button.addEventListener("click", () => seek(seconds));
    return button;
  }

  function show(label, content, record) {
    say("asked", label);
    let answer = content;
    if (record.caption) answer = record.caption;
    else if (record.answers && record.answers.length) answer = record.answers[0].answer;
    say("answer", answer);
    const segments = record.segments || [];
    const track = $("track");
    const bands = $("bands");
    track.replaceChildren();
    bands.replaceChildren();
    $("timeline").hidden = segments.length === 0;
    $("result").hidden = false;
    if (!segments.length) return;
    const total = Math.max(record.duration || 0, ...segments.map((s) => s.end), 1e-9);
    say("scale-end", clock(total));
    segments.forEach((segment, index) => {
      const span = document.createElement("a");
      span.className = "span";
      span.href = `#band-${index + 1}`;
      span.style.left = `${(100 * segment.start) / total}%`;
      span.style.width = `${(100 * (segment.end - segment.start)) / total}%`;
      span.title = `${clock(segment.start)}–${clock(segment.end)}: ${segment.text}`;
      span.setAttribute("aria-label", `${clock(segment.start)} to ${clock(segment.end)}`);
      span.addEventListener("click", () => seek(segment.start));
      track.append(span);

      const band = document.createElement("li");
      band.className = "band";
      band.id = `band-${index + 1}`;
      band.dataset.start = String(segment.start);
      const picture = document.createElement("div");
      picture.className = "nopicture";
      picture.textContent = "drawing the picture…";
      const when = document.createElement("div");
      when.className = "when";
      when.append(timeButton(segment.start), " – ", timeButton(segment.end));
      const text = document.createElement("p");
      text.textContent = segment.text;
      band.append(picture, when, text);
      bands.append(band);
    });
    drawPictures(segments, source);
  }

  // Each segment's first frame, drawn from the local file in a player of its own (a canvas, then a
  // data: URL): the server sends no picture and the video is not fetched again.
  async function drawPictures(segments, url) {
    const shot = document.createElement("video");
    shot.muted = true;
    shot.preload = "auto";
    shot.src = url;
    const ready = await new Promise((resolve) => {
      shot.addEventListener("loadeddata", () => resolve(true), { once: true });
      shot.addEventListener("error", () => resolve(false), { once: true });
    });
    const boxes = [...$("bands").children];
    for (let index = 0; index < segments.length; index += 1) {
      const box = boxes[index] && boxes[index].querySelector(".nopicture");
      if (!box || url !== source) return; // another answer or video since
      if (!ready) {
        box.textContent = "no picture: this browser cannot play the video";
        continue;
      }
      const segment = segments[index];
      await new Promise((resolve) => {
        shot.addEventListener("seeked", resolve, { once: true });
        shot.currentTime = Math.min(segment.start, Math.max(0, (shot.duration || segment.start) - 0.05));
      });
      const canvas = document.createElement("canvas");
      const scale = Math.min(1, 320 / (shot.videoWidth || 320));
      canvas.width = Math.max(1, Math.round((shot.videoWidth || 320) * scale));
      canvas.height = Math.max(1, Math.round((shot.videoHeight || 180) * scale));
      canvas.getContext("2d").drawImage(shot, 0, 0, canvas.width, canvas.height);
      const image = document.createElement("img");
      image.src = canvas.toDataURL("image/jpeg", 0.8);
      image.width = canvas.width;
      image.height = canvas.height;
      image.alt = `Frame at ${clock(segment.start)}: ${segment.text}`;
      box.replaceWith(image);
    }
    shot.removeAttribute("src");
    shot.load();
  }

  function start() {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY, $("key").value);
      $("key").value = "";
      probe();
    });
    $("file").addEventListener("change", () => pick($("file").files[0]));
    const drop = $("drop");
    drop.addEventListener("dragover", (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      pick(event.dataTransfer.files[0]);
    });
    $("ask-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const question = $("question").value.trim();
      if (question) ask({}, question, `Question: ${question}`);
    });
    $("caption-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const segment = Number($("segment").value);
      ask({ segment, malmm: { task: "caption" } }, "", `Caption, with segments of ${segment} s`);
    });
    probe();
  }

  start();
})();
