#!/usr/bin/env python3
"""Runs wxtoken_client against a live wxtoken and WeChat simulator (the scenario in clients/README.md).

Environment: WXTOKEN_URL, WXTOKEN_API_KEY (granted WXTOKEN_APPID only), WXTOKEN_APPID,
WXTOKEN_FORBIDDEN_APPID, WXTOKEN_SIM_URL. Exits 0 when every step passes, 1 otherwise.
"""

import json
import os
import queue
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import quote

sys.dont_write_bytecode = True  # no __pycache__ beside the library
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wxtoken_client import WxToken, WxTokenError  # noqa: E402


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def env(name):
    value = os.environ.get(name)
    if not value:
        fail(f"{name} is not set (the environment is described in clients/README.md)")
    return value


class CountingHTTPHandler(urllib.request.HTTPHandler):
    """Counts the HTTP requests that actually leave the client."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def http_open(self, req):
        self.count += 1
        return super().http_open(req)


def step_cache(base, key, appid):
    """token() twice: the same token, one request to wxtoken."""
    for _ in range(3):
        counter = CountingHTTPHandler()
        wx = WxToken(base, key, opener=urllib.request.build_opener(counter))
        first = wx.token_info(appid)
        if first["refresh_at"] - time.time() < 2:  # due for refresh: a second request would be right
            print("  token due for refresh within 2 s; waiting for the next one")
            time.sleep(max(0.0, first["refresh_at"] - time.time()) + 1.5)
            continue
        second = wx.token(appid)
        check(second == first["access_token"], "token() returned a different token from the cache")
        check(counter.count == 1, f"two token() calls sent {counter.count} requests, expected 1")
        return
    fail("the token kept being due for refresh; cannot check the cache")


def retire_tokens(wechat, appid):
    request = urllib.request.Request(f"{wechat}/_sim/accounts/{quote(appid)}/retire_tokens", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=10) as r:
        check(r.status == 200, f"retire_tokens answered {r.status}")


def main():
    base, key, appid = env("WXTOKEN_URL"), env("WXTOKEN_API_KEY"), env("WXTOKEN_APPID")
    forbidden_appid, wechat = env("WXTOKEN_FORBIDDEN_APPID"), env("WXTOKEN_SIM_URL").rstrip("/")

    step_cache(base, key, appid)
    print("1. token() twice: same token, one request to wxtoken")

    # readme:begin
    wx = WxToken(base, key)  # wxtoken's internal URL and this service's API key

    def getcallbackip(token):  # any WeChat call, answering WeChat's decoded JSON
        url = f"{wechat}/cgi-bin/getcallbackip?access_token={quote(token)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)

    answer = wx.with_token(appid, getcallbackip)  # on 40001/42001: reports the token, retries once
    print("ip_list:", answer["ip_list"])

    new_tokens = queue.Queue()
    watcher = wx.watch(appid, new_tokens.put)  # a thread: put(t) for each new token response
    # readme:end
    check(isinstance(answer.get("ip_list"), list), f"with_token answered {answer}")
    print("2. with_token(getcallbackip): ip_list")

    # The retired token must be the cached one: if the scheduled refresh is near, let it pass first.
    for _ in range(4):
        info = wx.token_info(appid)
        margin = info["refresh_at"] - time.time()
        if margin >= 8:
            break
        print(f"  scheduled refresh in {margin:.0f} s; waiting for it first")
        time.sleep(max(0.0, margin) + 2)
    else:
        fail("the token stayed due for refresh")
    before = info["generation"]

    retire_tokens(wechat, appid)
    used = []

    def recording_getcallbackip(token):
        used.append(token)
        return getcallbackip(token)

    answer = wx.with_token(appid, recording_getcallbackip)
    check(len(used) == 2, f"the WeChat call ran {len(used)} times, expected 2 (40001, then the new token)")
    check(used[0] != used[1], "invalidate returned the refused token: this appid was force-refreshed less than "
          "refresh.min_force_interval (30 s) ago (an earlier run?); wait or use another appid")
    check(isinstance(answer.get("ip_list"), list), f"with_token after retire_tokens answered {answer}")
    check(used[0] == info["access_token"], "the first call did not use the cached token")
    deadline = time.monotonic() + 15
    while True:
        try:
            t = new_tokens.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            fail(f"the watcher reported no generation above {before} within 15 s")
        if t["generation"] > before:
            break
    watcher.stop()
    print(f"3. retire_tokens: 40001, invalidate, retry with a new token; watcher saw generation {t['generation']} > {before}")

    try:
        wx.token(forbidden_appid)
        fail("token() of an appid the key is not granted succeeded")
    except WxTokenError as e:
        check(e.status == 403 and e.code == "forbidden", f"expected 403 forbidden, got {e!r}")
        print(f"4. an appid not granted: {e!r}")

    started = time.monotonic()
    try:
        WxToken("http://127.0.0.1:1", key, timeout=5).token(appid)
        fail("token() from a wxtoken that is not listening succeeded")
    except (WxTokenError, urllib.error.URLError, OSError) as e:
        elapsed = time.monotonic() - started
        check(elapsed < 10, f"the unreachable wxtoken took {elapsed:.1f} s to fail")
        print(f"5. wxtoken not listening: {type(e).__name__} after {elapsed:.1f} s")

    print("OK: python client")


if __name__ == "__main__":
    main()
