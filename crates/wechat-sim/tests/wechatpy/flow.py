"""The whole third-party-platform flow, run by wechatpy (an independent WeChat client library)
against wechat-sim. wechatpy is used unmodified; only its API base URLs point at the simulator.

Run by crates/wechat-sim/tests/sim/wechatpy.rs with WXSIM_BASE_URL set. Uses only loopback.
"""

import http.server
import os
import queue
import re
import sys
import threading
import urllib.parse

os.environ["NO_PROXY"] = "127.0.0.1,localhost"
os.environ.pop("HTTP_PROXY", None)
os.environ.pop("http_proxy", None)

import requests  # noqa: E402  (wechatpy's own dependency)
from wechatpy import WeChatComponent  # noqa: E402
from wechatpy.client import WeChatComponentClient  # noqa: E402
from wechatpy.exceptions import WeChatClientException  # noqa: E402

BASE = os.environ["WXSIM_BASE_URL"].rstrip("/")

# The only change to wechatpy: where its APIs live.
WeChatComponent.API_BASE_URL = BASE + "/cgi-bin"
WeChatComponent.PRE_AUTH_URL = BASE + "/cgi-bin/componentloginpage"
WeChatComponentClient.API_BASE_URL = BASE + "/cgi-bin/"

pushes = queue.Queue()


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
        pushes.put((query, body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"success")

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
threading.Thread(target=server.serve_forever, daemon=True).start()
push_url = "http://127.0.0.1:%d/wechat/events" % server.server_address[1]

control = requests.Session()
control.trust_env = False


def sim(method, path, **kw):
    r = control.request(method, BASE + path, **kw)
    r.raise_for_status()
    return r.json() if r.content else None


def next_push():
    query, body = pushes.get(timeout=10)
    return body, query["msg_signature"], query["timestamp"], query["nonce"]


def step(name):
    print("ok:", name, flush=True)


comp = sim("POST", "/_sim/components", json={"push_url": push_url})
component = WeChatComponent(
    comp["component_appid"], comp["component_appsecret"], comp["token"], comp["encoding_aes_key"]
)

# 1. The ticket pushed at creation, decrypted and cached by wechatpy itself.
msg = component.parse_message(*next_push())
assert msg.type == "component_verify_ticket", msg
assert component.component_verify_ticket == comp["latest_ticket"]
step("ticket push decrypted by parse_message")

# The deprecated cache_component_verify_ticket path too, with a ticket pushed on demand.
sim("POST", "/_sim/tickets/push", json={"component_appid": comp["component_appid"]})
component.cache_component_verify_ticket(*next_push())
assert component.component_verify_ticket == sim("GET", "/_sim/components/" + comp["component_appid"])["latest_ticket"]
step("ticket push cached by cache_component_verify_ticket")

# 2. Component token.
token = component.fetch_access_token()
assert token["expires_in"] == 7200 and "errcode" not in token
step("component token")

# 3. Pre-auth code and the consent page (wechatpy builds the URL).
account = sim("POST", "/_sim/accounts", json={"kind": "official_account"})
redirect = "https://platform.example/authorize/callback?tenant=7"
login_url = component.get_pre_auth_url(redirect)
page = control.get(login_url)
assert page.status_code == 200 and account["appid"] in page.text, page.text
form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text))
form = {k: v.replace("&amp;", "&") for k, v in form.items()}
form["appid"] = account["appid"]
approved = control.post(login_url.split("?")[0], data=form, allow_redirects=False)
assert approved.status_code == 302, approved.text
location = urllib.parse.urlsplit(approved.headers["Location"])
back = dict(urllib.parse.parse_qsl(location.query))
assert back["tenant"] == "7" and back["expires_in"] == "600"
step("pre-auth code and consent page redirect")

# 4. The authorized push: wechatpy decrypts it and exchanges the code (api_query_auth).
msg = component.parse_message(*next_push())
assert msg.type == "authorized", msg
assert msg.authorizer_appid == account["appid"]
assert msg.authorization_code == back["auth_code"]
info = msg.query_auth_result["authorization_info"]
refresh_token = info["authorizer_refresh_token"]
assert refresh_token.startswith("refreshtoken@@@")
step("authorized push and query_auth")

# 5. Refresh the authorizer token; the refresh token is echoed.
refreshed = component.refresh_authorizer_token(account["appid"], refresh_token)
assert refreshed["authorizer_refresh_token"] == refresh_token
assert refreshed["authorizer_access_token"] != info["authorizer_access_token"]
step("refresh authorizer token")

# 6. A business call with the authorizer token, through wechatpy's own client.
client = component.get_client_by_appid(account["appid"])
ips = client.misc.get_wechat_ips()
assert ips, ips
step("getcallbackip with the authorizer token")

# 7. The authorizer list and info.
listing = component.get_authorizer_list()
assert listing["total_count"] == 1
assert listing["list"][0]["authorizer_appid"] == account["appid"]
assert listing["list"][0]["refresh_token"] == refresh_token
details = component.get_authorizer_info(account["appid"])
assert details["authorization_info"]["authorizer_appid"] == account["appid"]
assert "MiniProgramInfo" not in details["authorizer_info"]
step("authorizer list and info")

# 8. Two simulated hours later the component token is dead (42001); wechatpy caches it by its own
# clock, gets the error, fetches a new one with the newest pushed ticket and retries.
sim("POST", "/_sim/clock/advance", json={"seconds": 7201})
msg = component.parse_message(*next_push())
assert msg.type == "component_verify_ticket"
listing = component.get_authorizer_list()
assert listing["total_count"] == 1
step("42001 recovery through wechatpy's auto-retry")

# 9. Unauthorize: the push is decrypted, and the refresh token is now refused with 61023.
sim("POST", "/_sim/accounts/%s/unauthorize" % account["appid"], json={"component_appid": comp["component_appid"]})
msg = component.parse_message(*next_push())
assert msg.type == "unauthorized" and msg.authorizer_appid == account["appid"]
try:
    component.refresh_authorizer_token(account["appid"], refresh_token)
    raise AssertionError("refresh after unauthorize must fail")
except WeChatClientException as e:
    assert e.errcode == 61023, e
step("unauthorized push and 61023")

stats = sim("GET", "/_sim/stats")
assert stats["endpoints"]["api_query_auth"]["ok"] == 1
print("wechatpy flow: all steps passed", flush=True)
server.shutdown()
sys.exit(0)
