// node-easywechat (a Node.js port of EasyWeChat 6, from npm), unmodified but for its `http.baseURL`,
// runs through wxtoken's gateway in SDK mode: its component and authorizer token requests are
// answered by wxtoken, its business calls are forwarded with wxtoken's current token, and a token
// WeChat retired meanwhile never reaches it as an error.
//
// Run by crates/wxtoken/tests/stories/gateway.rs with NODE_PATH naming a node_modules that holds
// node-easywechat, and WXTOKEN_GATEWAY_SDK, WXSIM_BASE_URL, COMPONENT_APPID and AUTHORIZER_APPID.
// Uses only loopback.
'use strict';

const fs = require('fs');
const http = require('http');
const os = require('os');
const path = require('path');
const { OpenPlatform } = require('node-easywechat');

// The SDK's default file cache writes into the working directory: keep it out of the repository.
process.chdir(fs.mkdtempSync(path.join(os.tmpdir(), 'wxtoken-node-sdk-')));

const GATEWAY = process.env.WXTOKEN_GATEWAY_SDK.replace(/\/$/, '');
const SIM = process.env.WXSIM_BASE_URL.replace(/\/$/, '');
const COMPONENT = process.env.COMPONENT_APPID;
const APPID = process.env.AUTHORIZER_APPID;

function step(name) {
  console.log('ok: ' + name);
}

function assert(ok, what) {
  if (!ok) {
    throw new Error('assertion failed: ' + what);
  }
}

function post(url) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'POST' }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error('HTTP ' + res.statusCode))));
    });
    req.on('error', reject);
    req.end();
  });
}

async function main() {
  // The service holds no appsecret, no ticket and no refresh token: wxtoken does. The only change
  // to the SDK: where WeChat's API is.
  const app = new OpenPlatform({
    app_id: COMPONENT,
    secret: 'not-the-appsecret',
    token: 'token',
    aes_key: 'a'.repeat(43),
    http: { baseURL: GATEWAY + '/' },
  });
  await app.getVerifyTicket().setTicket('not-a-ticket');
  const componentToken = await app.getComponentAccessToken().getToken();
  assert(componentToken, 'a component token');
  step('component token answered by wxtoken');

  const account = await app.getOfficialAccountWithRefreshToken(APPID, 'not-the-refresh-token');
  const client = account.getClient();
  step('authorizer token answered by wxtoken');

  const ips = (await client.get('cgi-bin/getcallbackip')).toObject();
  assert(Array.isArray(ips.ip_list), 'ip_list: ' + JSON.stringify(ips));
  step('getcallbackip forwarded');

  const message = { touser: 'oUser1', msgtype: 'text', text: { content: 'hello' } };
  let sent = (await client.postJson('cgi-bin/message/custom/send', message)).toObject();
  assert(sent.errcode === 0, 'custom send: ' + JSON.stringify(sent));
  step('custom send forwarded');

  // WeChat retires the token (a refresh elsewhere): the SDK's next call still succeeds.
  await post(SIM + '/_sim/accounts/' + APPID + '/retire_tokens');
  sent = (await client.postJson('cgi-bin/message/custom/send', message)).toObject();
  assert(sent.errcode === 0, 'after retirement: ' + JSON.stringify(sent));
  step('a retired token retried transparently');

  console.log('node-easywechat through the gateway: all steps passed');
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
