// seqport playground: picks the task the served artifact supports, streams answers over SSE.
"use strict";

const $ = (id) => document.getElementById(id);
let modelName = null;

async function loadModel() {
  const answer = await (await fetch("/v1/models")).json();
  const card = answer.data[0];
  modelName = card.id;
  $("model").textContent = `${card.id} (${card.seqport.architecture})`;
  for (const task of card.seqport.tasks) {
    const option = document.createElement("option");
    option.value = option.textContent = task;
    $("task").appendChild(option);
  }
  $("send").dataset.ready = "true";
}

function request(task, text) {
  const options = {
    model: modelName,
    max_tokens: Number($("max-tokens").value),
    temperature: Number($("temperature").value),
    stream_options: { include_usage: true }, // the last chunk counts the generated tokens
  };
  if (task === "chat") return ["/v1/chat/completions", { ...options, messages: [{ role: "user", content: text }], stream: true }];
  if (task === "translation") return ["/v1/translations", { ...options, input: text, stream: true }];
  if (task === "embedding") return ["/v1/embeddings", { model: modelName, input: text }];
  return ["/v1/completions", { ...options, prompt: text, stream: true }];
}

// Each SSE event is "data: {json}\n\n"; pieces of one event may arrive in different reads.
async function* sseChunks(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 2);
      if (!line.startsWith("data: ")) continue;
      const data = line.slice(6);
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

async function send() {
  const task = $("task").value;
  const [url, body] = request(task, $("prompt").value);
  $("output").textContent = "";
  $("error").textContent = "";
  $("stats").textContent = "";
  $("output").dataset.done = "false";
  const started = performance.now();
  const response = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  if (!response.ok) {
    $("error").textContent = (await response.json()).error.message;
    $("output").dataset.done = "true";
    return;
  }
  if (task === "embedding") {
    const vector = (await response.json()).data[0].embedding;
    $("output").textContent = `[${vector.slice(0, 8).map((x) => x.toFixed(4)).join(", ")}, …] (${vector.length} dimensions)`;
    $("output").dataset.done = "true";
    return;
  }
  let tokens = 0;
  let first = null;
  for await (const chunk of sseChunks(response)) {
    if (chunk.usage) tokens = chunk.usage.completion_tokens;
    const choice = chunk.choices[0];
    const piece = !choice ? "" : choice.delta ? choice.delta.content || "" : choice.text;
    if (piece) {
      first = first ?? performance.now();
      tokens += 1; // pieces until the usage chunk gives the exact count
      $("output").textContent += piece;
    }
    const seconds = (performance.now() - started) / 1000;
    $("stats").textContent = `${tokens} tokens in ${seconds.toFixed(2)} s, ${(tokens / seconds).toFixed(1)} tokens/s` +
      (first ? `, first after ${((first - started) / 1000).toFixed(2)} s` : "");
  }
  $("output").dataset.done = "true";
}

$("send").addEventListener("click", () => send().catch((e) => { $("error").textContent = String(e); $("output").dataset.done = "true"; }));
loadModel().catch((e) => { $("error").textContent = String(e); });
