// Moved to adapters/host, which every adapter may import; kept here so that existing imports
// still resolve.
export { nativeBinary, type NativeBinary } from "../host/native-binaries.ts";
