// Copies the pinned front-end libraries from node_modules into static/vendor/, which is what the
// dashboard serves (it never loads anything from a CDN), and builds the record page's gRPC-web client
// from the .proto (protoc from grpcio-tools, with protoc-gen-es) into one ES module with esbuild.
// Refresh: cd dashboard && npm ci --ignore-scripts && npm run vendor
// (PYTHON names the Python with grpcio-tools; default ../.venv/bin/python)
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, readFileSync } from "node:fs";
import { build } from "esbuild";

const files = [
  ["node_modules/uplot/dist/uPlot.iife.min.js", "static/vendor/uPlot.iife.min.js"],
  ["node_modules/uplot/dist/uPlot.min.css", "static/vendor/uPlot.min.css"],
  ["node_modules/uplot/LICENSE", "static/vendor/uPlot.LICENSE"],
  ["node_modules/@echogarden/fvad-wasm/fvad.js", "static/vendor/fvad.js"],
  ["node_modules/@echogarden/fvad-wasm/fvad.wasm", "static/vendor/fvad.wasm"],
  ["node_modules/@echogarden/fvad-wasm/LICENSE", "static/vendor/fvad.LICENSE"],
  // The accessibility checker runs only in the browser tests: it goes to tests/, never to what is served.
  ["node_modules/axe-core/axe.min.js", "../tests/vendor/axe.min.js"],
  ["node_modules/axe-core/LICENSE", "../tests/vendor/axe-core.LICENSE"],
];
mkdirSync("static/vendor", { recursive: true });
for (const [from, to] of files) {
  copyFileSync(from, to);
  console.log(`vendored ${to}`);
}
mkdirSync("build/proto", { recursive: true });
execFileSync(process.env.PYTHON || "../.venv/bin/python", [
  "-m", "grpc_tools.protoc", "--plugin=protoc-gen-es=node_modules/.bin/protoc-gen-es", "--es_out=build/proto",
  "--es_opt=target=js", "-I", "../proto", "moodstream/v1/moodstream.proto"], { stdio: "inherit" });
await build({ entryPoints: ["record-client.mjs"], bundle: true, format: "esm", minify: true, target: "es2020",
  legalComments: "eof", outfile: "static/vendor/moodstream-grpc-web.js" });
console.log("vendored static/vendor/moodstream-grpc-web.js");
for (const name of ["uplot", "axe-core", "@echogarden/fvad-wasm", "@connectrpc/connect-web", "@bufbuild/protobuf"]) {
  console.log(`${name} ${JSON.parse(readFileSync(`node_modules/${name}/package.json`, "utf8")).version}`);
}
