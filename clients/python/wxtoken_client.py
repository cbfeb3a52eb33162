"""A client for wxtoken's token API, standard library only (Python 3.8+).

    wx = WxToken("http://wxtoken.internal:8081", api_key)
    answer = wx.with_token("wxAUTHORIZERAPPID", call_wechat)   # call_wechat(token) -> WeChat's JSON
    watcher = wx.watch("wxAUTHORIZERAPPID", on_token)          # optional: learn of new tokens at once
    watcher.stop()

Tokens are cached per appid until their ``refresh_at`` (never until ``expires_at``: WeChat retires
a replaced token long before that). One client is safe to share between threads. Nothing here
logs or prints the API key or a token.
"""

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

__all__ = ["WxToken", "WxTokenError", "Watcher"]

RETIRED_TOKEN_ERRCODES = (40001, 42001)  # WeChat: invalid / expired access_token


class WxTokenError(Exception):
    """wxtoken answered with an error.

    ``status`` is the HTTP status, ``code`` wxtoken's error code (``forbidden``, ``no_valid_token``,
    ...; None when the answer was not wxtoken's JSON, e.g. a proxy's error page), ``message`` a
    sentence for people, ``retry_after`` the seconds to wait on 429 (else None). Connection
    failures are not wrapped: they raise urllib's ``URLError`` (an ``OSError``).
    """

    def __init__(self, status, code, message, retry_after=None):
        super().__init__(f"wxtoken {status} {code}: {message}" if code else f"wxtoken {status}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def __repr__(self):
        return f"WxTokenError(status={self.status}, code={self.code!r})"


class WxToken:
    """The token API of one wxtoken (its internal listener), with one API key.

    ``timeout`` bounds each request in seconds (a long-poll gets its wait on top). ``opener`` is
    the ``urllib.request.OpenerDirector`` requests go through (default: ``build_opener()``), e.g.
    to add a proxy handler or count requests.
    """

    def __init__(self, base, api_key, timeout=15.0, opener=None):
        self.base = base.rstrip("/")
        self._api_key = api_key
        self.timeout = timeout
        self._opener = opener or urllib.request.build_opener()
        self._tokens = {}  # appid -> the last token response
        self._lock = threading.Lock()

    def __repr__(self):  # never shows the key
        return f"WxToken({self.base!r})"

    def token_info(self, appid):
        """The token response for appid: a dict with ``appid``, ``access_token``, ``expires_at``,
        ``refresh_at``, ``generation`` and ``source``; from the cache until ``refresh_at``."""
        with self._lock:
            t = self._tokens.get(appid)
        if t is None or time.time() >= t["refresh_at"]:
            t = self._request(appid)
        return t

    def token(self, appid):
        """The access_token to call WeChat with for appid (cached until ``refresh_at``)."""
        return self.token_info(appid)["access_token"]

    def invalidate(self, appid, refused):
        """Reports a token WeChat refused (40001/42001); returns the token to use now."""
        return self._request(appid, "/invalidate", body={"access_token": refused})["access_token"]

    def with_token(self, appid, call):
        """Runs ``call(token)``, which returns WeChat's decoded JSON (a dict). If WeChat answered
        errcode 40001 or 42001, reports that token and runs ``call`` once more with the token
        returned. Returns the last answer."""
        used = self.token(appid)
        answer = call(used)
        if answer.get("errcode") in RETIRED_TOKEN_ERRCODES:
            answer = call(self.invalidate(appid, used))
        return answer

    def watch(self, appid, on_token, after=None, on_error=None, wait=30):
        """Starts a :class:`Watcher`: a daemon thread long-polling appid's token. It calls
        ``on_token(token_response)`` for each generation greater than ``after`` (default: the
        cached token's generation, else 0, so the current token is reported first)."""
        if after is None:
            with self._lock:
                after = self._tokens.get(appid, {}).get("generation", 0)
        return Watcher(self, appid, on_token, after, on_error, wait)

    def _request(self, appid, suffix="", body=None, wait=0):
        url = f"{self.base}/v1/tokens/{urllib.parse.quote(appid, safe='')}{suffix}"
        headers = {"Authorization": "Bearer " + self._api_key, "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers)
        try:
            with self._opener.open(request, timeout=self.timeout + wait) as response:
                t = json.load(response)
        except urllib.error.HTTPError as e:
            raise _error_from(e) from None
        with self._lock:
            self._tokens[appid] = t
        return t


def _error_from(e):
    try:
        error = json.loads(e.read())["error"]
        code, message = error["code"], error["message"]
    except (ValueError, KeyError, TypeError, OSError):
        code, message = None, f"HTTP {e.code} {e.reason}"
    retry_after = e.headers.get("Retry-After") if e.headers else None
    return WxTokenError(e.code, code, message, int(retry_after) if retry_after and retry_after.isdigit() else None)


class Watcher:
    """Long-polls ``GET /v1/tokens/{appid}?after=GEN&wait=S`` on a daemon thread, updating the
    client's cache and calling ``on_token`` with each new token response. Errors (passed to
    ``on_error`` if given) are retried after 1 s, doubling up to 30 s.

    ``stop()`` returns at once: nothing is called after it, and the thread ends when its current
    long-poll returns (urllib cannot abort one), at the latest ``wait`` seconds later.
    """

    def __init__(self, client, appid, on_token, after, on_error, wait):
        self.appid = appid
        self.generation = after  # the last generation seen
        self._client, self._on_token, self._on_error, self._wait = client, on_token, on_error, wait
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"wxtoken-watch-{appid}", daemon=True)
        self._thread.start()

    def stop(self, timeout=0):
        """Stops the watcher; waits up to ``timeout`` seconds (None: until it ends) for the thread."""
        self._stopped.set()
        if timeout != 0:
            self._thread.join(timeout)

    def _run(self):
        delay = 1
        while not self._stopped.is_set():
            try:
                t = self._client._request(self.appid, f"?after={self.generation}&wait={self._wait}", wait=self._wait)
                delay = 1
                if t["generation"] > self.generation and not self._stopped.is_set():
                    self.generation = t["generation"]
                    self._on_token(t)
            except Exception as e:  # keep watching whatever happens; report it
                if self._stopped.is_set():
                    return
                if self._on_error is not None:
                    self._on_error(e)
                self._stopped.wait(delay)
                delay = min(delay * 2, 30)
