// The admin page: sign in with the admin key, upload photos, change their categories, delete them.
//
// Rules this file keeps (the page's Content-Security-Policy enforces the first two):
// - No inline code and no eval: behaviour is attached here, never in the markup.
// - Text from the server or the user (file names, categories, messages) is only ever inserted
//   as text (`textContent`, `append(string)`, `new Option`), never parsed as HTML.
// - The key lives in this tab's sessionStorage and travels only as the X-API-Key header; it is
//   never put in a URL or a cookie.
// - Listings are fetched with `cache: "no-cache"`: the browser revalidates every time (a 304
//   when nothing changed), so a change shows at once.
'use strict';

(() => {
  const KEY_SLOT = 'portfolio-admin-key';
  const PAGE_SIZE = 30;
  const IN_FLIGHT = 3; // uploads at once
  const HEALTH_EVERY_MS = 20000;

  const $ = (selector) => document.querySelector(selector);

  /** An element with properties and children (strings become text nodes). */
  function el(tag, props = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === 'data') Object.assign(e.dataset, v);
      else if (k === 'class') e.className = v;
      else e[k] = v;
    }
    e.append(...children.filter((c) => c !== null && c !== undefined));
    return e;
  }

  function key() {
    return sessionStorage.getItem(KEY_SLOT);
  }

  /** What an error answer says: its `detail`, or the status. */
  async function detailOf(response) {
    try {
      const body = await response.json();
      if (body && typeof body.detail === 'string') return body.detail;
    } catch (_) { /* not JSON */ }
    return `The server answered ${response.status} ${response.statusText}`.trim();
  }

  function retryAfter(headerValue) {
    const secs = parseInt(headerValue || '', 10);
    return Number.isFinite(secs) && secs > 0 ? secs : 1;
  }

  /** A request with the admin key. A 401 signs out (the key changed on the server). */
  async function adminFetch(path, options = {}) {
    const headers = Object.assign({ 'X-API-Key': key() || '' }, options.headers || {});
    const response = await fetch(path, Object.assign({}, options, { headers, cache: 'no-store' }));
    if (response.status === 401) {
      signOut('The server no longer accepts this key: sign in again.');
    }
    return response;
  }

  function throttledText(secs) {
    return `Too many wrong keys from this address: the server checks none for ${secs} s.`;
  }

  // ------------------------------------------------------------------------------------------
  // Signing in and out

  let countdown = null;

  function showSignIn(message, bad) {
    $('#admin-view').hidden = true;
    $('[data-action="sign-out"]').hidden = true;
    $('#sign-in-view').hidden = false;
    const m = $('#sign-in-message');
    m.textContent = message || '';
    m.classList.toggle('bad', !!bad);
    $('#api-key').focus();
  }

  function holdSignIn(secs) {
    const button = $('[data-action="sign-in"]');
    const message = $('#sign-in-message');
    clearInterval(countdown);
    let left = secs;
    const tick = () => {
      if (left <= 0) {
        clearInterval(countdown);
        button.disabled = false;
        message.textContent = 'You may try again now.';
        message.classList.remove('bad');
        return;
      }
      button.disabled = true;
      message.textContent = `${throttledText(secs)} Try again in ${left} s.`;
      message.classList.add('bad');
      left -= 1;
    };
    tick();
    countdown = setInterval(tick, 1000);
  }

  async function signIn(candidate, quiet) {
    const message = $('#sign-in-message');
    if (!candidate) {
      message.textContent = 'Type the admin key first.';
      message.classList.add('bad');
      return;
    }
    message.textContent = quiet ? '' : 'Checking the key…';
    message.classList.remove('bad');
    let response;
    try {
      response = await fetch('/api/auth', { headers: { 'X-API-Key': candidate }, cache: 'no-store' });
    } catch (_) {
      showSignIn('The server cannot be reached: check the connection and try again.', true);
      return;
    }
    if (response.status === 204) {
      sessionStorage.setItem(KEY_SLOT, candidate);
      $('#api-key').value = '';
      message.textContent = '';
      showAdmin();
    } else if (response.status === 401) {
      sessionStorage.removeItem(KEY_SLOT);
      showSignIn(quiet ? 'Sign in again: the saved key is no longer accepted.' : 'That key is wrong.', true);
    } else if (response.status === 429) {
      showSignIn('', true);
      holdSignIn(retryAfter(response.headers.get('Retry-After')));
    } else {
      showSignIn(await detailOf(response), true);
    }
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY_SLOT);
    for (const item of uploads) {
      if (item.xhr) item.xhr.abort();
    }
    clearInterval(healthTimer);
    $('#grid').replaceChildren();
    showSignIn(message || 'Signed out.', !!message);
  }

  let healthTimer = null;

  function showAdmin() {
    $('#sign-in-view').hidden = true;
    $('#admin-view').hidden = false;
    $('[data-action="sign-out"]').hidden = false;
    refreshHealth();
    clearInterval(healthTimer);
    healthTimer = setInterval(refreshHealth, HEALTH_EVERY_MS);
    refreshCategories();
    reloadGrid(true);
  }

  // ------------------------------------------------------------------------------------------
  // Health

  async function refreshHealth() {
    const box = $('[data-health]');
    try {
      const response = await fetch('/api/health', { cache: 'no-store' });
      const h = await response.json();
      const database = h.database === 'connected';
      const storage = h.storage === 'ok';
      const part = (label, good, word, reason) => el('span', { class: good ? 'ok' : 'down' },
        `${label}: ${word}${reason ? ` (${reason})` : ''}`);
      box.replaceChildren(
        part('Database', database, h.database || 'unknown', h.reason),
        ' · ',
        part('Storage', storage, h.storage || 'unknown', h.storage_reason),
      );
      box.dataset.health = database && storage ? 'ok' : 'degraded';
    } catch (_) {
      box.replaceChildren(el('span', { class: 'down' }, 'The server cannot be reached'));
      box.dataset.health = 'unreachable';
    }
  }

  // ------------------------------------------------------------------------------------------
  // Categories

  let categories = [];

  async function refreshCategories() {
    try {
      const response = await fetch('/api/categories', { cache: 'no-cache' });
      if (!response.ok) return;
      categories = (await response.json()).map((c) => c.category);
    } catch (_) {
      return;
    }
    $('#category-list').replaceChildren(...categories.map((c) => new Option(c, c)));
    const filter = $('#filter');
    const chosen = filter.value;
    filter.replaceChildren(new Option('every category', ''), ...categories.map((c) => new Option(c, c)));
    filter.value = categories.includes(chosen) ? chosen : '';
  }

  // ------------------------------------------------------------------------------------------
  // Uploads

  const uploads = []; // {file, name, row, state, loaded, xhr, go, retryable}
  let inFlight = 0;

  function isHidden(file) {
    const path = file.webkitRelativePath || file.name;
    return path.split('/').some((part) => part.startsWith('.'));
  }

  /** Whether `file` is a JPEG: by its name and by its first bytes (FF D8 FF). */
  async function jpegProblem(file) {
    if (!/\.jpe?g$/i.test(file.name)) {
      return 'Not uploaded: only .jpg/.jpeg files are accepted';
    }
    const head = new Uint8Array(await file.slice(0, 3).arrayBuffer());
    if (head.length < 3 || head[0] !== 0xff || head[1] !== 0xd8 || head[2] !== 0xff) {
      return 'Not uploaded: the file is named .jpg but its content is not a JPEG';
    }
    return null;
  }

  function setState(item, state, text, retryable) {
    item.state = state;
    item.retryable = !!retryable;
    item.row.dataset.state = state;
    const status = item.row.querySelector('.status');
    status.replaceChildren(text);
    if (state === 'failed' && retryable) {
      const retry = el('button', { type: 'button', class: 'quiet', textContent: 'Retry' });
      retry.dataset.action = 'retry';
      retry.addEventListener('click', () => {
        item.loaded = 0;
        item.go = true;
        setState(item, 'queued', 'Waiting to upload');
        pump();
      });
      status.append(retry);
    }
    item.row.querySelector('progress').hidden = state !== 'uploading';
    showOverall();
  }

  async function addFiles(files) {
    const picked = Array.from(files).filter((f) => !isHidden(f));
    if (picked.length === 0) return;
    const list = $('#uploads');
    const added = picked.map((file) => {
      const row = el('li', { class: 'upload', data: { upload: file.name, state: 'queued' } },
        el('span', { class: 'name' }, file.webkitRelativePath || file.name),
        el('progress', { max: 1, value: 0 }),
        el('span', { class: 'status' }, 'Checking…'));
      list.append(row);
      // `checking` until its first bytes are read: Upload pressed meanwhile marks it to go, and
      // it goes once it has passed.
      const item = {
        file, name: file.name, row, state: 'queued', loaded: 0, xhr: null, go: false, checking: true,
      };
      uploads.push(item);
      return item;
    });
    $('#clear-uploads').hidden = false;
    await Promise.all(added.map(async (item) => {
      const problem = await jpegProblem(item.file);
      item.checking = false;
      if (problem) {
        item.refused = true;
        setState(item, 'failed', problem, false);
      } else {
        setState(item, 'queued', item.go ? 'Waiting to upload' : 'Ready: press Upload');
      }
    }));
    pump();
  }

  function startUploads() {
    const waiting = uploads.filter((u) => u.state === 'queued' && !u.refused && !u.go);
    for (const item of waiting) {
      item.go = true;
      item.category = $('#category').value.trim();
      if (!item.checking) setState(item, 'queued', 'Waiting to upload');
    }
    pump();
  }

  function pump() {
    while (inFlight < IN_FLIGHT) {
      const next = uploads.find((u) => u.state === 'queued' && u.go && !u.checking);
      if (!next) break;
      send(next);
    }
    showOverall();
  }

  function send(item) {
    inFlight += 1;
    setState(item, 'uploading', 'Uploading…');
    const form = new FormData();
    form.append('file', item.file, item.file.name);
    if (item.category) form.append('category', item.category);
    const xhr = new XMLHttpRequest();
    item.xhr = xhr;
    const bar = item.row.querySelector('progress');
    xhr.upload.addEventListener('progress', (e) => {
      if (!e.lengthComputable) return;
      item.loaded = e.loaded / e.total * item.file.size;
      bar.value = e.loaded / e.total;
      showOverall();
    });
    const finish = async (state, text, retryable) => {
      item.xhr = null;
      inFlight -= 1;
      setState(item, state, text, retryable);
      pump();
      if (state === 'done') scheduleReload();
      // A failure may be the server's: the health box says what it found.
      if (state === 'failed') refreshHealth();
    };
    xhr.addEventListener('load', () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      const detail = body && typeof body.detail === 'string' ? body.detail : `The server answered ${xhr.status}`;
      item.loaded = item.file.size;
      if (xhr.status === 201) {
        const where = body && body.category ? ` in ${body.category}` : '';
        finish('done', `Uploaded as ${body ? body.filename : item.name}${where}`);
      } else if (xhr.status === 409) {
        finish('duplicate', `Not uploaded: ${detail} (a photo of this name is already there)`);
      } else if (xhr.status === 401) {
        finish('failed', 'Not uploaded: the key was not accepted', true);
        signOut('The server no longer accepts this key: sign in again.');
      } else if (xhr.status === 429) {
        const secs = retryAfter(xhr.getResponseHeader('Retry-After'));
        finish('failed', `Not uploaded: ${throttledText(secs)}`, true);
      } else {
        // 400, 413, 415: the file itself; 5xx: the server or storage, worth a retry.
        finish('failed', `Not uploaded: ${detail}`, xhr.status >= 500 || xhr.status === 408);
      }
    });
    const lost = (why) => () => {
      item.loaded = 0;
      finish('failed', why, true);
    };
    xhr.addEventListener('error', lost('Not uploaded: the connection to the server failed'));
    xhr.addEventListener('timeout', lost('Not uploaded: the server took too long'));
    xhr.addEventListener('abort', lost('Not uploaded: stopped'));
    xhr.open('POST', '/api/upload');
    xhr.setRequestHeader('X-API-Key', key() || '');
    xhr.send(form);
  }

  function showOverall() {
    const counted = uploads.filter((u) => !u.refused && (u.go || u.state !== 'queued'));
    const box = $('#overall');
    if (counted.length === 0) {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    const total = counted.reduce((n, u) => n + u.file.size, 0) || 1;
    const sent = counted.reduce((n, u) => n + (u.state === 'uploading' ? u.loaded : (u.state === 'queued' ? 0 : u.file.size)), 0);
    $('#overall-bar').value = sent / total;
    const count = (state) => counted.filter((u) => u.state === state).length;
    const parts = [`${count('done')} of ${counted.length} uploaded`];
    if (count('duplicate')) parts.push(`${count('duplicate')} already there`);
    if (count('failed')) parts.push(`${count('failed')} failed`);
    if (count('uploading') + count('queued')) parts.push(`${count('uploading') + count('queued')} to go`);
    $('#overall-text').textContent = parts.join(' · ');
  }

  function clearUploads() {
    for (let i = uploads.length - 1; i >= 0; i -= 1) {
      const u = uploads[i];
      if (u.state !== 'uploading' && !(u.state === 'queued' && u.go)) {
        u.row.remove();
        uploads.splice(i, 1);
      }
    }
    $('#clear-uploads').hidden = uploads.length === 0;
    showOverall();
  }

  /** Every file of a dropped folder, however deep. */
  async function filesOfEntry(entry) {
    if (entry.isFile) {
      return new Promise((resolve) => entry.file((f) => resolve([f]), () => resolve([])));
    }
    if (!entry.isDirectory) return [];
    const reader = entry.createReader();
    const all = [];
    // readEntries hands out at most 100 entries a call: read until it gives none.
    for (;;) {
      const batch = await new Promise((resolve) => reader.readEntries(resolve, () => resolve([])));
      if (batch.length === 0) break;
      for (const child of batch) all.push(...await filesOfEntry(child));
    }
    return all;
  }

  async function dropped(event) {
    event.preventDefault();
    $('#drop-zone').classList.remove('over');
    const items = Array.from(event.dataTransfer.items || []);
    const entries = items.map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null));
    if (entries.length && entries.every((e) => e)) {
      const files = [];
      for (const entry of entries) files.push(...await filesOfEntry(entry));
      await addFiles(files);
    } else {
      await addFiles(event.dataTransfer.files);
    }
  }

  // ------------------------------------------------------------------------------------------
  // The collection

  const grid = { photos: 0, lastId: 0, done: false, loading: false, generation: 0 };
  let reloadTimer = null;

  function scheduleReload() {
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(() => {
      reloadGrid(false);
      refreshCategories();
      refreshHealth();
    }, 250);
  }

  function collectionMessage(text, bad) {
    const m = $('#collection-message');
    m.textContent = text || '';
    m.classList.toggle('bad', !!bad);
  }

  /** Loads the grid again from its start, as far as it went (and further if it was all shown). */
  async function reloadGrid(fromScratch) {
    const want = fromScratch ? PAGE_SIZE : (grid.done ? grid.photos + 500 : Math.max(grid.photos, PAGE_SIZE));
    grid.generation += 1;
    grid.photos = 0;
    grid.lastId = 0;
    grid.done = false;
    const cards = [];
    const generation = grid.generation;
    while (!grid.done && cards.length < want) {
      const page = await fetchPage(Math.min(100, Math.max(PAGE_SIZE, want - cards.length)));
      if (generation !== grid.generation) return;
      if (!page) return;
      cards.push(...page.map(card));
    }
    $('#grid').replaceChildren(...cards);
    grid.photos = cards.length;
    $('#more').hidden = grid.done;
  }

  async function loadMore() {
    const generation = grid.generation;
    const page = await fetchPage(PAGE_SIZE);
    if (!page || generation !== grid.generation) return;
    $('#grid').append(...page.map(card));
    grid.photos += page.length;
    $('#more').hidden = grid.done;
  }

  /** The next page after the last id shown; null when it could not be read. */
  async function fetchPage(limit) {
    const query = new URLSearchParams({ limit: String(limit), after_id: String(grid.lastId) });
    const category = $('#filter').value;
    if (category) query.set('category', category);
    let response;
    try {
      response = await fetch(`/api/images?${query}`, { cache: 'no-cache' });
    } catch (_) {
      collectionMessage('The photos cannot be loaded: the server cannot be reached.', true);
      return null;
    }
    if (!response.ok) {
      collectionMessage(await detailOf(response), true);
      return null;
    }
    const photos = await response.json();
    const total = response.headers.get('X-Total-Count');
    $('#count').textContent = total !== null ? `(${total})` : '';
    const source = response.headers.get('X-Data-Source');
    collectionMessage(source && source !== 'database'
      ? 'The database cannot be reached: this is the last copy the server has, and changes will fail.'
      : (photos.length === 0 && grid.lastId === 0 ? 'No photos yet.' : ''), source && source !== 'database');
    if (photos.length > 0) grid.lastId = photos[photos.length - 1].id;
    if (photos.length < limit) grid.done = true;
    return photos;
  }

  function card(photo) {
    const frame = el('div', { class: 'frame' });
    if (photo.color) frame.style.backgroundColor = photo.color;
    if (photo.width > 0 && photo.height > 0) frame.style.aspectRatio = `${photo.width} / ${photo.height}`;
    frame.append(el('img', {
      src: photo.thumbnail_url || photo.url, alt: photo.filename, loading: 'lazy', decoding: 'async',
    }));
    const category = el('p', { class: 'category' }, photo.category);
    const item = el('li', { class: 'photo', data: { photoId: String(photo.id) } },
      frame,
      el('div', { class: 'about' }, el('p', { class: 'name' }, photo.filename), category),
      el('p', { class: 'message', role: 'status' }));
    item.photo = photo;
    item.append(actions(item));
    return item;
  }

  function actions(item) {
    const edit = el('button', { type: 'button', class: 'quiet', textContent: 'Change category' });
    edit.dataset.action = 'edit-category';
    edit.addEventListener('click', () => editCategory(item));
    const remove = el('button', { type: 'button', class: 'quiet', textContent: 'Delete' });
    remove.dataset.action = 'delete';
    remove.addEventListener('click', () => askDelete(item));
    return el('div', { class: 'actions' }, edit, remove);
  }

  function cardMessage(item, text, bad) {
    const m = item.querySelector('.message');
    m.textContent = text || '';
    m.classList.toggle('bad', !!bad);
  }

  /** Puts the card's buttons back, focusing `focusAction`'s button. */
  function restoreActions(item, panel, focusAction) {
    const buttons = actions(item);
    panel.replaceWith(buttons);
    if (focusAction) buttons.querySelector(`[data-action="${focusAction}"]`).focus();
  }

  function editCategory(item) {
    const input = el('input', {
      name: 'category', value: item.photo.category, maxLength: 50, autocomplete: 'off', spellcheck: false,
    });
    input.setAttribute('list', 'category-list');
    input.setAttribute('aria-label', `New category for ${item.photo.filename}`);
    const save = el('button', { type: 'submit', textContent: 'Save' });
    save.dataset.action = 'confirm';
    const cancel = el('button', { type: 'button', class: 'quiet', textContent: 'Cancel' });
    const form = el('form', { noValidate: true }, input, save, cancel);
    cancel.addEventListener('click', () => restoreActions(item, form, 'edit-category'));
    form.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') restoreActions(item, form, 'edit-category');
    });
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      save.disabled = true;
      cardMessage(item, 'Saving…');
      const response = await adminFetch(`/api/images/${item.photo.id}`, {
        method: 'PATCH',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ category: input.value }),
      }).catch(() => null);
      save.disabled = false;
      if (!response) {
        cardMessage(item, 'Not saved: the server cannot be reached.', true);
      } else if (response.ok) {
        item.photo = await response.json();
        item.querySelector('.category').textContent = item.photo.category;
        cardMessage(item, 'Saved.');
        restoreActions(item, form, 'edit-category');
        refreshCategories();
      } else if (response.status !== 401) {
        cardMessage(item, `Not saved: ${await detailOf(response)}`, true);
      }
    });
    item.querySelector('.actions').replaceWith(form);
    input.focus();
    input.select();
  }

  function askDelete(item) {
    const confirm = el('button', { type: 'button', class: 'danger', textContent: 'Delete' });
    confirm.dataset.action = 'confirm';
    const keep = el('button', { type: 'button', class: 'quiet', textContent: 'Keep' });
    const panel = el('div', { class: 'actions', role: 'group' },
      el('p', { class: 'ask' }, `Delete ${item.photo.filename} and its files?`), confirm, keep);
    keep.addEventListener('click', () => restoreActions(item, panel, 'delete'));
    panel.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') restoreActions(item, panel, 'delete');
    });
    confirm.addEventListener('click', async () => {
      confirm.disabled = true;
      cardMessage(item, 'Deleting…');
      const response = await adminFetch(`/api/images/${item.photo.id}`, { method: 'DELETE' }).catch(() => null);
      confirm.disabled = false;
      if (!response) {
        cardMessage(item, 'Not deleted: the server cannot be reached.', true);
      } else if (response.status === 204 || response.status === 404) {
        const next = item.nextElementSibling || item.previousElementSibling;
        item.remove();
        grid.photos -= 1;
        if (next) next.querySelector('button').focus();
        collectionMessage(`Deleted ${item.photo.filename}.`);
        scheduleReload();
      } else if (response.status !== 401) {
        cardMessage(item, `Not deleted: ${await detailOf(response)}`, true);
      }
    });
    item.querySelector('.actions').replaceWith(panel);
    confirm.focus();
  }

  // ------------------------------------------------------------------------------------------
  // Wiring

  function start() {
    $('#sign-in-form').addEventListener('submit', (e) => {
      e.preventDefault();
      signIn($('#api-key').value, false);
    });
    $('[data-action="sign-out"]').addEventListener('click', () => signOut());
    for (const picker of document.querySelectorAll('input[type="file"]')) {
      picker.addEventListener('change', async () => {
        await addFiles(picker.files);
        picker.value = '';
      });
    }
    $('#upload-form').addEventListener('submit', (e) => {
      e.preventDefault();
      startUploads();
    });
    $('#clear-uploads').addEventListener('click', clearUploads);
    const zone = $('#drop-zone');
    zone.addEventListener('dragover', (e) => {
      e.preventDefault();
      zone.classList.add('over');
    });
    zone.addEventListener('dragleave', () => zone.classList.remove('over'));
    zone.addEventListener('drop', dropped);
    $('#filter').addEventListener('change', () => reloadGrid(true));
    $('#more').addEventListener('click', loadMore);

    refreshHealth();
    const saved = key();
    if (saved) signIn(saved, true);
    else showSignIn('');
  }

  start();
})();
