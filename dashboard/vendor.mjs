// Copies the pinned front-end libraries from node_modules into static/vendor/,
// which is what the dashboard serves (it never loads anything from a CDN).
// Refresh: cd dashboard && npm ci --ignore-scripts && npm run vendor
import { copyFileSync, mkdirSync, readFileSync } from "node:fs";

const files = [
  ["node_modules/uplot/dist/uPlot.iife.min.js", "static/vendor/uPlot.iife.min.js"],
  ["node_modules/uplot/dist/uPlot.min.css", "static/vendor/uPlot.min.css"],
  ["node_modules/uplot/LICENSE", "static/vendor/uPlot.LICENSE"],
];
mkdirSync("static/vendor", { recursive: true });
for (const [from, to] of files) {
  copyFileSync(from, to);
  console.log(`vendored ${to}`);
}
const version = JSON.parse(readFileSync("node_modules/uplot/package.json", "utf8")).version;
console.log(`uPlot ${version}`);
