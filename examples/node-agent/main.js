// An agent written with the bedrock-agentcore SDK, exactly as it would run on AgentCore.
// It keeps the conversation in memory (one session = one conversation) and can stream its reply.
import { BedrockAgentCoreApp } from "bedrock-agentcore/runtime";

const turns = [];

async function* streamWords(text) {
  for (const word of text.split(" ")) yield { delta: `${word} ` };
}

const app = new BedrockAgentCoreApp({
  invocationHandler: {
    // A plain value is answered as JSON; an async generator is streamed as server-sent events.
    process: (request, context) => {
      const prompt = typeof request?.prompt === "string" ? request.prompt : JSON.stringify(request);
      turns.push(prompt);
      const reply = `turn ${turns.length} of session ${context.sessionId}: you said "${prompt}"`;
      return request?.stream === true ? streamWords(reply) : { reply, turns: turns.length };
    },
  },
});

app.run();
