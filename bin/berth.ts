#!/usr/bin/env node
import { runCli } from "../src/main/cli.ts";

process.exitCode = await runCli(process.argv.slice(2), process.env);
