package wxtoken;

import java.io.IOException;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A minimal JSON reader and string quoter. It exists because the JDK has no JSON parser and this
 * library must have no dependencies. It reads objects as {@code Map<String, Object>} (in order),
 * arrays as {@code List<Object>}, integers as {@code Long}, other numbers as {@code Double},
 * strings, booleans and null: enough for wxtoken's answers (flat objects, a nested {@code error}
 * object) and WeChat's small ones, not a general-purpose, streaming or lenient parser.
 */
public final class Json {
    private final String text;
    private int at;

    private Json(String text) {
        this.text = text;
    }

    /** Parses a JSON document whose top level is an object. */
    @SuppressWarnings("unchecked")
    public static Map<String, Object> parseObject(String text) throws IOException {
        Object value = parse(text);
        if (!(value instanceof Map)) throw new IOException("expected a JSON object");
        return (Map<String, Object>) value;
    }

    /** Parses any JSON document. */
    public static Object parse(String text) throws IOException {
        Json p = new Json(text);
        Object value = p.value();
        p.space();
        if (p.at != text.length()) throw p.error("trailing characters");
        return value;
    }

    /** {@code s} as a JSON string literal, quotes included. */
    public static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') b.append('\\').append(c);
            else if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
            else b.append(c);
        }
        return b.append('"').toString();
    }

    private Object value() throws IOException {
        space();
        if (at >= text.length()) throw error("unexpected end");
        char c = text.charAt(at);
        switch (c) {
            case '{': {
                Map<String, Object> object = new LinkedHashMap<>();
                at++;
                if (skip('}')) return object;
                do {
                    space();
                    String key = string();
                    expect(':');
                    object.put(key, value());
                } while (skip(','));
                expect('}');
                return object;
            }
            case '[': {
                List<Object> array = new ArrayList<>();
                at++;
                if (skip(']')) return array;
                do array.add(value()); while (skip(','));
                expect(']');
                return array;
            }
            case '"': return string();
            case 't': return literal("true", Boolean.TRUE);
            case 'f': return literal("false", Boolean.FALSE);
            case 'n': return literal("null", null);
            default: return number();
        }
    }

    private String string() throws IOException {
        if (!skip('"')) throw error("expected a string");
        StringBuilder b = new StringBuilder();
        while (at < text.length()) {
            char c = text.charAt(at++);
            if (c == '"') return b.toString();
            if (c != '\\') {
                b.append(c);
                continue;
            }
            if (at >= text.length()) break;
            char e = text.charAt(at++);
            switch (e) {
                case 'b': b.append('\b'); break;
                case 'f': b.append('\f'); break;
                case 'n': b.append('\n'); break;
                case 'r': b.append('\r'); break;
                case 't': b.append('\t'); break;
                case 'u':
                    if (at + 4 > text.length()) throw error("bad \\u escape");
                    try {
                        b.append((char) Integer.parseInt(text.substring(at, at + 4), 16));
                    } catch (NumberFormatException x) {
                        throw error("bad \\u escape");
                    }
                    at += 4;
                    break;
                default: b.append(e); // \" \\ \/
            }
        }
        throw error("unterminated string");
    }

    private Object number() throws IOException {
        int start = at;
        while (at < text.length() && "+-0123456789.eE".indexOf(text.charAt(at)) >= 0) at++;
        String n = text.substring(start, at);
        try {
            return n.matches("-?\\d+") ? (Object) Long.parseLong(n) : (Object) Double.parseDouble(n);
        } catch (NumberFormatException e) {
            throw error("bad value");
        }
    }

    private Object literal(String word, Object value) throws IOException {
        if (!text.startsWith(word, at)) throw error("bad value");
        at += word.length();
        return value;
    }

    private void space() {
        while (at < text.length() && " \t\r\n".indexOf(text.charAt(at)) >= 0) at++;
    }

    private boolean skip(char c) {
        space();
        if (at < text.length() && text.charAt(at) == c) {
            at++;
            return true;
        }
        return false;
    }

    private void expect(char c) throws IOException {
        if (!skip(c)) throw error("expected '" + c + "'");
    }

    private IOException error(String what) {
        return new IOException("malformed JSON at offset " + at + ": " + what);
    }
}
