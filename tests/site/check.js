// Opens every page of a built dctkd docs site in Debian's Chromium (playwright-core from tests/browser/node_modules)
// and prints one JSON line: per page its title, MathJax state, raw TeX left, headings with ids, links, images,
// console errors; search results for a few queries; screenshots of the home and DCT pages into <artefacts>.
// Usage: node check.js <base URL> <pages JSON file> <artefacts folder>
// Env: CHROMIUM (default /usr/bin/chromium), DCTKD_BROWSER_TIMEOUT_MS (default 30000).
const fs = require('fs');
const path = require('path');
const { chromium } = require(path.join(__dirname, '..', 'browser', 'node_modules', 'playwright-core'));

const [base, pagesFile, out] = process.argv.slice(2);
const TIMEOUT = Number(process.env.DCTKD_BROWSER_TIMEOUT_MS || 30000);
const SHOTS = { 'index.html': 'home.png', 'dct.html': 'dct.png' };

(async () => {
  fs.mkdirSync(out, { recursive: true });
  const pages = JSON.parse(fs.readFileSync(pagesFile, 'utf8'));
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'],
  });
  const result = { pages: {}, search: {}, failedRequests: [] };
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    page.setDefaultTimeout(TIMEOUT);
    let errors = [];
    page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
    page.on('pageerror', (e) => errors.push(`[pageerror] ${e.message}`));
    page.on('requestfailed', (r) => result.failedRequests.push(r.url()));
    for (const p of pages) {
      errors = [];
      const resp = await page.goto(base + p, { waitUntil: 'load' });
      let mathDone = true;
      try { await page.waitForFunction(() => document.documentElement.dataset.mathDone === '1', null, { timeout: TIMEOUT }); }
      catch (e) { mathDone = false; }
      const info = await page.evaluate(() => {
        const main = document.querySelector('main');
        // the text a reader sees as prose: code and preformatted blocks may hold a literal $ and are not math
        const clone = main ? main.cloneNode(true) : null;
        if (clone) clone.querySelectorAll('code, pre, mjx-container').forEach(e => e.remove());
        if (clone) { clone.style.position = 'absolute'; document.body.appendChild(clone); }
        const text = clone ? clone.innerText : '';
        if (clone) clone.remove();
        return {
          title: document.title,
          rawDisplayMath: (text.match(/\$\$/g) || []).length,
          rawInlineMath: (text.match(/(^|[^\\$])\$[^$\s][^$\n]{0,80}\$/g) || []).length,
          mathElements: document.querySelectorAll('mjx-container').length,
          mathErrors: document.querySelectorAll('mjx-merror, [data-mjx-error]').length,
          headings: Array.from(document.querySelectorAll('main h1, main h2, main h3, main h4')).map(h => ({ id: h.id, text: h.innerText.replace('¶', '').trim() })),
          ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
          links: Array.from(document.querySelectorAll('a[href]')).map(a => ({ raw: a.getAttribute('href'), href: a.href })),
          images: Array.from(document.querySelectorAll('main img')).map(i => ({ src: i.src, w: i.naturalWidth, complete: i.complete })),
          sidebar: Array.from(document.querySelectorAll('nav.sidebar a')).map(a => a.getAttribute('href')),
        };
      });
      Object.assign(info, { status: resp ? resp.status() : 0, mathDone, errors });
      result.pages[p] = info;
      if (SHOTS[p]) await page.screenshot({ path: path.join(out, SHOTS[p]), fullPage: false });
    }
    await page.goto(base + 'index.html', { waitUntil: 'load' });
    for (const q of ['dct2', 'prediction guide', 'torchrun']) {
      result.search[q] = await page.evaluate(async (q) => (await window.dctkdSearch(q)).slice(0, 5).map(e => e.url), q);
    }
    await page.fill('#search input', 'dct loss');
    await page.waitForSelector('#search-results a', { timeout: TIMEOUT });
    result.searchBoxHits = await page.locator('#search-results a').count();
    await page.screenshot({ path: path.join(out, 'search.png') });
    result.ok = true;
  } catch (e) {
    result.ok = false; result.error = String(e && e.stack || e);
  } finally {
    await browser.close();
    console.log(JSON.stringify(result));
  }
})();
