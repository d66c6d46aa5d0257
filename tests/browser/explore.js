// Drives JupyterLab in Debian's Chromium with playwright-core: opens the explorer notebook, runs all cells,
// moves the explorer's stage slider and checks the figure redraws. Prints one JSON line with what it saw.
// Usage: node explore.js <notebook URL with token> <artefacts folder>
// Env: CHROMIUM (default /usr/bin/chromium), DCTKD_BROWSER_TIMEOUT_MS (default 75000).
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');
const { chromium } = require('playwright-core');

const [url, out] = process.argv.slice(2);
const TIMEOUT = Number(process.env.DCTKD_BROWSER_TIMEOUT_MS || 75000);
const sha = (buf) => crypto.createHash('sha1').update(buf).digest('hex');
const log = (...a) => console.error(new Date().toISOString(), ...a);

async function kernelIdle(page, timeout) {
  await page.waitForFunction(() => {
    const app = window.jupyterapp;
    const w = app && app.shell.currentWidget;
    const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
    return !!k && k.status === 'idle';
  }, null, { timeout, polling: 250 });
}

async function imageHash(page, selector) {
  // the bytes the widget shows: the <img>'s source (a blob: or data: URL) fetched in the page
  return page.evaluate(async (sel) => {
    const img = document.querySelector(sel);
    if (!img || !img.src) return null;
    const buf = await (await fetch(img.src)).arrayBuffer();
    const d = await crypto.subtle.digest('SHA-1', buf);
    return Array.from(new Uint8Array(d)).map((b) => b.toString(16).padStart(2, '0')).join('') + ':' + buf.byteLength;
  }, selector);
}

(async () => {
  fs.mkdirSync(out, { recursive: true });
  const result = { ok: false };
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 1600 } });
  page.setDefaultTimeout(TIMEOUT);
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`[pageerror] ${e.message}`));
  try {
    log('open', url.replace(/token=[^&]+/, 'token=…'));
    await page.goto(url, { waitUntil: 'domcontentloaded' });
    await page.waitForSelector('.jp-Notebook', { timeout: TIMEOUT });
    await kernelIdle(page, TIMEOUT);
    log('kernel idle; run all cells');
    await page.evaluate(() => window.jupyterapp.commands.execute('notebook:run-all-cells'));
    const status = page.locator('.dctkd-status');
    await status.waitFor({ state: 'visible', timeout: TIMEOUT });
    await page.waitForFunction(() => {
      const s = document.querySelector('.dctkd-status');
      const img = document.querySelector('img.dctkd-attention');
      return s && /stage 1\/\d/.test(s.textContent) && img && img.src && img.naturalWidth > 0;
    }, null, { timeout: TIMEOUT, polling: 250 });
    await kernelIdle(page, TIMEOUT);
    result.status_before = (await status.textContent()).trim();
    result.before = await imageHash(page, 'img.dctkd-attention');
    result.table = (await page.locator('.dctkd-table').textContent()).trim();
    await page.locator('img.dctkd-attention').scrollIntoViewIfNeeded();
    await page.screenshot({ path: path.join(out, 'explore-before.png'), fullPage: true });
    await page.locator('img.dctkd-attention').screenshot({ path: path.join(out, 'attention-before.png') });
    log('before', result.status_before, result.before);

    // move the stage slider one step to the right, as a person would with the keyboard
    const handle = page.locator('.dctkd-stage .noUi-handle').first();
    await handle.scrollIntoViewIfNeeded();
    await handle.click();
    await page.keyboard.press('ArrowRight');
    await page.waitForFunction(() => /stage 2\/\d/.test(document.querySelector('.dctkd-status').textContent), null,
                               { timeout: TIMEOUT, polling: 250 });
    const t0 = Date.now();
    do {                                                           // the new picture arrives with (or just after) the status
      result.after = await imageHash(page, 'img.dctkd-attention');
      if (result.after && result.after !== result.before) break;
      await page.waitForTimeout(200);
    } while (Date.now() - t0 < 15000);
    result.status_after = (await status.textContent()).trim();
    result.readout = (await page.locator('.dctkd-stage .widget-readout').first().textContent()).trim();
    await page.screenshot({ path: path.join(out, 'explore-after.png'), fullPage: true });
    await page.locator('img.dctkd-attention').screenshot({ path: path.join(out, 'attention-after.png') });
    result.shot_before = sha(fs.readFileSync(path.join(out, 'attention-before.png')));
    result.shot_after = sha(fs.readFileSync(path.join(out, 'attention-after.png')));
    log('after', result.status_after, result.after);
    result.ok = true;
  } catch (e) {
    result.error = String(e && e.stack || e);
    try { await page.screenshot({ path: path.join(out, 'explore-failure.png'), fullPage: true }); } catch (_) {}
  } finally {
    fs.writeFileSync(path.join(out, 'browser-console.log'), consoleLines.join('\n') + '\n');
    await browser.close();
  }
  console.log(JSON.stringify(result));
  process.exit(result.ok ? 0 : 1);
})();
