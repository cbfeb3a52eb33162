package wxtoken;

import java.io.IOException;

/**
 * wxtoken answered with an error: the HTTP status, wxtoken's error code ({@code forbidden},
 * {@code no_valid_token}, …; {@code null} when the answer was not wxtoken's JSON, e.g. a proxy's
 * page), its message, and on 429 the seconds to wait (Retry-After). Connection failures and
 * timeouts are the JDK's own {@link IOException}s ({@code ConnectException}, {@code HttpTimeoutException}).
 */
public final class WxTokenException extends IOException {
    private static final long serialVersionUID = 1L;
    private final int status;
    private final String code;
    private final Long retryAfter;

    public WxTokenException(int status, String code, String message, Long retryAfter) {
        super("wxtoken " + status + (code == null ? "" : " " + code) + ": " + message);
        this.status = status;
        this.code = code;
        this.retryAfter = retryAfter;
    }

    /** The HTTP status, e.g. 403. */
    public int status() {
        return status;
    }

    /** wxtoken's error code, e.g. {@code "forbidden"}, or null. */
    public String code() {
        return code;
    }

    /** Seconds to wait before reporting again (429 {@code too_many_requests}), or null. */
    public Long retryAfter() {
        return retryAfter;
    }
}
