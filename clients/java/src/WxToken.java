package wxtoken;

import java.io.IOException;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicLong;
import java.util.function.Consumer;

/**
 * A client for wxtoken's token API (its internal listener), JDK 17 only.
 *
 * <pre>{@code
 * WxToken wx = new WxToken("http://wxtoken.internal:8081", apiKey);
 * Map<String, Object> answer = wx.withToken("wxAUTHORIZERAPPID", token -> callWeChat(token));
 * try (WxToken.Watcher watcher = wx.watch("wxAUTHORIZERAPPID", t -> ...)) { ... }  // optional
 * }</pre>
 *
 * Tokens are cached per appid until their {@code refresh_at} (never until {@code expires_at}:
 * WeChat retires a replaced token long before that). Thread-safe. Never logs the key or a token.
 */
public final class WxToken {
    /** The seconds each long-poll of a {@link Watcher} waits for a new token. */
    public static final int WATCH_WAIT_SECONDS = 30;

    /** A token response: times are Unix seconds; {@code generation} grows with each new token. */
    public record Token(String appid, String accessToken, long expiresAt, long refreshAt, long generation,
                       String source) {
        @Override
        public String toString() { // never shows the token
            return "Token[appid=" + appid + ", generation=" + generation + ", refreshAt=" + refreshAt + "]";
        }
    }

    /** A WeChat call: given a token, returns WeChat's decoded JSON answer (e.g. with {@link Json#parseObject}). */
    @FunctionalInterface
    public interface WeChatCall {
        Map<String, Object> apply(String token) throws IOException, InterruptedException;
    }

    private final String base;
    private final String apiKey;
    private final Duration timeout;
    private final HttpClient http;
    private final Map<String, Token> tokens = new ConcurrentHashMap<>();
    private final AtomicLong requests = new AtomicLong();

    /** A client with a 15 s timeout per request. */
    public WxToken(String base, String apiKey) {
        this(base, apiKey, Duration.ofSeconds(15));
    }

    /** {@code timeout} bounds each request (a long-poll gets its wait on top). */
    public WxToken(String base, String apiKey, Duration timeout) {
        this.base = base.replaceAll("/+$", "");
        this.apiKey = apiKey;
        this.timeout = timeout;
        this.http = HttpClient.newBuilder().connectTimeout(timeout).build();
    }

    /** The token response for appid, from the cache until its {@code refresh_at}. */
    public Token tokenInfo(String appid) throws IOException, InterruptedException {
        Token t = tokens.get(appid);
        if (t == null || System.currentTimeMillis() / 1000.0 >= t.refreshAt()) {
            t = request(appid, "", null, 0);
        }
        return t;
    }

    /** The access_token to call WeChat with for appid (cached until {@code refresh_at}). */
    public String token(String appid) throws IOException, InterruptedException {
        return tokenInfo(appid).accessToken();
    }

    /** Reports a token WeChat refused (40001/42001); returns the token to use now. */
    public String invalidate(String appid, String refused) throws IOException, InterruptedException {
        return request(appid, "/invalidate", "{\"access_token\":" + Json.quote(refused) + "}", 0).accessToken();
    }

    /**
     * Runs {@code call} with appid's token; if WeChat answered errcode 40001 or 42001, reports that
     * token and runs {@code call} once more with the token returned. Returns the last answer.
     */
    public Map<String, Object> withToken(String appid, WeChatCall call) throws IOException, InterruptedException {
        String used = token(appid);
        Map<String, Object> answer = call.apply(used);
        if (answer.get("errcode") instanceof Number n && (n.longValue() == 40001 || n.longValue() == 42001)) {
            answer = call.apply(invalidate(appid, used));
        }
        return answer;
    }

    /** How many requests this client has sent to wxtoken (watchers' included). */
    public long requestCount() {
        return requests.get();
    }

    /** Starts a {@link Watcher} from the cached token's generation (0 if none: the current token is reported first). */
    public Watcher watch(String appid, Consumer<Token> onToken) {
        Token cached = tokens.get(appid);
        return watch(appid, cached == null ? 0 : cached.generation(), onToken, null);
    }

