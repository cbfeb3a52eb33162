"""Signs JS-SDK inputs with wechatpy, an independent implementation, for crates/wechat/tests/jssdk.rs.

Reads one JSON object per line on standard input; writes one line per input: wechatpy's wx.config
signature, a space, and the cardExt signature made with wechatpy's WeChatSigner (values sorted,
joined without separator, SHA-1). Uses no network.
"""

import json
import sys

from wechatpy.client.api.jsapi import WeChatJSAPI
from wechatpy.utils import WeChatSigner

jsapi = WeChatJSAPI()
for line in sys.stdin:
    case = json.loads(line)
    config = jsapi.get_jsapi_signature(
        case["noncestr"], case["ticket"], case["timestamp"], case["url"]
    )
    signer = WeChatSigner()
    signer.add_data(*[v for v in case["card_values"] if v])
    print(config, signer.signature)
