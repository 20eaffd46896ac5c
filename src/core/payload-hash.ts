/**
 * The SHA-256 of no bytes, in hex: the payload hash SigV4 signs for a request without a body (a
 * GET, a WebSocket upgrade). Both ends use it: the server's verifier and the CLI's signer.
 */
export const emptySha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
