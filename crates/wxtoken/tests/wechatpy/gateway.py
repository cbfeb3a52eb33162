"""wechatpy (an independent WeChat client library), unmodified but for its API base URLs, runs
through wxtoken's gateway in SDK mode: its token requests are answered by wxtoken, its business
calls are forwarded with wxtoken's current token, and a token WeChat retired meanwhile never
reaches it as an error.

Run by crates/wxtoken/tests/stories/gateway.rs with WXTOKEN_GATEWAY_SDK (the SDK base URL,
http://127.0.0.1:PORT/sdk/API_KEY), WXSIM_BASE_URL, COMPONENT_APPID and AUTHORIZER_APPID set.
Uses only loopback.
"""

import io
import os
import sys

os.environ["NO_PROXY"] = "127.0.0.1,localhost"
os.environ.pop("HTTP_PROXY", None)
os.environ.pop("http_proxy", None)

import requests  # noqa: E402  (wechatpy's own dependency)
from wechatpy import WeChatComponent  # noqa: E402
from wechatpy.client import WeChatComponentClient  # noqa: E402

GATEWAY = os.environ["WXTOKEN_GATEWAY_SDK"].rstrip("/")
SIM = os.environ["WXSIM_BASE_URL"].rstrip("/")
COMPONENT = os.environ["COMPONENT_APPID"]
APPID = os.environ["AUTHORIZER_APPID"]

# The only change to wechatpy: where its APIs live.
WeChatComponent.API_BASE_URL = GATEWAY + "/cgi-bin"
WeChatComponentClient.API_BASE_URL = GATEWAY + "/cgi-bin/"

control = requests.Session()
control.trust_env = False


def step(name):
    print("ok:", name, flush=True)


# The service holds no appsecret, no ticket and no refresh token: wxtoken does.
component = WeChatComponent(COMPONENT, "not-the-appsecret", "token", "a" * 43)
component.session.set("component_verify_ticket", "not-a-ticket")
token = component.fetch_access_token()
assert token["component_access_token"] and token["expires_in"] >= 1800, token
step("component token answered by wxtoken")

component.session.set(APPID + "_refresh_token", "not-the-refresh-token")
client = component.get_client_by_appid(APPID)
assert client.access_token
step("authorizer token answered by wxtoken")

assert client.misc.get_wechat_ips()
step("getcallbackip forwarded")

sent = client.message.send_text("oUser1", "hello")
assert sent["errcode"] == 0, sent
step("custom send forwarded")

data = bytes(range(256)) * 4096
uploaded = client.media.upload("image", ("photo.jpg", io.BytesIO(data), "image/jpeg"))
media_id = uploaded["media_id"]
downloaded = client.media.download(media_id)
assert downloaded.content == data, len(downloaded.content)
step("media upload and download forwarded")

# WeChat retires the token (a refresh elsewhere): the SDK's next call still succeeds.
control.post(SIM + "/_sim/accounts/%s/retire_tokens" % APPID).raise_for_status()
sent = client.message.send_text("oUser1", "after the token was retired")
assert sent["errcode"] == 0, sent
step("a retired token retried transparently")

print("wechatpy through the gateway: all steps passed", flush=True)
sys.exit(0)