    /** Starts a {@link Watcher} reporting generations above {@code after}; errors go to {@code onError} (may be null). */
    public Watcher watch(String appid, long after, Consumer<Token> onToken, Consumer<Exception> onError) {
        return new Watcher(appid, after, onToken, onError);
    }

    private Token request(String appid, String suffix, String body, int waitSeconds)
            throws IOException, InterruptedException {
        String url = base + "/v1/tokens/" + URLEncoder.encode(appid, StandardCharsets.UTF_8) + suffix;
        HttpRequest.Builder request = HttpRequest.newBuilder(URI.create(url))
                .timeout(timeout.plusSeconds(waitSeconds))
                .header("Authorization", "Bearer " + apiKey)
                .header("Accept", "application/json");
        if (body != null) {
            request.header("Content-Type", "application/json").POST(HttpRequest.BodyPublishers.ofString(body));
        }
        requests.incrementAndGet();
        HttpResponse<String> r = http.send(request.build(), HttpResponse.BodyHandlers.ofString());
        if (r.statusCode() != 200) {
            throw errorFrom(r);
        }
        Map<String, Object> m = Json.parseObject(r.body());
        Token t = new Token((String) m.get("appid"), (String) m.get("access_token"), number(m, "expires_at"),
                number(m, "refresh_at"), number(m, "generation"), (String) m.get("source"));
        tokens.put(appid, t);
        return t;
    }

    private static long number(Map<String, Object> m, String key) throws IOException {
        if (m.get(key) instanceof Number n) return n.longValue();
        throw new IOException("wxtoken's answer has no number " + key);
    }

    private static WxTokenException errorFrom(HttpResponse<String> r) {
        String code = null;
        String message = "HTTP " + r.statusCode();
        try {
            if (Json.parseObject(r.body()).get("error") instanceof Map<?, ?> e && e.get("code") instanceof String c) {
                code = c;
                message = String.valueOf(e.get("message"));
            }
        } catch (IOException notJson) {
            // not wxtoken's JSON (a proxy's page): keep the status
        }
        Long retryAfter = r.headers().firstValue("Retry-After").filter(v -> v.matches("\\d+")).map(Long::valueOf)
                .orElse(null);
        return new WxTokenException(r.statusCode(), code, message, retryAfter);
    }

    /**
     * Long-polls {@code GET /v1/tokens/{appid}?after=GEN&wait=30} on a daemon thread, updating the
     * cache and calling {@code onToken} with each new generation. Errors are retried after 1 s,
     * doubling up to 30 s. {@link #close()} interrupts the thread, which ends the long-poll in flight.
     */
    public final class Watcher implements AutoCloseable {
        private final Thread thread;
        private volatile boolean closed;
        private volatile long generation;

        private Watcher(String appid, long after, Consumer<Token> onToken, Consumer<Exception> onError) {
            generation = after;
            thread = new Thread(() -> run(appid, onToken, onError), "wxtoken-watch-" + appid);
            thread.setDaemon(true);
            thread.start();
        }

        /** The last generation seen. */
        public long generation() {
            return generation;
        }

        private void run(String appid, Consumer<Token> onToken, Consumer<Exception> onError) {
            long delayMillis = 1000;
            while (!closed) {
                try {
                    Token t = request(appid, "?after=" + generation + "&wait=" + WATCH_WAIT_SECONDS, null,
                            WATCH_WAIT_SECONDS);
                    delayMillis = 1000;
                    if (t.generation() > generation && !closed) {
                        generation = t.generation();
                        onToken.accept(t);
                    }
                } catch (InterruptedException e) {
                    return;
                } catch (Exception e) { // keep watching whatever happens; report it
                    if (closed) return;
                    if (onError != null) onError.accept(e);
                    try {
                        Thread.sleep(delayMillis);
                    } catch (InterruptedException stop) {
                        return;
                    }
                    delayMillis = Math.min(delayMillis * 2, 30_000);
                }
            }
        }

        /** Stops the watcher and waits (up to 5 s) for its thread to end; nothing is reported after. */
        @Override
        public void close() {
            closed = true;
            if (Thread.currentThread() == thread) return; // closed from onToken: the loop ends on return
            thread.interrupt();
            try {
                thread.join(5000);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }
}
