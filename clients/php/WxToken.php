<?php
/*
 * A client for wxtoken's token API (its internal listener): PHP 8.2 with the curl extension.
 *
 *   $wx = new WxToken('http://wxtoken.internal:8081', $apiKey);
 *   $answer = $wx->withToken('wxAUTHORIZERAPPID', $callWeChat);   // $callWeChat($token) -> WeChat's JSON
 *   $wx->watch('wxAUTHORIZERAPPID', $onToken);                    // a worker: blocks, long-polling
 *
 * Tokens are cached per appid until their refresh_at (never until expires_at: WeChat retires a
 * replaced token long before that). The cache lives in the object: under PHP-FPM, where each
 * request starts afresh, keep token responses in APCu with ttl refresh_at - time() instead.
 * Nothing here logs the API key or a token.
 */

declare(strict_types=1);

/**
 * wxtoken answered with an error: $status (HTTP; also the exception code), $errorCode (wxtoken's:
 * 'forbidden', 'no_valid_token', …; null when the answer was not wxtoken's JSON, e.g. a proxy's
 * page), the message, and $retryAfter (seconds, on 429). A request that reached no wxtoken throws
 * a plain RuntimeException with curl's error.
 */
final class WxTokenError extends RuntimeException
{
    public function __construct(
        public readonly int $status,
        public readonly ?string $errorCode,
        string $message,
        public readonly ?int $retryAfter = null,
    ) {
        parent::__construct($errorCode === null ? "wxtoken $status: $message" : "wxtoken $status $errorCode: $message", $status);
    }
}

/** The token API of one wxtoken, with one API key. */
final class WxToken
{
    /** WeChat's errcodes for a token it refuses: invalid (40001) and expired (42001). */
    public const RETIRED_TOKEN_ERRCODES = [40001, 42001];

    private string $base;
    private array $tokens = [];   // appid => the last token response
    private int $requests = 0;

    /** $timeout bounds each request in seconds (a long-poll gets its wait on top). */
    public function __construct(
        string $base,
        #[\SensitiveParameter] private string $apiKey,
        private float $timeout = 15.0,
    ) {
        $this->base = rtrim($base, '/');
    }

    public function __debugInfo(): array   // var_dump() never shows the key or tokens
    {
        return ['base' => $this->base, 'cached' => array_keys($this->tokens), 'requests' => $this->requests];
    }

    /** The token response for $appid (appid, access_token, expires_at, refresh_at, generation, source), cached until refresh_at. */
    public function tokenInfo(string $appid): array
    {
        $t = $this->tokens[$appid] ?? null;
        if ($t === null || microtime(true) >= $t['refresh_at']) {
            $t = $this->request($appid);
        }
        return $t;
    }

    /** The access_token to call WeChat with for $appid (cached until refresh_at). */
    public function token(string $appid): string
    {
        return $this->tokenInfo($appid)['access_token'];
    }

    /** Reports a token WeChat refused (40001/42001); returns the token to use now. */
    public function invalidate(string $appid, #[\SensitiveParameter] string $refused): string
    {
        return $this->request($appid, '/invalidate', ['access_token' => $refused])['access_token'];
    }

    /**
     * Runs $call(token), which returns WeChat's decoded JSON (an array). If WeChat answered errcode
     * 40001 or 42001, reports that token and runs $call once more with the token returned.
     * Returns the last answer.
     */
    public function withToken(string $appid, callable $call): array
    {
        $used = $this->token($appid);
        $answer = $call($used);
        if (in_array($answer['errcode'] ?? 0, self::RETIRED_TOKEN_ERRCODES, true)) {
            $answer = $call($this->invalidate($appid, $used));
        }
        return $answer;
    }

    /**
     * Long-polls $appid's token (GET ?after=GEN&wait=30), blocking: for a worker process, as PHP
     * has no threads. Updates the cache and calls $onToken(token response) for each generation
     * above $after (default: the cached token's, else 0: the current token first); $onToken
     * returning false stops the loop. Errors go to $onError and are retried after 1 s, doubling
     * up to 30 s. Stops after $rounds requests when given. Returns the last generation seen.
     */
    public function watch(string $appid, callable $onToken, ?int $rounds = null, ?int $after = null,
                          ?callable $onError = null, int $wait = 30): int
    {
        $generation = $after ?? $this->tokens[$appid]['generation'] ?? 0;
        $delay = 1;
        for ($round = 0; $rounds === null || $round < $rounds; $round++) {
            try {
                $t = $this->request($appid, "?after=$generation&wait=$wait", null, $wait);
                $delay = 1;
                if ($t['generation'] > $generation) {
                    $generation = $t['generation'];
                    if ($onToken($t) === false) {
                        break;
                    }
                }
            } catch (RuntimeException $e) {
                if ($onError !== null) {
                    $onError($e);
                }
                sleep($delay);
                $delay = min($delay * 2, 30);
            }
        }
        return $generation;
    }

    /** How many requests this client has sent to wxtoken. */
    public function requestCount(): int
    {
        return $this->requests;
    }

    private function request(string $appid, string $suffix = '', ?array $body = null, int $wait = 0): array
    {
        $ch = curl_init($this->base . '/v1/tokens/' . rawurlencode($appid) . $suffix);
        $headers = ['Authorization: Bearer ' . $this->apiKey, 'Accept: application/json'];
        if ($body !== null) {
            $headers[] = 'Content-Type: application/json';
            curl_setopt($ch, CURLOPT_POSTFIELDS, json_encode($body));   // makes it a POST
        }
        $retryAfter = null;
        curl_setopt_array($ch, [
            CURLOPT_HTTPHEADER => $headers,
            CURLOPT_RETURNTRANSFER => true,
            CURLOPT_CONNECTTIMEOUT_MS => (int) ($this->timeout * 1000),
            CURLOPT_TIMEOUT_MS => (int) (($this->timeout + $wait) * 1000),
            CURLOPT_HEADERFUNCTION => function ($ch, string $line) use (&$retryAfter): int {
                if (preg_match('/^retry-after:\s*(\d+)/i', $line, $m)) {
                    $retryAfter = (int) $m[1];
                }
                return strlen($line);
            },
        ]);
        $this->requests++;
        $raw = curl_exec($ch);
        if (!is_string($raw)) {
            throw new RuntimeException('wxtoken request failed: ' . curl_error($ch));
        }
        $status = curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
        $json = json_decode($raw, true);
        if ($status !== 200) {
            $error = $json['error'] ?? null;
            $code = is_string($error['code'] ?? null) ? $error['code'] : null;
            throw new WxTokenError($status, $code, $code !== null ? (string) $error['message'] : "HTTP $status", $retryAfter);
        }
        if (!is_array($json) || !isset($json['access_token'], $json['refresh_at'], $json['generation'])) {
            throw new RuntimeException('wxtoken answered 200 without a token');
        }
        return $this->tokens[$appid] = $json;
    }
}
