// Opens every page of a built dctkd docs site in Debian's Chromium (playwright-core from tests/browser/node_modules)
// and prints one JSON line: per page its title, MathJax state, raw TeX left, headings with ids, links, images,
// console errors, highlighted code, executed outputs, widget pictures, source links, sidebar groups; search results and
// snippets for a few queries; the sidebar toggle on a narrow screen; screenshots of the home, DCT, explorer and
// command-line pages, the narrow screen and the search box into <artefacts>.
// Usage: node check.js <base URL> <pages JSON file> <artefacts folder>
// Env: CHROMIUM (default /usr/bin/chromium), DCTKD_BROWSER_TIMEOUT_MS (default 30000).
const fs = require('fs');
const path = require('path');
const { chromium } = require(path.join(__dirname, '..', 'browser', 'node_modules', 'playwright-core'));

const [base, pagesFile, out] = process.argv.slice(2);
const TIMEOUT = Number(process.env.DCTKD_BROWSER_TIMEOUT_MS || 30000);
const SHOTS = { 'index.html': 'home.png', 'dct.html': 'dct.png', 'explorer.html': 'explorer-page.png', 'commands.html': 'commands.png' };

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
          sidebarMaintainers: Array.from(document.querySelectorAll('nav.sidebar details.maintainers a')).map(a => a.getAttribute('href')),
          maintainersOpen: !!document.querySelector('nav.sidebar details.maintainers[open]'),
          // highlighted code: Pygments token spans whose colour differs from the code block's own
          highlighted: (() => {
            const spans = Array.from(document.querySelectorAll('main .highlight pre span[class]')).filter(s => /^(k|kn|kc|s[12]?|mi|mf|nb|c1|o|ow)$/.test(s.className));
            if (!spans.length) return { tokens: 0, coloured: 0 };
            const plain = getComputedStyle(spans[0].closest('pre')).color;
            return { tokens: spans.length, coloured: spans.filter(s => getComputedStyle(s).color !== plain).length };
          })(),
          // outputs of executed cells (not nbdev's show_doc Markdown), and what they hold
          outputs: document.querySelectorAll('main .output_subarea:not(.output_markdown)').length,
          outputImages: Array.from(document.querySelectorAll('main .output_subarea:not(.output_markdown) img')).filter(i => i.complete && i.naturalWidth > 0).length,
          outputTables: document.querySelectorAll('main .output_subarea:not(.output_markdown) table, main .output_subarea pre').length,
          widgets: Array.from(document.querySelectorAll('main .widget-snapshot')).map(w => ({
            kind: w.dataset.widget, w: w.getBoundingClientRect().width, h: w.getBoundingClientRect().height,
            images: Array.from(w.querySelectorAll('img')).map(i => ({ w: i.naturalWidth, h: i.naturalHeight, complete: i.complete })),
            controls: w.querySelectorAll('select, input').length })),
          widgetReprs: (main ? main.innerText : '').split(/(?:VBox|HBox)\(children=/).length - 1,
          sourceLinks: Array.from(document.querySelectorAll('main a')).filter(a => a.innerText.trim() === 'source').map(a => {
            let e = a.closest('p') || a; while (e && !/^H[1-4]$/.test(e.tagName)) e = e.nextElementSibling;
            return { href: a.href, name: e ? e.innerText.replace('¶', '').trim() : null };
          }),
          // nbdev's API sections (show_doc Markdown): signatures without Markdown links, no inherited "Call self" docstring
          rawMarkdownLinks: Array.from(document.querySelectorAll('main .output_markdown pre, main .output_markdown code')).filter(e => /\[`?[\w.]+`?\]\((https?:|[\w./-]+\.html)/.test(e.innerText)).map(e => e.innerText.slice(0, 120)),
          callSelf: Array.from(document.querySelectorAll('main .output_markdown')).some(e => e.innerText.includes('Call self as a function')),
          pres: Array.from(document.querySelectorAll('main pre')).map(e => e.innerText.slice(0, 300)),
        };
      });
      Object.assign(info, { status: resp ? resp.status() : 0, mathDone, errors });
      result.pages[p] = info;
      if (SHOTS[p]) await page.screenshot({ path: path.join(out, SHOTS[p]), fullPage: false });
      if (p === 'explorer.html' && info.widgets.length) {
        await page.addStyleTag({ content: 'header{position:static}' });     // the sticky header would cover the picture
        await page.locator('main .widget-snapshot').first().screenshot({ path: path.join(out, 'explorer.png') });
      }
    }
    // a narrow screen: the sidebar is hidden behind the toggle
    const shown = () => page.evaluate(() => { const s = document.querySelector('nav.sidebar'); const r = s.getBoundingClientRect();
      return getComputedStyle(s).display !== 'none' && r.width > 0 && r.right > 0; });
    const toggleShown = () => page.evaluate(() => getComputedStyle(document.getElementById('sidebar-toggle')).display !== 'none');
    result.narrow = { wide: { sidebar: await shown(), toggle: await toggleShown() } };
    await page.setViewportSize({ width: 600, height: 900 });
    await page.goto(base + 'dct.html', { waitUntil: 'load' });
    result.narrow.before = { sidebar: await shown(), toggle: await toggleShown() };
    await page.click('#sidebar-toggle');
    result.narrow.opened = { sidebar: await shown(), expanded: await page.getAttribute('#sidebar-toggle', 'aria-expanded') };
    await page.screenshot({ path: path.join(out, 'narrow-sidebar.png') });
    await page.click('#sidebar-toggle');
    result.narrow.closed = { sidebar: await shown() };
    await page.setViewportSize({ width: 1400, height: 1000 });
    await page.goto(base + 'index.html', { waitUntil: 'load' });
    for (const q of ['dct2', 'prediction guide', 'torchrun']) {
      result.search[q] = await page.evaluate(async (q) => (await window.dctkdSearch(q)).slice(0, 5).map(e => e.url), q);
    }
    result.snippets = {};
    for (const q of ['dct loss', 'orthonormal', 'temperature', 'attention map']) {
      await page.fill('#search input', q);
      await page.waitForSelector('#search-results a', { timeout: TIMEOUT });
      result.snippets[q] = await page.locator('#search-results a small').allInnerTexts();
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
