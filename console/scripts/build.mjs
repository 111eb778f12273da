// Builds the console into dist/ (or the directory given as the first argument):
// src/main.ts and the client package's sources it imports, bundled and minified by
// esbuild, plus index.html and the stylesheet. The output is deterministic, so
// scripts/check-dist.mjs can compare a fresh build with the committed dist/.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const out = resolve(process.argv[2] ?? join(root, "dist"));

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
await build({
  entryPoints: { console: join(root, "src/main.ts"), style: join(root, "src/style.css") },
  bundle: true,
  minify: true,
  format: "esm",
  target: ["es2022", "chrome110", "firefox115", "safari16"],
  outdir: out,
  entryNames: "[name]",
  legalComments: "none",
  charset: "utf8",
  logLevel: "warning",
});
// One stylesheet name for index.html whatever esbuild calls the entry.
copyFileSync(join(out, "style.css"), join(out, "console.css"));
rmSync(join(out, "style.css"));
copyFileSync(join(root, "src/index.html"), join(out, "index.html"));
