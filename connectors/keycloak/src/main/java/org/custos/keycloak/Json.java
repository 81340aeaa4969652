package org.custos.keycloak;

import java.nio.charset.StandardCharsets;
import java.util.Map;
import java.util.TreeMap;

/**
 * A small JSON object writer for the flat shapes this provider emits (strings, numbers, nested
 * objects of strings). Keys are written in insertion order; {@code null} values are skipped.
 */
final class Json {
    private final StringBuilder out = new StringBuilder(256);
    private boolean first = true;

    Json() {
        out.append('{');
    }

    /** Adds a string member unless {@code value} is null. */
    Json put(String key, String value) {
        if (value == null) {
            return this;
        }
        key(key);
        string(out, value);
        return this;
    }

    /** Adds a number member. */
    Json put(String key, long value) {
        key(key);
        out.append(value);
        return this;
    }

    /** Adds a nested object member unless {@code value} is null. */
    Json put(String key, Json value) {
        if (value == null) {
            return this;
        }
        key(key);
        out.append(value.close());
        return this;
    }

    /** Adds an object of string members (sorted by key) unless the map is null or empty. */
    Json put(String key, Map<String, String> value) {
        if (value == null || value.isEmpty()) {
            return this;
        }
        Json nested = new Json();
        new TreeMap<>(value).forEach(nested::put);
        return put(key, nested);
    }

    private void key(String key) {
        if (!first) {
            out.append(',');
        }
        first = false;
        string(out, key);
        out.append(':');
    }

    private String close() {
        return out.toString() + '}';
    }

    /** The finished object as UTF-8 bytes. */
    byte[] toBytes() {
        return close().getBytes(StandardCharsets.UTF_8);
    }

    @Override
    public String toString() {
        return close();
    }

    static void string(StringBuilder out, String s) {
        out.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                case '\n' -> out.append("\\n");
                case '\r' -> out.append("\\r");
                case '\t' -> out.append("\\t");
                default -> {
                    if (c < 0x20 || c == '\u2028' || c == '\u2029') {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
                }
            }
        }
        out.append('"');
    }
}
