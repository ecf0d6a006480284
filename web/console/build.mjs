// Bundles the console into dist/ (committed: push-gateway embeds dist/index.html and
// dist/console.js at build time). Deterministic: the same sources and esbuild version
// give the same bytes, which scripts/test-web.sh checks.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
mkdirSync(join(here, "dist"), { recursive: true });
await build({
  entryPoints: [join(here, "src/console.ts")],
  outfile: join(here, "dist/console.js"),
  bundle: true,
  minify: true,
  format: "iife",
  target: ["es2022"],
  legalComments: "none",
  // @push/client from its TypeScript sources, not its build output.
  conditions: ["source"],
  logLevel: "warning",
});
copyFileSync(join(here, "index.html"), join(here, "dist/index.html"));
