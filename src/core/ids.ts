import { randomInt } from "node:crypto";

const alphanumerics = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/** AgentCore ids look like `{name}-{10 alphanumerics}`. */
export function newRuntimeId(name: string): string {
  let suffix = "";
  for (let index = 0; index < 10; index += 1)
    suffix += alphanumerics.charAt(randomInt(alphanumerics.length));
  return `${name}-${suffix}`;
}

export function runtimeArn(region: string, accountId: string, runtimeId: string): string {
  return `arn:aws:bedrock-agentcore:${region}:${accountId}:runtime/${runtimeId}`;
}

export function endpointArn(runtimeArnValue: string, endpointName: string): string {
  return `${runtimeArnValue}/runtime-endpoint/${endpointName}`;
}

const runtimeArnPattern =
  /^arn:aws[a-z-]*:bedrock-agentcore:[a-z0-9-]+:\d{12}:runtime\/([a-zA-Z][a-zA-Z0-9_]{0,47}-[a-zA-Z0-9]{10})$/;

/** The data plane accepts a runtime ARN or a bare runtime id; both name the same runtime. */
export function runtimeIdFromArnOrId(value: string): string {
  return runtimeArnPattern.exec(value)?.[1] ?? value;
}
