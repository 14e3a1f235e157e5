// The official OpenAI Node client, unchanged, against an inferq stack.
// Usage: node client_checks.mjs <baseURL> <check> <json args>; prints one JSON result line.
// Checks: chat-stream, chat-tools, embeddings, transcription.
import fs from "node:fs";
import OpenAI from "openai";

const [baseURL, check, rawArgs] = process.argv.slice(2);
const args = JSON.parse(rawArgs || "{}");
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0, timeout: 300_000 });

async function chatStream({ model, prompt, max_tokens }) {
  const stream = await client.chat.completions.create({
    model,
    messages: [{ role: "user", content: prompt }],
    temperature: 0,
    max_tokens,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let chunks = 0;
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    chunks += 1;
    for (const choice of chunk.choices) {
      text += choice.delta?.content ?? "";
      finish = choice.finish_reason ?? finish;
    }
    usage = chunk.usage ?? usage;
  }
  return { text, chunks, finish, usage };
}

async function chatTools({ model, messages, tools, tool_choice, max_tokens }) {
  // The same request whole and streamed; the streamed calls assembled from delta.tool_calls.
  const request = { model, messages, tools, tool_choice, temperature: 0, max_tokens };
  const whole = await client.chat.completions.create(request);
  const stream = await client.chat.completions.create({ ...request, stream: true });
  const calls = {};
  let finish = null;
  for await (const chunk of stream) {
    for (const choice of chunk.choices) {
      for (const piece of choice.delta?.tool_calls ?? []) {
        const call = (calls[piece.index] ??= { id: null, name: "", arguments: "" });
        call.id = piece.id ?? call.id;
        call.name += piece.function?.name ?? "";
        call.arguments += piece.function?.arguments ?? "";
      }
      finish = choice.finish_reason ?? finish;
    }
  }
  const choice = whole.choices[0];
  return {
    finish: choice.finish_reason,
    content: choice.message.content,
    calls: choice.message.tool_calls.map((c) => ({
      id: c.id,
      type: c.type,
      name: c.function.name,
      arguments: c.function.arguments,
    })),
    streamed: Object.values(calls),
    streamedFinish: finish,
  };
}

async function embeddings({ model, input }) {
  // No encoding_format: the client asks for base64 and decodes it into floats itself.
  const response = await client.embeddings.create({ model, input });
  return { vectors: response.data.map((d) => d.embedding), usage: response.usage };
}

async function transcription({ model, path }) {
  const result = await client.audio.transcriptions.create({
    model,
    file: fs.createReadStream(path),
  });
  return { text: result.text, usage: result.usage };
}

const checks = {
  "chat-stream": chatStream,
  "chat-tools": chatTools,
  embeddings,
  transcription,
};

try {
  const result = await checks[check](args);
  process.stdout.write(JSON.stringify(result) + "\n");
} catch (error) {
  process.stdout.write(
    JSON.stringify({ error: String(error), status: error?.status ?? null }) + "\n",
  );
  process.exitCode = 1;
}
