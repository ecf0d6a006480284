// Bundles the test page's script (page/page.ts with @push/client from source) into
// dist/page/, and the tests of the console's own modules (bundled/, which import
// web/console/src: the console is not a library with a build output) into dist/test/.
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
await build({
  entryPoints: [join(here, "bundled/console-sent.test.ts")],
  outfile: join(here, "dist/test/console-sent.test.js"),
  bundle: true,
  platform: "node",
  format: "esm",
  target: ["node20"],
  sourcemap: "inline",
  logLevel: "warning",
});
