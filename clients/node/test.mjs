// Runs wxtoken.mjs against a live wxtoken and WeChat simulator (the scenario in clients/README.md).
//
// Environment: WXTOKEN_URL, WXTOKEN_API_KEY (granted WXTOKEN_APPID only), WXTOKEN_APPID,
// WXTOKEN_FORBIDDEN_APPID, WXTOKEN_SIM_URL. Exits 0 when every step passes, 1 otherwise.

import { once } from 'node:events';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { WxToken, WxTokenError } from './wxtoken.mjs';

function fail(message) {
  console.error(`FAIL: ${message}`);
  process.exit(1);
}

function check(condition, message) {
  if (!condition) fail(message);
}

function env(name) {
  const value = process.env[name];
  if (!value) fail(`${name} is not set (the environment is described in clients/README.md)`);
  return value;
}

process.on('unhandledRejection', (e) => fail(`unexpected error: ${e?.stack ?? e}`));

const base = env('WXTOKEN_URL');
const key = env('WXTOKEN_API_KEY');
const appid = env('WXTOKEN_APPID');
const forbiddenAppid = env('WXTOKEN_FORBIDDEN_APPID');
const wechat = env('WXTOKEN_SIM_URL').replace(/\/+$/, '');
const now = () => Date.now() / 1000;

// 1. token() twice: the same token, one request to wxtoken (counted by an injected fetch).
await (async () => {
  for (let attempt = 0; attempt < 3; attempt++) {
    let requests = 0;
    const countingFetch = (...args) => {
      requests++;
      return fetch(...args);
    };
    const counted = new WxToken(base, key, { fetch: countingFetch });
    const first = await counted.tokenInfo(appid);
    if (first.refresh_at - now() < 2) {
      console.log('  token due for refresh within 2 s; waiting for the next one');
      await sleep(Math.max(0, first.refresh_at - now()) * 1000 + 1500);
      continue;
    }
    const second = await counted.token(appid);
    check(second === first.access_token, 'token() returned a different token from the cache');
    check(requests === 1, `two token() calls sent ${requests} requests, expected 1`);
    return;
  }
  fail('the token kept being due for refresh; cannot check the cache');
})();
console.log('1. token() twice: same token, one request to wxtoken');

// readme:begin
const wx = new WxToken(base, key); // wxtoken's internal URL and this service's API key
const getcallbackip = async (token) => {
  // any WeChat call, answering WeChat's decoded JSON
  const response = await fetch(`${wechat}/cgi-bin/getcallbackip?access_token=${encodeURIComponent(token)}`);
  return response.json();
};
const answer = await wx.withToken(appid, getcallbackip); // on 40001/42001: reports the token, retries once
console.log('ip_list:', answer.ip_list.join(' '));

const stop = new AbortController(); // stop.abort() ends the watcher
const newTokens = [];
const watching = wx.watch(appid, (t) => newTokens.push(t), { signal: stop.signal });
// readme:end
check(Array.isArray(answer.ip_list), `withToken answered ${JSON.stringify(answer)}`);
console.log('2. withToken(getcallbackip): ip_list');

// The retired token must be the cached one: if the scheduled refresh is near, let it pass first.
let info;
for (let attempt = 0; ; attempt++) {
  check(attempt < 4, 'the token stayed due for refresh');
  info = await wx.tokenInfo(appid);
  const margin = info.refresh_at - now();
  if (margin >= 8) break;
  console.log(`  scheduled refresh in ${Math.round(margin)} s; waiting for it first`);
  await sleep(Math.max(0, margin) * 1000 + 2000);
}
const before = info.generation;

const retired = await fetch(`${wechat}/_sim/accounts/${encodeURIComponent(appid)}/retire_tokens`, { method: 'POST' });
check(retired.status === 200, `retire_tokens answered ${retired.status}`);
const used = [];
const retried = await wx.withToken(appid, (token) => {
  used.push(token);
  return getcallbackip(token);
});
check(used.length === 2, `the WeChat call ran ${used.length} times, expected 2 (40001, then the new token)`);
check(
  used[0] !== used[1],
  'invalidate returned the refused token: this appid was force-refreshed less than ' +
    'refresh.min_force_interval (30 s) ago (an earlier run?); wait or use another appid',
);
check(used[0] === info.access_token, 'the first call did not use the cached token');
check(Array.isArray(retried.ip_list), `withToken after retire_tokens answered ${JSON.stringify(retried)}`);
const deadline = Date.now() + 15000;
let seen;
while (!(seen = newTokens.find((t) => t.generation > before))) {
  check(Date.now() < deadline, `the watcher reported no generation above ${before} within 15 s`);
  await sleep(100);
}
stop.abort();
await watching; // resolves once the abort ended the long-poll in flight
console.log(`3. retire_tokens: 40001, invalidate, retry with a new token; watcher saw generation ${seen.generation} > ${before}`);

try {
  await wx.token(forbiddenAppid);
  fail('token() of an appid the key is not granted succeeded');
} catch (e) {
  check(e instanceof WxTokenError, `expected a WxTokenError, got ${e}`);
  check(e.status === 403 && e.code === 'forbidden', `expected 403 forbidden, got ${e.status} ${e.code}`);
  console.log(`4. an appid not granted: WxTokenError status=${e.status} code=${e.code}`);
}

// Not port 1: fetch refuses "bad ports" (1 is one) without connecting. A port just freed is closed.
const closed = net.createServer().listen(0, '127.0.0.1');
await once(closed, 'listening');
const closedPort = closed.address().port;
closed.close();
await once(closed, 'close');
const started = Date.now();
try {
  await new WxToken(`http://127.0.0.1:${closedPort}`, key, { timeoutMs: 5000 }).token(appid);
  fail('token() from a wxtoken that is not listening succeeded');
} catch (e) {
  const elapsed = (Date.now() - started) / 1000;
  check(elapsed < 10, `the unreachable wxtoken took ${elapsed} s to fail`);
  console.log(`5. wxtoken not listening: ${e.name}: ${e.message} (${e.cause?.code ?? e.cause?.message}) after ${elapsed.toFixed(1)} s`);
}

console.log('OK: node client');
