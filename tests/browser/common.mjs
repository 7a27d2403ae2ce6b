// What both browser scripts share: the browser, and waits that say what the page showed.
import puppeteer from 'puppeteer-core';

/** Headless Chromium as this machine runs it: no sandbox (root), no background traffic. */
export function launch() {
  return puppeteer.launch({
    executablePath: process.env.CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
}

export function check(condition, what) {
  if (!condition) throw new Error(what);
}

/**
 * Waits up to `ms` for `fn(...args)` to hold in `page`; on a time-out, says what was awaited
 * and what the page showed instead.
 */
export async function waitUntil(page, ms, what, fn, ...args) {
  try {
    await page.waitForFunction(fn, { timeout: ms }, ...args);
  } catch (e) {
    const shows = await page.evaluate(() => ({
      signIn: document.querySelector('#sign-in-message')?.textContent,
      health: document.querySelector('[data-health]')?.textContent,
      uploads: [...document.querySelectorAll('[data-upload]')].slice(0, 12)
        .map((r) => `${r.dataset.upload}: ${r.dataset.state}: ${r.querySelector('.status').textContent}`),
      collection: document.querySelector('#collection-message')?.textContent,
      cards: document.querySelectorAll('[data-photo-id]').length,
    })).catch(() => 'nothing readable');
    throw new Error(`waited ${ms / 1000} s for ${what}; the page shows ${JSON.stringify(shows)} (${e.message})`);
  }
}
