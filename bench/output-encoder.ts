// Throughput of the core's output encoder (src/core/output-encoder.ts), the per-byte work of
// command output from drivers that hand over bytes, on 64 KiB reads of four kinds of output.
// Prints JSON: MB of program output encoded per second on one core, and text bytes per byte.
import { randomBytes } from "node:crypto";
import { OutputEncoder } from "../src/core/output-encoder.ts";

const readBytes = 65_536;
const rounds = Number(process.env["BENCH_ROUNDS"] ?? 2000);

function fill(text: string): Buffer {
  return Buffer.from(text.repeat(Math.ceil(readBytes / Buffer.byteLength(text)))).subarray(
    0,
    readBytes,
  );
}

const kinds: Record<string, Buffer> = {
  ascii: Buffer.alloc(readBytes, "a"),
  logLines: fill('2024-01-01T00:00:00Z INFO request done status=200 path="/x"\n'),
  utf8: fill("héllo wörld € 😀 日本語のテキスト\n"),
  binary: randomBytes(readBytes),
};

const results: Record<string, { megabytesPerSecond: number; textBytesPerByte: number }> = {};
for (const [kind, read] of Object.entries(kinds)) {
  const encoder = new OutputEncoder();
  for (let round = 0; round < rounds / 10; round += 1) encoder.encode(read);
  let textBytes = 0;
  const started = performance.now();
  for (let round = 0; round < rounds; round += 1)
    for (const piece of encoder.encode(read)) textBytes += piece.length;
  const seconds = (performance.now() - started) / 1000;
  results[kind] = {
    megabytesPerSecond: Math.round((readBytes * rounds) / 1e6 / seconds),
    textBytesPerByte: Math.round((textBytes / (readBytes * rounds)) * 100) / 100,
  };
}
console.log(JSON.stringify({ readBytes, rounds, results }, null, 2));
