// Bundles the test page's script (page/page.ts with @push/client from source) into dist/page/.
import { build } from "esbuild";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
await build({
  entryPoints: [join(here, "page/page.ts")],
  outfile: join(here, "dist/page/page.js"),
  bundle: true,
  format: "iife",
  target: ["es2022"],
  conditions: ["source"],
  sourcemap: "inline",
  logLevel: "warning",
});
