import java.io.IOException;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import wxtoken.Json;
import wxtoken.WxToken;
import wxtoken.WxTokenException;

/**
 * Runs the Java client against a live wxtoken and WeChat simulator (the scenario in clients/README.md).
 *
 * <p>Environment: WXTOKEN_URL, WXTOKEN_API_KEY (granted WXTOKEN_APPID only), WXTOKEN_APPID,
 * WXTOKEN_FORBIDDEN_APPID, WXTOKEN_SIM_URL. Exits 0 when every step passes, 1 otherwise.
 */
public final class WxTokenTest {
    static void fail(String message) {
        System.err.println("FAIL: " + message);
        System.exit(1);
    }

    static void check(boolean condition, String message) {
        if (!condition) fail(message);
    }

    static String env(String name) {
        String value = System.getenv(name);
        if (value == null || value.isEmpty()) fail(name + " is not set (the environment is described in clients/README.md)");
        return value;
    }

    static double now() {
        return System.currentTimeMillis() / 1000.0;
    }

    public static void main(String[] args) {
        try {
            run();
        } catch (Exception e) {
            e.printStackTrace();
            fail("unexpected " + e);
        }
        System.out.println("OK: java client");
        System.exit(0); // the watcher's daemon thread may still be ending its long-poll
    }

    static void stepCache(String base, String key, String appid) throws Exception {
        for (int attempt = 0; attempt < 3; attempt++) {
            WxToken counted = new WxToken(base, key);
            WxToken.Token first = counted.tokenInfo(appid);
            if (first.refreshAt() - now() < 2) { // due for refresh: a second request would be right
                System.out.println("  token due for refresh within 2 s; waiting for the next one");
                Thread.sleep((long) (Math.max(0, first.refreshAt() - now()) * 1000) + 1500);
                continue;
            }
            String second = counted.token(appid);
            check(second.equals(first.accessToken()), "token() returned a different token from the cache");
            check(counted.requestCount() == 1,
                    "two token() calls sent " + counted.requestCount() + " requests, expected 1");
            return;
        }
        fail("the token kept being due for refresh; cannot check the cache");
    }

    static void run() throws Exception {
        String base = env("WXTOKEN_URL"), key = env("WXTOKEN_API_KEY"), appid = env("WXTOKEN_APPID");
        String forbiddenAppid = env("WXTOKEN_FORBIDDEN_APPID"), wechat = env("WXTOKEN_SIM_URL").replaceAll("/+$", "");

        Map<String, Object> parsed = Json.parseObject(
                "{\"error\": {\"code\": \"forbidden\", \"message\": \"a \\\"q\\\" \\u00e9\\n\"}, \"n\": [1, -2.5e3, true, null]}");
        check(parsed.get("error") instanceof Map<?, ?> e && "a \"q\" \u00e9\n".equals(e.get("message")),
                "Json read " + parsed);
        check(List.of(1L, -2500.0, true).equals(((List<?>) parsed.get("n")).subList(0, 3)), "Json read " + parsed);
        check(Json.quote("a\"\\\n").equals("\"a\\\"\\\\\\u000a\""), "Json.quote wrote " + Json.quote("a\"\\\n"));
        System.out.println("0. Json reads wxtoken's error objects and WeChat's arrays");

        stepCache(base, key, appid);
        System.out.println("1. token() twice: same token, one request to wxtoken");

        // readme:begin
        WxToken wx = new WxToken(base, key); // wxtoken's internal URL and this service's API key
        HttpClient http = HttpClient.newHttpClient();
        WxToken.WeChatCall getcallbackip = token -> Json.parseObject(http.send( // any WeChat call
                HttpRequest.newBuilder(URI.create(wechat + "/cgi-bin/getcallbackip?access_token="
                        + URLEncoder.encode(token, StandardCharsets.UTF_8))).build(),
                HttpResponse.BodyHandlers.ofString()).body());
        Map<String, Object> answer = wx.withToken(appid, getcallbackip); // on 40001/42001: reports, retries once
        System.out.println("ip_list: " + answer.get("ip_list"));

        BlockingQueue<WxToken.Token> newTokens = new LinkedBlockingQueue<>();
        WxToken.Watcher watcher = wx.watch(appid, newTokens::add); // a daemon thread; watcher.close() stops it
        // readme:end
        check(answer.get("ip_list") instanceof List, "withToken answered " + answer);
        System.out.println("2. withToken(getcallbackip): ip_list");

        // The retired token must be the cached one: if the scheduled refresh is near, let it pass first.
        WxToken.Token info = null;
        for (int attempt = 0; ; attempt++) {
            check(attempt < 4, "the token stayed due for refresh");
            info = wx.tokenInfo(appid);
            double margin = info.refreshAt() - now();
            if (margin >= 8) break;
            System.out.printf("  scheduled refresh in %.0f s; waiting for it first%n", margin);
            Thread.sleep((long) (Math.max(0, margin) * 1000) + 2000);
        }
        long before = info.generation();

        HttpResponse<String> retired = http.send(HttpRequest.newBuilder(URI.create(wechat + "/_sim/accounts/"
                + URLEncoder.encode(appid, StandardCharsets.UTF_8) + "/retire_tokens"))
                .POST(HttpRequest.BodyPublishers.noBody()).build(), HttpResponse.BodyHandlers.ofString());
        check(retired.statusCode() == 200, "retire_tokens answered " + retired.statusCode());
        List<String> used = new ArrayList<>();
        Map<String, Object> retried = wx.withToken(appid, token -> {
            used.add(token);
            return getcallbackip.apply(token);
        });
        check(used.size() == 2, "the WeChat call ran " + used.size() + " times, expected 2 (40001, then the new token)");
        check(!used.get(0).equals(used.get(1)), "invalidate returned the refused token: this appid was force-refreshed"
                + " less than refresh.min_force_interval (30 s) ago (an earlier run?); wait or use another appid");
        check(used.get(0).equals(info.accessToken()), "the first call did not use the cached token");
        check(retried.get("ip_list") instanceof List, "withToken after retire_tokens answered " + retried);
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(15);
        WxToken.Token seen;
        do {
            seen = newTokens.poll(Math.max(0, deadline - System.nanoTime()), TimeUnit.NANOSECONDS);
            check(seen != null, "the watcher reported no generation above " + before + " within 15 s");
        } while (seen.generation() <= before);
        long closing = System.nanoTime();
        watcher.close();
        double closeSeconds = (System.nanoTime() - closing) / 1e9;
        check(closeSeconds < 2, "watcher.close() took " + closeSeconds + " s");
        System.out.printf("3. retire_tokens: 40001, invalidate, retry with a new token; watcher saw generation %d > %d"
                + " (closed in %.2f s)%n", seen.generation(), before, closeSeconds);

        try {
            wx.token(forbiddenAppid);
            fail("token() of an appid the key is not granted succeeded");
        } catch (WxTokenException e) {
            check(e.status() == 403 && "forbidden".equals(e.code()), "expected 403 forbidden, got " + e.getMessage());
            System.out.println("4. an appid not granted: WxTokenException status=" + e.status() + " code=" + e.code());
        }

        long started = System.nanoTime();
        try {
            new WxToken("http://127.0.0.1:1", key, Duration.ofSeconds(5)).token(appid);
            fail("token() from a wxtoken that is not listening succeeded");
        } catch (IOException e) {
            double elapsed = (System.nanoTime() - started) / 1e9;
            check(elapsed < 10, "the unreachable wxtoken took " + elapsed + " s to fail");
            System.out.printf("5. wxtoken not listening: %s after %.1f s%n", e.getClass().getSimpleName(), elapsed);
        }
    }
}
