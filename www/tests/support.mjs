// What the browser tests share: the real samvad binary on a free port, and Debian's Chromium.
//
// SAMVAD_BIN (default ../../target/debug/samvad, relative to this folder) and CHROMIUM (default
// /usr/bin/chromium) say where they are.

import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const SERVER_BIN = resolve(here, process.env.SAMVAD_BIN || '../../target/debug/samvad');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const STEP = 10_000; // the most any single wait may take
const ANSI = /\x1b\[[0-9;]*m/g;

/** Where the tests write screenshots for a person to look at (SAMVAD_WWW_SCREENSHOTS). */
export const SCREENSHOTS = resolve(here, process.env.SAMVAD_WWW_SCREENSHOTS || '../../target/www-screenshots');

/**
 * Starts one server process on `listen` with data in `dataDir`; resolves with
 * { base, logs(), exited, proc } once it logs its address.
 */
async function spawnServer(listen, dataDir, settings) {
  const proc = spawn(SERVER_BIN, [], {
    env: {
      ...process.env, NO_COLOR: '1', SAMVAD_LISTEN: listen, SAMVAD_DATA_DIR: dataDir,
      SAMVAD_AUTH_PROVIDER: 'dev', SAMVAD_DRAIN_SECS: '0', SAMVAD_CLOSE_SPREAD_SECS: '0', ...settings,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // If the test runner itself dies, do not leave the server behind.
  const orphanGuard = () => { try { proc.kill('SIGKILL'); } catch { /* already gone */ } };
  process.once('exit', orphanGuard);
  let out = '';
  const exited = new Promise((res) => proc.once('exit', (code, signal) => {
    process.removeListener('exit', orphanGuard);
    res({ code, signal });
  }));
  const base = await new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`server did not log its address within ${STEP} ms:\n${out}`)), STEP);
    const onData = (chunk) => {
      out += chunk.toString().replace(ANSI, '');
      const m = out.match(/listening addr=(\d+\.\d+\.\d+\.\d+:\d+)/);
      if (m) { clearTimeout(timer); res(`http://${m[1]}`); }
    };
    proc.stdout.on('data', onData);
    proc.stderr.on('data', onData);
    proc.once('error', (e) => { clearTimeout(timer); rej(e); });
    exited.then(({ code, signal }) => { clearTimeout(timer); rej(new Error(`server exited (${code ?? signal}) before listening:\n${out}`)); });
  }).catch(async (e) => { proc.kill('SIGKILL'); await exited; throw e; });
  return { base, proc, exited, logs: () => out };
}

async function kill(proc, exited, signal) {
  if (proc.exitCode === null && proc.signalCode === null) {
    proc.kill(signal);
    const t = setTimeout(() => proc.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(t);
  }
}

/**
 * Starts the server (a temp data dir, a free port); resolves with { base, logs(), stop(),
 * crash(), restart() }: `crash` kills it with SIGKILL, `restart` starts it again on the same
 * address and data, as an operator's supervisor would.
 */
async function startServer(settings) {
  assert.ok(existsSync(SERVER_BIN), `no server binary at ${SERVER_BIN}: run \`cargo build -p samvad\` or set SAMVAD_BIN`);
  const dataDir = mkdtempSync(join(tmpdir(), 'samvad-www-data-'));
  let current;
  let earlier = '';
  try {
    current = await spawnServer('127.0.0.1:0', dataDir, settings);
  } catch (e) {
    rmSync(dataDir, { recursive: true, force: true });
    throw e;
  }
  const server = {
    base: current.base,
    logs: () => earlier + current.logs(),
    async crash() { await kill(current.proc, current.exited, 'SIGKILL'); },
    async restart() {
      await kill(current.proc, current.exited, 'SIGKILL');
      earlier += current.logs();
      current = await spawnServer(server.base.replace('http://', ''), dataDir, settings);
    },
    async stop() {
      await kill(current.proc, current.exited, 'SIGTERM');
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
  return server;
}

/** Launches headless Chromium (a fresh temporary profile, removed on close). */
async function launchBrowser() {
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM)`);
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: STEP,
    // playwright-core launches with a fresh temporary user data dir and removes it on close.
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/**
 * Registers, in the calling suite, hooks that start the server (with these extra settings) and
 * Chromium before its tests and stop them after; returns `{ server, browser }`, filled in once
 * the suite runs.
 */
export function serverAndBrowser(settings = {}) {
  const env = { server: null, browser: null };
  before(async () => {
    env.server = await startServer(settings);
    env.browser = await launchBrowser();
  }, { timeout: 25_000 });
  after(async () => {
    if (env.browser) await Promise.race([env.browser.close(), new Promise((r) => setTimeout(r, 5_000))]);
    if (env.server) await env.server.stop();
  }, { timeout: 15_000 });
  return env;
}

/** The end of the server's log, to append to a failure's message. */
export function logTail(server) {
  return `\n--- server log (tail) ---\n${server.logs().split('\n').slice(-40).join('\n')}`;
}
