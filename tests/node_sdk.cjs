// Drives the proxy with the official OpenAI Node SDK (installed by `npm install --prefix tests/.npm openai@6`).
// Run by tests/test_node_sdk.py: BASE_URL and API_TOKEN come from the environment; prints one JSON
// object with what each call gave (or the error it raised), for the Python test to check.
"use strict";

const { OpenAI } = require("openai");

const options = { baseURL: process.env.BASE_URL, maxRetries: 0, timeout: 20000 };
const client = new OpenAI({ ...options, apiKey: process.env.API_TOKEN });
const stranger = new OpenAI({ ...options, apiKey: "not-the-token" });
const CHAT = "deepseek-ai/DeepSeek-V3";
const messages = [{ role: "user", content: "你好" }];

function failure(error) {
  return { status: error.status, message: error.message, code: error.code, type: error.type };
}

async function attempt(step) {
  try {
    return { ok: await step() };
  } catch (error) {
    return { error: failure(error) };
  }
}

const steps = {
  chat: async () => (await client.chat.completions.create({ model: CHAT, messages })).choices[0].message.content,
  stream: async () => {
    const stream = await client.chat.completions.create({ model: CHAT, messages, stream: true });
    const texts = [];
    for await (const chunk of stream) texts.push(chunk.choices[0]?.delta?.content ?? "");
    return { chunks: texts.length, text: texts.join("") };
  },
  completions: async () =>
    (await client.completions.create({ model: "Qwen/Qwen2.5-Coder-7B-Instruct", prompt: "def add(a, b):", suffix: "\n", max_tokens: 8 }))
      .choices[0].text,
  embeddings: async () => {
    const answer = await client.embeddings.create({ model: "BAAI/bge-m3", input: "你好" });
    return { dimensions: answer.data[0].embedding.length, first: answer.data[0].embedding[0], usage: answer.usage };
  },
  models: async () => (await client.models.list()).data.map((model) => model.id),
  model: async () => await client.models.retrieve(CHAT),
  unknownModel: async () => await client.models.retrieve("no-org/no-such-model"),
  images: async () => {
    const answer = await client.images.generate({ model: "Kwai-Kolors/Kolors", prompt: "a cat" });
    return { url: answer.data[0].url, created: answer.created };
  },
  upstreamError: async () => await client.chat.completions.create({ model: "no/such-model", messages }),
  badToken: async () => await stranger.chat.completions.create({ model: CHAT, messages }),
};

(async () => {
  const results = {};
  for (const [name, step] of Object.entries(steps)) results[name] = await attempt(step);
  process.stdout.write(JSON.stringify(results));
})();
