import { tarOf, type LayerEntry } from "./oci-images.ts";

/** Small files in the big layer: about 120 MB of them. */
const smallFiles = 30_000;
const smallFileBytes = 4000;

/**
 * An image of a program, a layer of many small files, and a layer that empties their folder
 * again (an opaque whiteout) but for one file: every one of them is written, then removed,
 * while Berth unpacks. Used by test/image-unpacking.test.ts and bench/image-unpacking.ts.
 */
export function bigImageLayers(): Buffer[] {
  const program = tarOf([
    { path: "bin/", type: "directory" },
    { path: "bin/agent", content: "#!/bin/sh\n", mode: 0o755 },
  ]);
  const content = Buffer.alloc(smallFileBytes, "a");
  const files: LayerEntry[] = [{ path: "data/", type: "directory" }];
  for (let index = 0; index < smallFiles; index += 1) {
    const folder = `data/${index - (index % 500)}`;
    if (index % 500 === 0) files.push({ path: `${folder}/`, type: "directory" });
    files.push({ path: `${folder}/${index}`, content });
  }
  const emptied = tarOf([{ path: "data/.wh..wh..opq" }, { path: "data/kept", content: "kept" }]);
  return [program, tarOf(files), emptied];
}
