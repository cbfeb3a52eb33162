// A client for wxtoken's token API: Node 20.3+ (built-in fetch, AbortSignal.any), no dependencies.
//
//   const wx = new WxToken('http://wxtoken.internal:8081', apiKey);
//   const answer = await wx.withToken('wxAUTHORIZERAPPID', callWeChat); // callWeChat(token) -> WeChat's JSON
//   const stop = new AbortController();
//   wx.watch('wxAUTHORIZERAPPID', onToken, { signal: stop.signal });    // optional: new tokens at once
//
// Tokens are cached per appid until their refresh_at (never until expires_at: WeChat retires a
// replaced token long before that). Nothing here logs the API key or a token.

import { setTimeout as sleep } from 'node:timers/promises';

/** WeChat's errcodes for a token it refuses: invalid (40001) and expired (42001). */
export const RETIRED_TOKEN_ERRCODES = [40001, 42001];

/**
 * wxtoken answered with an error: `status` (HTTP), `code` (wxtoken's: 'forbidden',
 * 'no_valid_token', …; null when the answer was not wxtoken's JSON, e.g. a proxy's page),
 * `message`, and `retryAfter` (seconds, on 429; else null). Connection failures are fetch's own
 * TypeError ('fetch failed', the reason in `cause`); a timeout is a 'TimeoutError' DOMException.
 */
export class WxTokenError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(code ? `wxtoken ${status} ${code}: ${message}` : `wxtoken ${status}: ${message}`);
    this.name = 'WxTokenError';
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** The token API of one wxtoken (its internal listener), with one API key. */
export class WxToken {
  #apiKey;
  #tokens = new Map(); // appid -> the last token response

  /**
   * @param {string} base wxtoken's internal URL, e.g. http://wxtoken.internal:8081
   * @param {string} apiKey the client's key (wxt_…)
   * @param {{timeoutMs?: number, fetch?: typeof fetch}} [options] timeoutMs bounds each request
   *   (15 s; a long-poll gets its wait on top); fetch replaces globalThis.fetch (a proxy, a counter)
   */
  constructor(base, apiKey, { timeoutMs = 15000, fetch = globalThis.fetch } = {}) {
    this.base = base.replace(/\/+$/, '');
    this.#apiKey = apiKey;
    this.timeoutMs = timeoutMs;
    this.fetch = fetch;
  }

  /**
   * The token response for appid ({appid, access_token, expires_at, refresh_at, generation,
   * source}), from the cache until refresh_at.
   */
  async tokenInfo(appid) {
    const t = this.#tokens.get(appid);
    if (t && Date.now() / 1000 < t.refresh_at) return t;
    return this.#request(appid);
  }

  /** The access_token to call WeChat with for appid (cached until refresh_at). */
  async token(appid) {
    return (await this.tokenInfo(appid)).access_token;
  }

  /** Reports a token WeChat refused (40001/42001); resolves to the token to use now. */
  async invalidate(appid, refused) {
    return (await this.#request(appid, '/invalidate', { body: { access_token: refused } })).access_token;
  }

  /**
   * Runs `call(token)` (sync or async), which returns WeChat's decoded JSON. If WeChat answered
   * errcode 40001 or 42001, reports that token and runs `call` once more with the token returned.
   * Resolves to the last answer.
   */
  async withToken(appid, call) {
    const used = await this.token(appid);
    const answer = await call(used);
    if (RETIRED_TOKEN_ERRCODES.includes(answer?.errcode)) {
      return call(await this.invalidate(appid, used));
    }
    return answer;
  }

  /**
   * Long-polls appid's token (GET ?after=GEN&wait=S) until `signal` aborts, updating the cache and
   * calling `onToken(tokenResponse)` for each generation above `after` (default: the cached
   * token's generation, else 0, so the current token is reported first). Errors go to `onError`
   * and are retried after 1 s, doubling up to 30 s. Resolves once aborted; an abort also ends
   * the long-poll in flight.
   * @param {{after?: number, signal?: AbortSignal, onError?: (e: Error) => void, wait?: number}} [options]
   */
  async watch(appid, onToken, { after, signal, onError, wait = 30 } = {}) {
    let generation = after ?? this.#tokens.get(appid)?.generation ?? 0;
    let delay = 1000;
    while (!signal?.aborted) {
      try {
        const t = await this.#request(appid, `?after=${generation}&wait=${wait}`, { wait, signal });
        delay = 1000;
        if (t.generation > generation && !signal?.aborted) {
          generation = t.generation;
          await onToken(t);
        }
      } catch (e) {
        if (signal?.aborted) return;
        onError?.(e);
        await sleep(delay, undefined, { signal }).catch(() => {}); // an abort ends the wait
        delay = Math.min(delay * 2, 30000);
      }
    }
  }

  async #request(appid, suffix = '', { body, wait = 0, signal } = {}) {
    const timeout = AbortSignal.timeout(this.timeoutMs + wait * 1000);
    const headers = { authorization: `Bearer ${this.#apiKey}`, accept: 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    const response = await this.fetch(`${this.base}/v1/tokens/${encodeURIComponent(appid)}${suffix}`, {
      method: body === undefined ? 'GET' : 'POST',
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
    });
    const text = await response.text();
    if (response.status !== 200) throw errorFrom(response, text);
    const t = JSON.parse(text);
    this.#tokens.set(appid, t);
    return t;
  }
}

function errorFrom(response, text) {
  let code = null;
  let message = `HTTP ${response.status} ${response.statusText}`;
  try {
    const { error } = JSON.parse(text);
    if (typeof error?.code === 'string') ({ code, message } = error);
  } catch {
    // not wxtoken's JSON (a proxy's page): keep the status line
  }
  const retryAfter = Number.parseInt(response.headers.get('retry-after') ?? '', 10);
  return new WxTokenError(response.status, code, message, Number.isNaN(retryAfter) ? null : retryAfter);
}
