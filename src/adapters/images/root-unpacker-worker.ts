/**
 * The worker thread of RootUnpacker (root-unpacker.ts): applies layers' tar bytes to an image
 * root with ImageRootWriter, whose synchronous file calls block only this thread.
 */
import { createHash, type Hash } from "node:crypto";
import { parentPort, workerData } from "node:worker_threads";
import { ArtifactProblem } from "../../core/preparation.ts";
import { ImageRootWriter } from "./image-root-writer.ts";
import type { FromUnpacker, ToUnpacker, UnpackerSettings } from "./root-unpacker.ts";
import { TarReader } from "./tar-reader.ts";

interface LayerInProgress {
  reader: TarReader;
  /** Of the layer's uncompressed tar: the image config's diff_id. */
  tarHash: Hash;
}

const port = parentPort;
if (port === null) throw new Error("root-unpacker-worker.ts runs as a worker thread");
const settings = workerData as UnpackerSettings;
let writer: ImageRootWriter | undefined;
let layer: LayerInProgress | undefined;
/** After a failure the unpack is over: what still comes is ignored until "close". */
let failed = false;

port.on("message", (message: ToUnpacker) => {
  if (message.kind === "close") {
    // A member's file is still open when its layer was cut short: closed before this thread goes.
    layer?.reader.close();
    port.close();
    return;
  }
  if (failed) return;
  try {
    const answer = handle(message);
    if (answer !== undefined) port.postMessage(answer);
  } catch (error) {
    failed = true;
    layer?.reader.close();
    layer = undefined;
    port.postMessage({
      kind: "failed",
      message: error instanceof Error ? error.message : String(error),
      problem: error instanceof ArtifactProblem,
    } satisfies FromUnpacker);
  }
});

function handle(message: Exclude<ToUnpacker, { kind: "close" }>): FromUnpacker | undefined {
  switch (message.kind) {
    case "layer":
      layer = startLayer();
      return undefined;
    case "bytes": {
      const chunk = Buffer.from(
        message.bytes.buffer,
        message.bytes.byteOffset,
        message.bytes.length,
      );
      const current = currentLayer();
      current.tarHash.update(chunk);
      current.reader.feed(chunk);
      return { kind: "taken" };
    }
    case "end-layer": {
      const current = currentLayer();
      layer = undefined;
      try {
        current.reader.end();
      } finally {
        current.reader.close();
      }
      return { kind: "layer-done", tarDigest: `sha256:${current.tarHash.digest("hex")}` };
    }
    case "finish": {
      const root = rootWriter();
      root.prepareForSandboxes(settings.rootNeeds);
      return { kind: "finished", sizeBytes: root.bytes };
    }
  }
}

function startLayer(): LayerInProgress {
  const root = rootWriter();
  root.startLayer();
  const reader = new TarReader({
    onEntry: (entry) => root.apply(entry),
    maxMetadataBytes: settings.maxMetadataBytes,
    onMetadata: (sizeBytes) => {
      root.countMetadata(sizeBytes);
    },
  });
  return { reader, tarHash: createHash("sha256") };
}

function rootWriter(): ImageRootWriter {
  writer ??= new ImageRootWriter(settings.root, settings.maxImageBytes);
  return writer;
}

function currentLayer(): LayerInProgress {
  if (layer === undefined) throw new Error("layer bytes arrived outside a layer");
  return layer;
}
