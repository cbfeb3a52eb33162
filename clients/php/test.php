<?php
/*
 * Runs WxToken.php against a live wxtoken and WeChat simulator (the scenario in clients/README.md).
 *
 * Environment: WXTOKEN_URL, WXTOKEN_API_KEY (granted WXTOKEN_APPID only), WXTOKEN_APPID,
 * WXTOKEN_FORBIDDEN_APPID, WXTOKEN_SIM_URL. Exits 0 when every step passes, 1 otherwise.
 */

declare(strict_types=1);

require __DIR__ . '/WxToken.php';

function fail(string $message): never
{
    fwrite(STDERR, "FAIL: $message\n");
    exit(1);
}

function check(bool $condition, string $message): void
{
    if (!$condition) {
        fail($message);
    }
}

function env(string $name): string
{
    $value = getenv($name);
    if ($value === false || $value === '') {
        fail("$name is not set (the environment is described in clients/README.md)");
    }
    return $value;
}

set_exception_handler(fn (Throwable $e) => fail('unexpected ' . get_class($e) . ': ' . $e->getMessage()));

$base = env('WXTOKEN_URL');
$key = env('WXTOKEN_API_KEY');
$appid = env('WXTOKEN_APPID');
$forbiddenAppid = env('WXTOKEN_FORBIDDEN_APPID');
$wechat = rtrim(env('WXTOKEN_SIM_URL'), '/');

// 1. token() twice: the same token, one request to wxtoken (the client's own request counter).
(function () use ($base, $key, $appid): void {
    for ($attempt = 0; $attempt < 3; $attempt++) {
        $counted = new WxToken($base, $key);
        $first = $counted->tokenInfo($appid);
        if ($first['refresh_at'] - microtime(true) < 2) {   // due for refresh: a second request would be right
            echo "  token due for refresh within 2 s; waiting for the next one\n";
            usleep((int) (max(0, $first['refresh_at'] - microtime(true)) * 1e6) + 1_500_000);
            continue;
        }
        $second = $counted->token($appid);
        check($second === $first['access_token'], 'token() returned a different token from the cache');
        check($counted->requestCount() === 1, "two token() calls sent {$counted->requestCount()} requests, expected 1");
        return;
    }
    fail('the token kept being due for refresh; cannot check the cache');
})();
echo "1. token() twice: same token, one request to wxtoken\n";

// readme:begin
$wx = new WxToken($base, $key); // wxtoken's internal URL and this service's API key
$getcallbackip = function (string $token) use ($wechat): array { // any WeChat call, answering its JSON
    $ch = curl_init("$wechat/cgi-bin/getcallbackip?access_token=" . urlencode($token));
    curl_setopt_array($ch, [CURLOPT_RETURNTRANSFER => true, CURLOPT_TIMEOUT => 10]);
    return json_decode((string) curl_exec($ch), true, 512, JSON_THROW_ON_ERROR);
};
$answer = $wx->withToken($appid, $getcallbackip); // on 40001/42001: reports the token, retries once
echo 'ip_list: ', implode(' ', $answer['ip_list']), "\n";
// readme:end
check(is_array($answer['ip_list'] ?? null), 'withToken answered ' . json_encode($answer));
echo "2. withToken(getcallbackip): ip_list\n";

// The retired token must be the cached one: if the scheduled refresh is near, let it pass first.
for ($attempt = 0; ; $attempt++) {
    check($attempt < 4, 'the token stayed due for refresh');
    $info = $wx->tokenInfo($appid);
    $margin = $info['refresh_at'] - microtime(true);
    if ($margin >= 8) {
        break;
    }
    printf("  scheduled refresh in %.0f s; waiting for it first\n", $margin);
    usleep((int) (max(0, $margin) * 1e6) + 2_000_000);
}
$before = $info['generation'];

$ch = curl_init("$wechat/_sim/accounts/" . rawurlencode($appid) . '/retire_tokens');
curl_setopt_array($ch, [CURLOPT_POST => true, CURLOPT_POSTFIELDS => '', CURLOPT_RETURNTRANSFER => true, CURLOPT_TIMEOUT => 10]);
check(is_string(curl_exec($ch)) && curl_getinfo($ch, CURLINFO_RESPONSE_CODE) === 200, 'retire_tokens failed');
$used = [];
$retried = $wx->withToken($appid, function (string $token) use (&$used, $getcallbackip): array {
    $used[] = $token;
    return $getcallbackip($token);
});
check(count($used) === 2, 'the WeChat call ran ' . count($used) . ' times, expected 2 (40001, then the new token)');
check($used[0] !== $used[1], 'invalidate returned the refused token: this appid was force-refreshed less than '
    . 'refresh.min_force_interval (30 s) ago (an earlier run?); wait or use another appid');
check($used[0] === $info['access_token'], 'the first call did not use the cached token');
check(is_array($retried['ip_list'] ?? null), 'withToken after retire_tokens answered ' . json_encode($retried));

// The watcher blocks (PHP has no threads): run it from the generation before the report.
$started = microtime(true);
$seen = $wx->watch($appid, fn (array $t) => false, rounds: 3, after: $before);   // false: stop at the first new token
$elapsed = microtime(true) - $started;
check($seen > $before && $elapsed < 15, "the watcher reported no generation above $before within 15 s");
printf("3. retire_tokens: 40001, invalidate, retry with a new token; watcher saw generation %d > %d\n", $seen, $before);

try {
    $wx->token($forbiddenAppid);
    fail('token() of an appid the key is not granted succeeded');
} catch (WxTokenError $e) {
    check($e->status === 403 && $e->errorCode === 'forbidden', "expected 403 forbidden, got {$e->getMessage()}");
    echo "4. an appid not granted: WxTokenError status={$e->status} code={$e->errorCode}\n";
}

$started = microtime(true);
try {
    (new WxToken('http://127.0.0.1:1', $key, 5.0))->token($appid);
    fail('token() from a wxtoken that is not listening succeeded');
} catch (RuntimeException $e) {
    $elapsed = microtime(true) - $started;
    check($elapsed < 10, sprintf('the unreachable wxtoken took %.1f s to fail', $elapsed));
    printf("5. wxtoken not listening: %s: %s after %.1f s\n", get_class($e), $e->getMessage(), $elapsed);
}

echo "OK: php client\n";
