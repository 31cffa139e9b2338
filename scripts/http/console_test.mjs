// The web console in headless Chromium (run by scripts/http-suite.sh):
//   node console_test.mjs BASE_URL TOKEN PID_TO_KILL KILLED_NODE_ID SCREENSHOT
// Opens BASE_URL/ui with a bearer token, waits until every node is up and every
// shard has a leader, makes some sales from the page and waits for them to show in
// the request table and the hottest SKUs, then kill -9s one node and waits - without
// reloading - for its row to turn to down. Any request to another origin fails the
// test (the console must work without internet).
import { chromium } from "playwright-core";

const [base, token, pid, killedNode, screenshot] = process.argv.slice(2);
const WAIT_MS = 30_000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let failed = null;
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const foreign = [];
  page.on("request", (r) => { if (!r.url().startsWith(base)) foreign.push(r.url()); });
  page.on("pageerror", (e) => { failed = failed || `page error: ${e.message}`; });

  await page.goto(`${base}/ui#token=${token}`);
  const nodes = await page.$$eval("tr[data-node-id]", (rows) => rows.length).catch(() => 0);
  await page.waitForFunction(() =>
    document.querySelectorAll("tr[data-node-id][data-state=up]").length === 3 &&
    // The meta shard (0, the cluster map) and the four SKU shards.
    document.querySelectorAll("tr[data-shard-id]").length === 5 &&
    [...document.querySelectorAll("tr[data-shard-id]")].every((r) => r.dataset.leader !== "0"),
    null, { timeout: WAIT_MS });
  console.log(`console: 3 nodes up, 5 shards (meta + 4) with leaders (first paint had ${nodes} node rows)`);

  // Sales made from the page's own origin show up in the tables.
  const statuses = await page.evaluate(async (t) => {
    const h = { Authorization: "Bearer " + t, "content-type": "application/json" };
    const out = [];
    out.push((await fetch("/v1/skus/apple-console", { method: "PUT", headers: h, body: '{"on_hand": 1000}' })).status);
    for (let i = 0; i < 40; i++) {
      out.push((await fetch("/v1/skus/apple-console:decrement", { method: "POST", headers: h, body: '{"quantity": 1}' })).status);
    }
    return out;
  }, token);
  const served = statuses.filter((s) => s === 200 || s === 307).length;
  if (served !== statuses.length) throw new Error(`sales from the page failed: ${statuses}`);
  await page.waitForFunction(() =>
    document.querySelector("tr[data-rpc=decrement]") !== null &&
    document.querySelector("tr[data-sku=apple-console]") !== null,
    null, { timeout: WAIT_MS });
  console.log("console: decrement rate and the hottest SKU are shown");

  // kill -9 a node: its row turns to down while the page keeps refreshing.
  const before = Number(await page.getAttribute("body", "data-refreshes"));
  process.kill(Number(pid), "SIGKILL");
  await page.waitForSelector(`tr[data-node-id="${killedNode}"][data-state=down]`, { timeout: WAIT_MS });
  const after = Number(await page.getAttribute("body", "data-refreshes"));
  if (!(after > before)) throw new Error("the page did not refresh by itself");
  console.log(`console: node ${killedNode} shown down after kill -9 (live: ${after - before} refreshes, no reload)`);
  await page.screenshot({ path: screenshot, fullPage: true });
  if (foreign.length) throw new Error(`requests left the node: ${foreign.join(", ")}`);
} catch (e) {
  failed = failed || String(e);
} finally {
  await browser.close();
}
if (failed) {
  console.error(`console test FAILED: ${failed}`);
  process.exit(1);
}
console.log("console test passed");
